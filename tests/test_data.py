"""DataLoader, onehotbatch, onecold."""

import numpy as np
import pytest

import fluxrs as fx


@pytest.fixture(scope="module")
def mnist_like():
    rng = np.random.default_rng(0)
    X = rng.random((60_000, 28, 28), dtype=np.float32)
    Y = rng.integers(0, 10, 60_000)
    return X, Y


def test_length_and_first_batch(mnist_like):
    X, Y = mnist_like
    data = fx.DataLoader((X, Y), batchsize=32)
    assert len(data) == 1875 == 60_000 // 32
    x1, y1 = next(iter(data))
    assert isinstance(x1, fx.Tensor) and x1.shape == (32, 28, 28) and x1.dtype == np.float32
    assert isinstance(y1, np.ndarray) and y1.shape == (32,) and y1.dtype.kind == "i"
    np.testing.assert_array_equal(x1.numpy(), X[:32])
    np.testing.assert_array_equal(y1, Y[:32])
    assert len(fx.DataLoader((X, Y), batchsize=128)) == 469


def test_partial_and_batch_sizes():
    X = np.arange(10.0)
    sizes = [b.shape[0] for b in fx.DataLoader(X, batchsize=4)]
    assert sizes == [4, 4, 2]
    sizes = [b.shape[0] for b in fx.DataLoader(X, batchsize=4, partial=False)]
    assert sizes == [4, 4]
    assert len(fx.DataLoader(X, batchsize=4, partial=False)) == 2
    assert len(fx.DataLoader(X, batchsize=20)) == 1


def test_float64_becomes_float32_once_labels_stay_ints():
    X = np.random.default_rng(0).random((10, 3))  # float64
    Y = np.arange(10)
    loader = fx.DataLoader((X, Y), batchsize=5)
    assert loader.data[0].dtype == np.float32  # converted once, up front
    x, y = next(iter(loader))
    assert x.dtype == np.float32 and y.dtype == Y.dtype


def test_shuffle_is_a_permutation_and_changes_per_epoch():
    X = np.arange(100.0)
    Y = np.arange(100)
    loader = fx.DataLoader((X, Y), batchsize=10, shuffle=True, rng=np.random.default_rng(3))
    e1 = np.concatenate([y for _, y in loader])
    e2 = np.concatenate([y for _, y in loader])
    assert sorted(e1.tolist()) == list(range(100))
    assert not np.array_equal(e1, np.arange(100)) and not np.array_equal(e1, e2)
    for x, y in loader:  # x and y stay paired
        np.testing.assert_array_equal(x.numpy(), y.astype(np.float32))
    # the thread's generator when no rng is given: fx.seed_ makes it reproducible
    fx.seed_(7)
    a = np.concatenate([y for _, y in fx.DataLoader((X, Y), batchsize=10, shuffle=True)])
    fx.seed_(7)
    b = np.concatenate([y for _, y in fx.DataLoader((X, Y), batchsize=10, shuffle=True)])
    np.testing.assert_array_equal(a, b)


def test_dict_namedtuple_tensor_and_list_data():
    from collections import namedtuple
    d = fx.DataLoader({"x": np.ones((6, 2), np.float32), "y": np.arange(6)}, batchsize=4)
    b = next(iter(d))
    assert set(b) == {"x", "y"} and b["x"].shape == (4, 2)
    P = namedtuple("P", "x y")
    b = next(iter(fx.DataLoader(P(np.zeros((6, 2)), np.arange(6)), batchsize=3)))
    assert isinstance(b, P) and b.x.shape == (3, 2)
    t = fx.rand(9, 2)
    batches = list(fx.DataLoader(t, batchsize=4, shuffle=True))
    assert [b.shape for b in batches] == [(4, 2), (4, 2), (1, 2)]
    obs = [(np.full(3, i, np.float32), i) for i in range(5)]
    b = next(iter(fx.DataLoader(obs, batchsize=2)))
    assert b == obs[:2]
    x, y = next(iter(fx.DataLoader(obs, batchsize=2, collate=True)))
    assert x.shape == (2, 3) and y.tolist() == [0, 1]
    sums = [float(x.sum()) for x, _ in fx.DataLoader(obs, batchsize=2, collate=lambda b: _stack(b))]
    assert sums == [3.0, 15.0, 12.0]


def _stack(b):
    return fx.tensor(np.stack([x for x, _ in b])), [y for _, y in b]


def test_mismatched_lengths_are_a_clear_error():
    with pytest.raises(ValueError, match=r"same number of observations along axis 0.*data\[0\] has 10.*data\[1\] has 9"):
        fx.DataLoader((np.zeros((10, 3)), np.zeros(9)))
    with pytest.raises(ValueError, match="batchsize"):
        fx.DataLoader(np.zeros(3), batchsize=0)
    with pytest.raises(TypeError, match="data must be"):
        fx.DataLoader(object())


def test_onehotbatch_batch_first():
    y = fx.onehotbatch([1, 0, 3], range(4))
    assert y.shape == (3, 4) and y.dtype == np.float32
    assert y.tolist() == [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]]
    assert fx.onehotbatch(np.array([2, 2]), range(3)).tolist() == [[0, 0, 1], [0, 0, 1]]
    assert fx.onehot("b", "abc").tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="label 7 .*not one of the classes"):
        fx.onehotbatch([7], range(4))
    assert fx.onehotbatch([7], range(4), default=0).tolist() == [[1, 0, 0, 0]]


def test_onecold_inverts_onehotbatch():
    labels = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    assert fx.onecold(fx.onehotbatch(labels, range(10))).tolist() == labels.tolist()
    assert fx.onecold(fx.onehotbatch(["a", "c"], "abc"), "abc").tolist() == ["a", "c"]
    assert fx.onecold(np.array([0.1, 0.7, 0.2])) == 1
    assert fx.onecold(fx.tensor([0.1, 0.7, 0.2]), [10, 20, 30]) == 20
    with pytest.raises(ValueError, match="2 classes given for 3"):
        fx.onecold(np.ones((2, 3)), [0, 1])


def test_dataloader_pytorch_keywords_give_fluxs_spelling():
    X = np.arange(10.0)
    with pytest.raises(TypeError, match=r"DataLoader: unexpected keyword batch_size=4.*write batchsize=4"):
        fx.DataLoader(X, batch_size=4, shuffle=True)
    with pytest.raises(TypeError, match=r"drop_last=True.*write partial=False"):
        fx.DataLoader(X, batchsize=4, drop_last=True)
    with pytest.raises(TypeError, match=r"collate_fn=.*write collate="):
        fx.DataLoader(X, collate_fn=list)
    # the spellings the messages give do what PyTorch's did
    assert [len(b) for b in fx.DataLoader(X, batchsize=4, partial=False)] == [4, 4]


def test_collating_observations_of_different_shapes_is_refused_when_the_loader_is_made():
    with pytest.raises(ValueError, match=r"observation 1 has shape \(1,\), observation 0 has \(2,\)"):
        fx.DataLoader([[1.0, 2.0], [3.0]], batchsize=2, collate=True)
    with pytest.raises(ValueError, match="observation 0 is a ragged nested list"):
        fx.DataLoader([[[1.0], [2.0, 3.0]]], collate=True)
    # equal shapes collate as before
    (b,) = list(fx.DataLoader([(np.ones(2), 1), (np.zeros(2), 0)], batchsize=2, collate=True))
    assert tuple(b[0].shape) == (2, 2)

"""OneHotArrays.jl's test/onehot.jl (Flux's onehot tests), translated to fluxrs.

Translation: fluxrs's one-hot arrays are dense float32 tensors with the classes on the
last axis (batch-first), so Flux's ``(classes, N)`` Bool matrices are compared transposed;
class indices from `onecold` are 0-based; Julia's `:symbols` and `'chars'` are strings; a
Julia string iterates its characters, a Python str is one label, so ``"abc"`` is written
``list("abc")``; Flux's ``@test_throws Exception`` / ``DimensionMismatch`` /
``ArgumentError`` are ValueError here.
"""

import numpy as np
import pytest

import fluxrs as fx
from fluxrs import onecold, onehot, onehotbatch


def hot(*rows):
    """Flux's Bool one-hot matrix written as rows (class, observation), for comparing
    with fluxrs's (observation, class) output."""
    return np.array(rows, dtype=np.float32).T


# OneHotArrays.jl test/onehot.jl, testset "onehot constructors"
def test_onehot_constructors():
    assert onehot(20, range(10, 31, 10)).tolist() == [False, True, False]
    assert onehot(20, (10, 20, 30)).tolist() == [False, True, False]
    assert onehot(40, (10, 20, 30), 20).tolist() == [False, True, False]

    with pytest.raises(ValueError):
        onehot("d", "abc")
    with pytest.raises(ValueError):
        onehot("d", ("a", "b", "c"))
    with pytest.raises(ValueError):
        onehot("d", "abc", "e")
    with pytest.raises(ValueError):
        onehot("d", ("a", "b", "c"), "e")

    np.testing.assert_array_equal(onehotbatch([20, 10], range(10, 31, 10)).numpy(), hot([0, 1], [1, 0], [0, 0]))
    np.testing.assert_array_equal(onehotbatch([20, 10], (10, 20, 30)).numpy(), hot([0, 1], [1, 0], [0, 0]))
    np.testing.assert_array_equal(onehotbatch([40, 10], (10, 20, 30), 20).numpy(), hot([0, 1], [1, 0], [0, 0]))

    np.testing.assert_array_equal(onehotbatch(list("abc"), "abc").numpy(), hot([1, 0, 0], [0, 1, 0], [0, 0, 1]))
    np.testing.assert_array_equal(onehotbatch(list("zbc"), ("a", "b", "c"), "a").numpy(),
                                  hot([1, 0, 0], [0, 1, 0], [0, 0, 1]))

    np.testing.assert_array_equal(onehotbatch([10, 20], [30, 40, 50], 30).numpy(), hot([1, 1], [0, 0], [0, 0]))

    with pytest.raises(ValueError):
        onehotbatch(["a", "d"], ["a", "b", "c"])
    with pytest.raises(ValueError):
        onehotbatch(["a", "d"], ("a", "b", "c"))
    with pytest.raises(ValueError):
        onehotbatch(["a", "d"], ["a", "b", "c"], "e")
    with pytest.raises(ValueError):
        onehotbatch(["a", "d"], ("a", "b", "c"), "e")

    floats = (0.0, -0.0, float("nan"), -float("nan"), float("inf"), -float("inf"))
    assert onecold(onehot(0.0, floats)) == 1 - 1
    assert onecold(onehot(-0.0, floats)) == 2 - 1  # as it uses isequal
    assert onecold(onehot(float("inf"), floats)) == 5 - 1

    # UnitRange fast path
    np.testing.assert_array_equal(onehotbatch([1, 3, 0, 4], range(0, 5)).numpy(),
                                  onehotbatch([1, 3, 0, 4], tuple(range(0, 5))).numpy())
    np.testing.assert_array_equal(onehotbatch([[2, 3, 7, 4]], range(2, 8)).numpy(),
                                  onehotbatch([[2, 3, 7, 4]], tuple(range(2, 8))).numpy())
    with pytest.raises(ValueError):
        onehotbatch([2, -1], range(0, 5))
    with pytest.raises(ValueError):
        onehotbatch([2, 5], range(0, 5))
    # the inferrability tests (@inferred) are Julia type machinery: left out


# OneHotArrays.jl test/onehot.jl, testset "onecold"
def test_onecold():
    a = [1, 2, 5, 3.0]
    A = np.array([[1, 20, 5], [2, 7, 6], [3, 9, 10], [2, 1, 14]]).T  # Flux's columns are observations
    labels = ["A", "B", "C", "D"]

    assert onecold(a) == 3 - 1
    assert onecold(A).tolist() == [3 - 1, 1 - 1, 4 - 1]
    assert onecold(a, labels) == "C"
    assert onecold(a, tuple(labels)) == "C"
    assert onecold(A, labels).tolist() == ["C", "A", "D"]
    assert onecold(A, tuple(labels)).tolist() == ["C", "A", "D"]

    data = ["b", "a", "c"]
    labels = ["a", "b", "c"]
    hot_ = onehotbatch(data, labels)
    cold = onecold(hot_, labels)

    assert cold.tolist() == data

    with pytest.raises(ValueError):
        onecold([0.3, 0.2], ("a", "b", "c"))
    with pytest.raises(ValueError):
        onecold([0.3, 0.2, 0.5, 0.99], ("a", "b", "c"))
    with pytest.raises(ValueError, match="NaN"):
        onecold([0.3, float("nan"), 0.5], ("a", "b", "c"))


# OneHotArrays.jl test/onehot.jl, testset "onehotbatch indexing"
@pytest.mark.skip(reason="fluxrs's one-hot arrays are dense tensors; there are no OneHotVector / OneHotMatrix "
                         "types for indexing to preserve")
def test_onehotbatch_indexing():
    pass


# OneHotArrays.jl test/onehot.jl, testset "onehotbatch dims"
def test_onehotbatch_dims():
    # fluxrs has no `dims` keyword: the class axis is always the last (batch-first), which is
    # what Flux's dims=Val(2) gives for a vector of labels
    np.testing.assert_array_equal(onehotbatch([20, 10], range(10, 31, 10)).numpy(), [[0, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(onehotbatch([10, 20], [30, 40, 50], 30).numpy(), [[1, 0, 0], [1, 0, 0]])
    # higher dimensions: Flux's reshape(1:12, 3, 4) (column-major), its one-hot axis last here
    labels = np.arange(1, 13).reshape(4, 3).T
    y = onehotbatch(labels, range(1, 13))
    assert y.shape == (3, 4, 12)  # Flux with dims=Val(2): (3, 12, 4)
    np.testing.assert_array_equal(y.numpy().sum(axis=(0, 1)), np.ones(12))  # one label per class
    np.testing.assert_array_equal(onecold(y, range(1, 13)), labels)  # and onecold inverts it
    # works with strings
    np.testing.assert_array_equal(onehotbatch(list("ba"), "abc").numpy(), [[0, 1, 0], [1, 0, 0]])


def test_onehotbatch_nd_errors_name_the_argument_and_shape():
    # not upstream: fluxrs's N-D labels give clear errors
    with pytest.raises(ValueError, match=r"label 9 \(at index \(1, 0\)\) is not one of the classes"):
        onehotbatch([[1, 2], [9, 0]], range(3))
    with pytest.raises(ValueError, match=r"rectangular array.*lengths \[2, 1\]"):
        onehotbatch([[1, 2], [0]], range(3))
    with pytest.raises(ValueError, match=r"2 classes given for 3 scores per observation \(y has shape \(2, 2, 3\)\)"):
        onecold(np.zeros((2, 2, 3)), [0, 1])
    assert fx.onecold(np.zeros((0, 3, 4))).shape == (0, 3)

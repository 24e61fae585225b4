"""DLPack both ways, against numpy (torch and JAX where installed): exports share memory,
imports copy once and keep float32/float64, views keep their strides and offsets."""

import numpy as np
import pytest

import fluxrs as fx

NUMPY = tuple(int(p) for p in np.__version__.split(".")[:2])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_export_shares_memory_both_ways(dtype):
    t = fx.tensor(np.arange(6.0).reshape(2, 3), dtype=dtype)
    a = np.from_dlpack(t)
    assert a.dtype == np.dtype(dtype) and a.tolist() == t.tolist()
    # numpy before 2.1 (the last for Python 3.9) reads only unversioned DLPack, which cannot say
    # "writable", and marks what it reads read-only; later numpy asks for the versioned protocol
    assert a.flags.writeable == (NUMPY >= (2, 1))
    if a.flags.writeable:
        a[0, 0] = 42.0  # the standard: an export shares memory, so a write shows on the other side
        assert t.tolist()[0][0] == 42.0
    t.assign_(np.zeros((2, 3), dtype=dtype))
    assert a.sum() == 0.0


def test_export_of_views_keeps_strides_and_offsets():
    base = fx.tensor(np.arange(20, dtype=np.float32).reshape(4, 5))
    ref = np.arange(20, dtype=np.float32).reshape(4, 5)
    for view, expect in [(base[1:3, 2:], ref[1:3, 2:]), (base.T, ref.T), (base[:, 1], ref[:, 1]),
                         (base[::2], ref[::2])]:
        np.testing.assert_array_equal(np.from_dlpack(view), expect)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_import_copies_once_and_keeps_the_dtype(dtype):
    a = np.arange(24, dtype=dtype).reshape(2, 3, 4)
    for src in (a, a[:, 1:, ::2], a.transpose(2, 0, 1), a[1]):  # strides, offsets
        t = fx.from_dlpack(src)
        assert t.dtype == dtype and t.tolist() == src.tolist()
    t = fx.from_dlpack(a)
    a[0, 0, 0] = -1.0
    assert t.tolist()[0][0][0] == 0.0  # a copy: fluxrs owns its memory
    ro = np.arange(3, dtype=dtype)
    ro.flags.writeable = False  # read-only memory is readable
    assert fx.from_dlpack(ro).tolist() == [0.0, 1.0, 2.0]


def test_import_round_trip_and_gradient():
    t = fx.from_dlpack(np.from_dlpack(fx.tensor([1.0, 2.0])))
    assert fx.gradient(lambda x: (x * x).sum(), t)[0].tolist() == [2.0, 4.0]
    assert fx.from_dlpack(fx.tensor([3.0])).tolist() == [3.0]


def test_import_errors_name_the_fix():
    with pytest.raises(TypeError, match="float32 or float64.*astype"):
        fx.from_dlpack(np.arange(3))
    with pytest.raises(BufferError, match="copy=False"):
        fx.from_dlpack(np.ones(2, np.float32), copy=False)
    with pytest.raises(TypeError, match="__dlpack__"):
        fx.from_dlpack([1.0, 2.0])
    with pytest.raises(ValueError, match="device"):
        fx.from_dlpack(np.ones(2, np.float32), device="cuda")


def test_torch_both_ways():
    torch = pytest.importorskip("torch")
    t = fx.tensor([[1.0, 2.0], [3.0, 4.0]])
    x = torch.from_dlpack(t)
    x[0, 0] = 9.0
    assert t.tolist()[0][0] == 9.0  # shared
    y = fx.from_dlpack(torch.arange(6, dtype=torch.float64).reshape(2, 3)[:, 1:])
    assert y.dtype == np.float64 and y.tolist() == [[1.0, 2.0], [4.0, 5.0]]


def test_jax_both_ways():
    jnp = pytest.importorskip("jax.numpy")
    t = fx.tensor([1.0, 2.0, 3.0])
    assert jnp.from_dlpack(t).tolist() == [1.0, 2.0, 3.0]
    assert fx.from_dlpack(jnp.arange(3.0, dtype=jnp.float32)).tolist() == [0.0, 1.0, 2.0]

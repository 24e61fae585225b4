"""DLPack both ways, against numpy (torch and JAX where installed): exports and imports share
memory (writes show on both sides), views keep their strides and offsets, memory that cannot
be shared (read-only, misaligned, negative strides) is copied once, and the imported tensor
keeps its producer's array alive until it is gone."""

import ctypes
import gc
import threading
import weakref

import numpy as np
import pytest

import fluxrs as fx

DTYPES = [np.float32, np.float64]
NUMPY = tuple(int(p) for p in np.__version__.split(".")[:2])
# numpy before 2.1 (the last for Python 3.9) reads only unversioned DLPack, which cannot say
# "writable", and marks what it reads read-only; later numpy asks for the versioned protocol
NUMPY_READS_WRITABLE = NUMPY >= (2, 1)


def shares(t, a) -> bool:
    """Whether tensor `t` reads the memory of numpy array `a`."""
    return np.shares_memory(t.numpy(), a)


# ---------------------------------------------------------------- export: fluxrs -> numpy

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_export_shares_memory_both_ways(dtype):
    t = fx.tensor(np.arange(6.0).reshape(2, 3), dtype=dtype)
    a = np.from_dlpack(t)
    assert a.dtype == np.dtype(dtype) and a.tolist() == t.tolist()
    assert a.flags.writeable == NUMPY_READS_WRITABLE
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


# ---------------------------------------------------------------- import: numpy -> fluxrs

@pytest.mark.parametrize("dtype", DTYPES)
def test_import_shares_memory_both_ways(dtype):
    a = np.arange(6, dtype=dtype).reshape(2, 3)
    t = fx.from_dlpack(a)
    assert t.dtype == dtype and t.shape == (2, 3) and t.tolist() == a.tolist()
    assert shares(t, a)
    a[0, 0] = -1.0  # numpy writes, fluxrs reads
    assert t.tolist()[0][0] == -1.0
    t.assign_(np.full((2, 3), 5.0, dtype))  # fluxrs writes, numpy reads
    assert a.tolist() == [[5.0] * 3] * 2
    assert fx.from_dlpack(a, copy=False).tolist() == a.tolist()


@pytest.mark.parametrize("dtype", DTYPES)
def test_import_of_views_shares_them_with_their_strides_and_offsets(dtype):
    a = np.arange(24, dtype=dtype).reshape(2, 3, 4)
    for src in (a[:, 1:, ::2], a.transpose(2, 0, 1), a[1], a[1, 2, 3, ...], a[:, :, 1:2], np.asfortranarray(a)):
        t = fx.from_dlpack(src)
        assert t.dtype == dtype and t.tolist() == src.tolist()
        assert shares(t, src)
        if src.ndim:
            assert t.numpy().strides == src.strides
    view = a[:, 1:, ::2]
    t = fx.from_dlpack(view)
    t.assign_(-t)  # writes land on the view's elements of a, and only there
    expect = np.arange(24, dtype=dtype).reshape(2, 3, 4)
    expect[:, 1:, ::2] *= -1
    np.testing.assert_array_equal(a, expect)
    # kernels read strided foreign views as numpy does
    p, q = a[0, 1:, ::2], a[1, :, 1:3]
    np.testing.assert_allclose((fx.from_dlpack(p) @ fx.from_dlpack(q).T).numpy(), p @ q.T, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_memory_that_cannot_be_shared_is_copied_once(dtype):
    a = np.arange(6, dtype=dtype)
    ro = a.copy()
    ro.flags.writeable = False
    misaligned = np.zeros(6 * a.itemsize + 1, np.uint8)[1:].view(dtype)  # one byte past an aligned start
    misaligned[:] = a
    assert misaligned.ctypes.data % a.itemsize != 0
    for src, why in [(ro, "read-only"), (a[::-1], "negative strides"), (misaligned, "not aligned")]:
        t = fx.from_dlpack(src)
        assert t.tolist() == src.tolist() and not shares(t, src), why
        with pytest.raises(BufferError, match=f"copy=False.*{why}"):
            fx.from_dlpack(src, copy=False)
    t = fx.from_dlpack(ro)
    t.assign_(np.zeros(6, dtype))  # the copy is writable; the read-only array is untouched
    assert ro.tolist() == list(range(6))
    t = fx.from_dlpack(a, copy=True)
    assert t.tolist() == a.tolist() and not shares(t, a)


def test_the_tensor_keeps_its_producer_alive_and_lets_it_go():
    a = np.arange(1000, dtype=np.float32)
    alive = weakref.ref(a)
    t = fx.from_dlpack(a[10:])
    v = t[5:8]  # a view of the tensor shares the producer's memory too
    del a
    gc.collect()
    assert alive() is not None  # held through the consumed capsule
    assert t[:3].tolist() == [10.0, 11.0, 12.0] and v.tolist() == [15.0, 16.0, 17.0]
    del t
    gc.collect()
    assert alive() is not None and v.tolist() == [15.0, 16.0, 17.0]
    del v
    gc.collect()
    assert alive() is None  # the deleter ran with the last tensor


def test_the_last_tensor_may_go_on_another_thread():
    a = np.ones((128, 128), np.float32)
    alive = weakref.ref(a)
    box = [fx.from_dlpack(a)]
    del a
    sums = []

    def work():
        t = box.pop()  # this thread holds the only reference, and drops it when done
        for _ in range(10):
            sums.append(float((t @ t).sum()))

    th = threading.Thread(target=work)
    th.start()
    th.join(timeout=60)
    assert not th.is_alive() and sums == [128.0 ** 3] * 10
    gc.collect()
    assert alive() is None


def test_gradients_flow_through_imported_memory_and_leave_it_alone():
    a = np.array([[1.0, -2.0], [3.0, 0.5]])
    x = fx.from_dlpack(a)
    w = fx.from_dlpack(np.array([[2.0, 0.0], [1.0, -1.0]]))
    g, gw = fx.gradient(lambda x, w: ((x @ w) ** 2).sum() + x[0].sum(), x, w)
    y = a @ w.numpy()
    np.testing.assert_allclose(g.numpy(), 2 * y @ w.numpy().T + [[1.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(gw.numpy(), 2 * a.T @ y)
    assert a.tolist() == [[1.0, -2.0], [3.0, 0.5]] and not shares(g, a)


@pytest.mark.parametrize("rule", [fx.Descent(0.5), fx.Adam(0.1)], ids=["Descent", "Adam"])
def test_an_optimiser_step_updates_the_producers_array(rule):
    a = np.array([1.0, 2.0, 3.0], np.float32)
    w = fx.from_dlpack(a)
    ref = fx.tensor([1.0, 2.0, 3.0])
    for p in (w, ref):
        g = fx.gradient(lambda p: (p * p).sum(), p)[0]
        fx.update_(fx.setup(rule, p), p, g)
    assert a.tolist() == ref.tolist() and a.tolist() != [1.0, 2.0, 3.0]


@pytest.mark.skipif(not NUMPY_READS_WRITABLE, reason="numpy before 2.1 imports DLPack read-only")
def test_round_trips_share_one_memory():
    t0 = fx.tensor([1.0, 2.0, 3.0])
    t1 = fx.from_dlpack(np.from_dlpack(t0))  # fluxrs -> numpy -> fluxrs
    t2 = fx.from_dlpack(t0)  # fluxrs -> fluxrs
    t1.assign_(np.array([7.0, 8.0, 9.0], np.float32))
    assert t0.tolist() == t2.tolist() == [7.0, 8.0, 9.0]
    assert fx.gradient(lambda x: (x * x).sum(), t1)[0].tolist() == [14.0, 16.0, 18.0]
    a = np.arange(3.0)
    back = np.from_dlpack(fx.from_dlpack(a))  # numpy -> fluxrs -> numpy
    back[0] = 5.0
    assert a[0] == 5.0


class Producer:
    """An exporter that speaks only the DLPack of before 1.0: no max_version, an unversioned
    capsule, optionally with the device field overwritten."""

    def __init__(self, a, device_type=None):
        self.a, self.device_type = a, device_type

    def __dlpack__(self, stream=None):
        capsule = self.a.__dlpack__()
        if self.device_type is not None:
            get = ctypes.pythonapi.PyCapsule_GetPointer
            get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
            # DLTensor: void* data, then DLDevice {int32 device_type, int32 device_id}
            ctypes.c_int32.from_address(get(capsule, b"dltensor") + 8).value = self.device_type
        return capsule


def test_an_unversioned_capsule_is_read_and_consumed():
    a = np.arange(4.0)
    t = fx.from_dlpack(Producer(a))
    a[1] = 10.0
    assert t.tolist() == [0.0, 10.0, 2.0, 3.0]
    capsule = a.__dlpack__()
    assert fx._core.from_dlpack_capsule(capsule).tolist() == a.tolist()
    assert "used_dltensor" in repr(capsule)
    with pytest.raises(BufferError, match="consumed already"):
        fx._core.from_dlpack_capsule(capsule)


def test_import_errors_name_the_fix():
    with pytest.raises(TypeError, match="float32 or float64, got int64.*astype"):
        fx.from_dlpack(np.arange(3))
    with pytest.raises(TypeError, match="got bool"):
        fx.from_dlpack(np.ones(3, bool))
    with pytest.raises(TypeError, match="__dlpack__"):
        fx.from_dlpack([1.0, 2.0])
    with pytest.raises(ValueError, match="device"):
        fx.from_dlpack(np.ones(2, np.float32), device="cuda")
    with pytest.raises(BufferError, match=r"device \(2, 0\).*x\.cpu\(\)"):
        fx.from_dlpack(Producer(np.ones(2, np.float32), device_type=2))  # kDLCUDA
    with pytest.raises(TypeError, match="not a DLPack capsule"):
        fx._core.from_dlpack_capsule(np.ones(2))


def test_torch_both_ways():
    torch = pytest.importorskip("torch")
    t = fx.tensor([[1.0, 2.0], [3.0, 4.0]])
    x = torch.from_dlpack(t)
    x[0, 0] = 9.0
    assert t.tolist()[0][0] == 9.0  # shared
    src = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    y = fx.from_dlpack(src[:, 1:])
    assert y.dtype == np.float64 and y.tolist() == [[1.0, 2.0], [4.0, 5.0]]
    src[0, 1] = -1.0
    assert y.tolist()[0][0] == -1.0  # shared


def test_jax_both_ways():
    jnp = pytest.importorskip("jax.numpy")
    t = fx.tensor([1.0, 2.0, 3.0])
    assert jnp.from_dlpack(t).tolist() == [1.0, 2.0, 3.0]
    assert fx.from_dlpack(jnp.arange(3.0, dtype=jnp.float32)).tolist() == [0.0, 1.0, 2.0]

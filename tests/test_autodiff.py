"""The gradient API: explicit and implicit styles, structure mirroring,
second order, finite-difference checks through the Python layer, threads."""

import threading
import warnings

import numpy as np
import pytest

import fluxrs as fx
from gradcheck import numeric_gradient


def t64(a):
    return fx.tensor(np.asarray(a, dtype=np.float64), dtype="float64")


def test_scalar_gradient_and_closed_forms():
    assert fx.gradient(lambda x: 3 * x ** 2, 2.0) == (12.0,)
    (ga, gb) = fx.gradient(lambda a, b: a * b + a, 3.0, 4.0)
    assert (ga, gb) == (5.0, 3.0)
    # no dependence -> None, as Zygote's `nothing`
    assert fx.gradient(lambda x: 1.0, 2.0) == (None,)


def test_second_order_gradient():
    d2 = fx.gradient(lambda x: fx.gradient(lambda y: y ** 3, x)[0], 2.0)
    assert d2 == (12.0,)
    # mixed: d/dx d/dy (x*y) = 1
    mixed = fx.gradient(lambda x: fx.gradient(lambda y: x * y, 5.0)[0], 3.0)
    assert mixed == (1.0,)
    # tensor-valued second derivative of sum(tanh(x)) is -2 tanh(x) (1 - tanh(x)^2)
    x = t64([0.3, -1.2, 0.8])
    h = fx.gradient(lambda x: fx.gradient(lambda z: z.tanh().sum(), x)[0].sum(), x)[0]
    th = np.tanh(np.asarray(x))
    np.testing.assert_allclose(np.asarray(h), -2 * th * (1 - th ** 2), rtol=1e-10)


@pytest.mark.parametrize("name,f", [
    ("broadcast-mul-sum", lambda a, b: (a[:, None, :] * b[None] * b[1]).sum()),
    ("matmul-logsumexp", lambda a, b: (a @ b.T).logsumexp(axis=1).sum()),
    ("softmax-log", lambda a, b: ((a @ b.T).softmax(axis=0) * 1.5).log().mean()),
    ("div-pow", lambda a, b: ((a / (b[0] * b[0] + 1.0)) ** 2).sum() + (2.0 ** b).sum()),
    ("max-min", lambda a, b: a.max(axis=0).sum() - b.min(axis=1).sum()),
    ("index-slice", lambda a, b: (a[1:, ::2] * b[0, :2]).sum() + a[[0, 2, 2]].sum()),
])
def test_gradients_match_finite_differences(name, f):
    rng = np.random.default_rng(1)
    a0 = rng.normal(size=(3, 4))
    b0 = rng.normal(size=(2, 4))
    ga, gb = fx.gradient(f, t64(a0), t64(b0))
    fa = numeric_gradient(lambda a: float(f(t64(a), t64(b0))), a0)
    fb = numeric_gradient(lambda b: float(f(t64(a0), t64(b))), b0)
    np.testing.assert_allclose(np.asarray(ga), fa, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(np.asarray(gb), fb, rtol=1e-6, atol=1e-8)


def test_gradient_mirrors_containers_and_objects():
    class Model:
        def __init__(self):
            self.w = t64([1.0, 2.0])
            self.name = "m"
            self.parts = [t64([3.0]), 7]

    m = Model()
    d = {"a": t64([1.0, 1.0]), "skip": "text"}
    gm, gd = fx.gradient(lambda m, d: (m.w * d["a"]).sum() + m.parts[0].sum() * 2, m, d)
    assert isinstance(gm, fx.Struct)
    assert gm.w.tolist() == [1.0, 1.0]
    assert gm.name is None and gm.parts[1] is None and gm.parts[0].tolist() == [2.0]
    assert gd["a"].tolist() == [1.0, 2.0] and gd["skip"] is None


def test_withgradient_and_pullback():
    r = fx.withgradient(lambda x: (x * x).sum(), t64([1.0, 2.0]))
    assert r.val == 5.0 and r.grad[0].tolist() == [2.0, 4.0]
    val, grads = r
    assert val == 5.0
    W = t64([[1.0, 2.0], [3.0, 4.0]])
    ps = fx.params(W)
    l, back = fx.pullback(lambda: (W * W).sum(), ps)
    assert l == 30.0
    gs = back(1.0)
    assert gs[W].tolist() == [[2.0, 4.0], [6.0, 8.0]]
    assert back(2.0)[W].tolist() == [[4.0, 8.0], [12.0, 16.0]]


def test_params_are_references_and_follow_seed_rules():
    W, b = fx.ones((2, 3)), fx.zeros(2)
    ps = fx.params([W, b])
    assert len(ps) == 2 and ps[0] is W and ps[1] is b
    assert W in ps and fx.ones(1) not in ps
    assert len(fx.params(W, W)) == 1  # identity-keyed, no duplicates
    # ignores scalars and functions, unpacks dicts and lists
    ps = fx.params(1, [fx.ones(2)], {"alpha": fx.ones(3), "beta": 4, "gamma": np.sin})
    assert [tuple(p.shape) for p in ps] == [(2,), (3,)]
    gs = fx.gradient(lambda: (W * 2).sum(), fx.Params([W, b]))
    assert gs[W].tolist() == [[2.0] * 3] * 2 and gs[b] is None
    with pytest.raises(KeyError, match="not in the Params"):
        gs[fx.ones(1)]


def test_non_scalar_loss_is_a_clear_error():
    with pytest.raises(ValueError, match="must return a scalar"):
        fx.gradient(lambda x: x * 2, fx.ones(3))


def test_errors_are_python_exceptions_naming_the_problem():
    with pytest.raises(ValueError, match="broadcast"):
        fx.ones(3) + fx.ones(4)
    with pytest.raises(ValueError, match="not aligned"):
        fx.ones((2, 3)) @ fx.ones((2, 3))
    with pytest.raises(ValueError, match="axis 5 is out of range"):
        fx.ones((2, 3)).sum(axis=5)
    with pytest.raises(TypeError, match="different dtypes"):
        fx.ones(3, dtype="float64") @ fx.ones(3)
    with pytest.raises(ValueError, match="cannot reshape"):
        fx.ones(6).reshape(4, 2)
    with pytest.raises(IndexError):
        fx.ones(3)[5]
    with pytest.raises(TypeError, match="expected numbers"):
        fx.tensor(np.array(["a", "b"]))
    with pytest.raises(TypeError, match="unsupported dtype"):
        fx.tensor([1, 2], dtype="int32")


def test_no_grad_records_nothing():
    x = fx.ones(3)
    with fx.no_grad():
        c = x * x
    g = fx.gradient(lambda x: (x * c).sum() + fx.no_grad()(lambda: (x * x).sum())(), x)[0]
    assert g.tolist() == [1.0, 1.0, 1.0]  # only x * c, with c a constant


@pytest.mark.parametrize("who", ["gradient", "withgradient", "pullback", "train_", "train_ implicit"])
def test_differentiating_inside_no_grad_raises(who):
    m = fx.Dense(2, 1)
    x, y = fx.ones((3, 2)), fx.zeros((3, 1))
    calls = {
        "gradient": lambda: fx.gradient(lambda m: fx.mse(m(x), y), m),
        "withgradient": lambda: fx.withgradient(lambda m: fx.mse(m(x), y), m),
        "pullback": lambda: fx.pullback(lambda m: fx.mse(m(x), y), m),
        "train_": lambda: fx.train_(lambda m, x, y: fx.mse(m(x), y), m, [(x, y)], fx.setup(fx.Descent(), m)),
        "train_ implicit": lambda: fx.train_(lambda x, y: fx.mse(m(x), y), fx.params(m), [(x, y)], fx.Descent()),
    }
    before = m.weight.tolist()
    with fx.no_grad(), pytest.raises(RuntimeError, match=r"no_grad\(\).*outside the no_grad block"):
        calls[who]()
    assert m.weight.tolist() == before


def test_numpy_interop_zero_copy_and_ufuncs():
    t = fx.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    a = np.asarray(t)
    assert a.dtype == np.float32 and a.shape == (2, 3)
    t.assign_(np.zeros((2, 3), dtype=np.float32))
    assert a.sum() == 0.0  # the array is a view of the tensor's memory
    x = t64([0.5, 1.0])
    g = fx.gradient(lambda x: np.exp(x).sum() + np.multiply(x, x).sum(), x)[0]
    np.testing.assert_allclose(np.asarray(g), np.exp([0.5, 1.0]) + 2 * np.array([0.5, 1.0]))
    assert isinstance(np.exp(x), fx.Tensor)
    assert np.allclose(np.sum(fx.ones((2, 2)), axis=0).tolist(), [2.0, 2.0])


def test_tensors_export_through_dlpack():
    t = fx.tensor([[1.0, 2.0], [3.0, 4.0]])
    a = np.from_dlpack(t)
    assert a.dtype == np.float32 and a.tolist() == t.tolist()
    assert np.shares_memory(a, t.numpy())  # no copy
    assert np.from_dlpack(fx.tensor([1.0], dtype="float64")).dtype == np.float64
    column = fx.ones(3, 4)[:, 1]  # a strided view
    assert np.from_dlpack(column).tolist() == [1.0, 1.0, 1.0]
    assert t.__dlpack_device__() == (1, 0)  # the host


def test_torch_tensor_of_a_fluxrs_tensor():
    torch = pytest.importorskip("torch")
    t = fx.tensor([[1.0, 2.0], [3.0, 4.0]])
    x = torch.tensor(t)
    assert x.dtype == torch.float32 and x.tolist() == t.tolist()
    x[0, 0] = 9.0
    assert t.tolist()[0][0] == 1.0  # torch.tensor copies
    assert torch.tensor(fx.tensor([1.0], dtype="float64")).dtype == torch.float64
    assert torch.as_tensor(fx.ones(3, 4)[:, 1]).tolist() == [1.0, 1.0, 1.0]


def test_params_repr_shows_shapes_and_count():
    m = fx.Chain(fx.Dense(3, 4), fx.Dense(4, 2))
    ps = fx.params(m)
    shapes = [tuple(p.shape) for p in ps]
    n = sum(p.size for p in ps)
    assert repr(ps) == f"Params({shapes})  # {n} parameters"
    assert "0." not in repr(ps)  # no values


def test_tensor_has_a_docstring_with_a_collected_example():
    import doctest
    assert "fx.tensor" in fx.Tensor.__doc__
    found = [t for t in doctest.DocTestFinder().find(fx) if t.name == "fluxrs.Tensor"]
    assert found and found[0].examples
    assert doctest.DocTestRunner().run(found[0]).failed == 0


def test_float64_input_warns_once_and_converts():
    import fluxrs._core as core
    t = fx.tensor(np.ones(3))  # may or may not warn depending on earlier tests; dtype must be float32
    assert t.dtype == np.float32
    assert fx.tensor(np.ones(3), dtype="float64").dtype == np.float64
    assert core.Tensor(np.ones(2, dtype=np.int64)).dtype == np.float32


def _work(seed, n=100):
    rng = np.random.default_rng(seed)
    W = t64(rng.normal(size=(8, 8)))
    x = t64(rng.normal(size=(4, 8)))
    out = []
    for i in range(n):
        g = fx.gradient(lambda W: ((x @ W).tanh() * (i + seed)).sum(), W)[0]
        out.append(np.asarray(g).copy())
    return out


def test_two_threads_differentiate_independently():
    alone = [_work(1), _work(2)]
    results = [None, None]

    def run(k):
        results[k] = _work(k + 1)

    ts = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for k in range(2):
        for a, b in zip(alone[k], results[k]):
            np.testing.assert_array_equal(a, b)


def test_thread_reading_a_watched_tensor_records_nothing():
    W = fx.ones((3, 3))
    seen = {}
    started, done = threading.Event(), threading.Event()

    def other():
        started.wait()
        seen["tracked"] = (W * 2).is_tracked
        done.set()

    t = threading.Thread(target=other)
    t.start()

    def f(W):
        started.set()
        done.wait()
        return (W * W).sum()

    fx.gradient(f, W)
    t.join()
    assert seen["tracked"] is False


def test_gil_is_released_inside_kernels():
    a = fx.randn(768, 768)
    ticks = [0]
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks[0] += 1

    t = threading.Thread(target=count)
    t.start()
    before = ticks[0]
    for _ in range(10):
        a @ a
    stop.set()
    t.join()
    # With the GIL held for each matmul, the counter could only advance between calls.
    assert ticks[0] - before > 1000


def test_fortran_ordered_and_strided_numpy_arrays_keep_their_logical_order():
    a = np.array([[1.0, 2.0, 3.0], [2.0, 1.0, 1.0], [3.0, 3.0, 2.0]])
    for arr in (a.T, np.asfortranarray(a), a[::-1, ::2], np.moveaxis(a, 0, 1)):
        np.testing.assert_array_equal(fx.tensor(arr, dtype="float64").numpy(), arr)


class _NumpyWeights(fx.Layer):
    def __init__(self):
        self.w = np.random.default_rng(0).standard_normal((3, 2))  # float64, numpy's default
        self._scale = np.full(2, 2.0)  # an underscore name: a constant, left as it is

    def __call__(self, x):
        return (x @ self.w) * fx.tensor(self._scale)


def test_a_float_numpy_attribute_of_a_layer_is_a_parameter():
    m = _NumpyWeights()
    assert isinstance(m.w, fx.Tensor) and m.w.dtype == np.float32
    assert isinstance(m._scale, np.ndarray)
    assert len(fx.params(m)) == 1 and fx.params(m)[0] is m.w
    x = fx.ones((4, 3))
    g = fx.gradient(lambda m: m(x).sum(), m)[0]
    np.testing.assert_allclose(np.asarray(g.w), np.full((3, 2), 8.0))  # 4 rows × scale 2
    opt = fx.setup(fx.Descent(0.1), m)
    before = m.w.numpy().copy()
    fx.update_(opt, m, g)
    np.testing.assert_allclose(m.w.numpy(), before - 0.8, rtol=1e-6)


def test_the_layer_decorator_converts_numpy_attributes_too():
    @fx.layer
    class Scale:
        def __init__(self):
            self.w = np.ones(2)
            self.labels = np.arange(3)  # integer arrays are data, not parameters

        def __call__(self, x):
            return x * self.w

    s = Scale()
    assert isinstance(s.w, fx.Tensor) and isinstance(s.labels, np.ndarray)
    assert fx.gradient(lambda s: s(fx.ones(2)).sum(), s)[0].w.tolist() == [1.0, 1.0]


def test_assigning_a_numpy_array_to_a_parameter_keeps_it_a_parameter():
    m = fx.Chain(fx.Dense(3, 4), fx.Dense(4, 2))
    m[-1].weight = np.zeros((2, 4))  # float64 into a float32 parameter: it keeps float32
    assert isinstance(m[-1].weight, fx.Tensor) and m[-1].weight.dtype == np.float32
    assert "# 26 parameters" in repr(m)
    g = fx.gradient(lambda m: m(fx.ones((1, 3))).sum(), m)[0]
    assert tuple(g.layers[1].weight.shape) == (2, 4)
    m64 = fx.Dense(np.ones((2, 3)), np.zeros(2))  # a float64 layer stays float64
    m64.weight = np.zeros((2, 3), dtype=np.float32)
    assert m64.weight.dtype == np.float64


def test_a_numpy_array_the_tree_walk_cannot_train_warns_once():
    class Plain:  # not a Layer: nothing converts its attributes
        def __init__(self):
            self.w = np.ones(2)

    with pytest.warns(UserWarning, match=r"Plain\['w'\] is not a parameter") as rec:
        assert fx.gradient(lambda p: fx.tensor(p.w).sum(), Plain()) == (None,)
    assert rec[0].filename == __file__  # points at the user's call
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fx.params(Plain())  # said once per place


def test_float_arrays_inside_container_arguments_are_differentiated():
    g = fx.gradient(lambda d: (d["w"] ** 2).sum(), {"w": np.ones(2, np.float32)})[0]
    assert g["w"].tolist() == [2.0, 2.0]
    xs, labels = np.array([1.0, 2.0]), np.array([1, 0])
    g = fx.gradient(lambda b: (b[0] * 3).sum(), (xs, labels))[0]
    assert g[0].tolist() == [3.0, 3.0] and g[1] is None
    assert g[0].dtype == np.float64  # a float64 argument is differentiated in float64, as at the top level


def test_grad_on_final_reports_each_gradient_once_it_is_final():
    import fluxrs._core as core
    fx.seed_(0)
    m = fx.Chain(fx.Dense(4, 8, fx.relu), fx.Dense(8, 3))
    xs = list(fx.params(m))
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)

    def loss():
        core.push_watch(xs)
        try:
            return (m(x) ** 2).sum()
        finally:
            core.pop_watch()

    seen = []
    gs = core.grad(loss(), xs, on_final=lambda i, g: seen.append((i, g.numpy().copy())))
    order = [i for i, _ in seen]
    assert sorted(order) == [0, 1, 2, 3] and max(order.index(2), order.index(3)) < min(order.index(0), order.index(1))
    for i, g in seen:  # the value reported is the final one
        np.testing.assert_array_equal(g, gs[i].numpy())

    class Stop(Exception):
        pass

    def fail(i, g):
        raise Stop(i)

    with pytest.raises(Stop):
        core.grad(loss(), xs, on_final=fail)

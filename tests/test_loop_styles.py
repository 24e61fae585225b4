"""Every way of writing a training loop trains the same parameters, for every layer family;
and the walks that gradient/update_ keep between steps (functor.plan, the update matching)
follow every change of the model and of the optimiser state."""

import warnings

import numpy as np
import pytest

import fluxrs as fx


def _mha_head(out):
    y, _scores = out
    return y[:, 0, :]


FAMILIES = {
    "dense": (lambda: fx.Chain(fx.Dense(6, 8, fx.relu), fx.Dense(8, 3)), (5, 6)),
    "conv1d+pools": (lambda: fx.Chain(fx.Conv((3,), (2, 4), fx.relu, pad=1), fx.MaxPool((2,)), fx.flatten,
                                      fx.Dense(16, 3)), (5, 2, 8)),
    "conv2d+pools": (lambda: fx.Chain(fx.Conv((3, 3), (1, 3), fx.tanh), fx.MeanPool((2, 2)), fx.flatten,
                                      fx.Dense(27, 3)), (5, 1, 8, 8)),
    "norms": (lambda: fx.Chain(fx.Dense(6, 8), fx.BatchNorm(8, fx.relu), fx.LayerNorm(8), fx.Dense(8, 3)), (5, 6)),
    "gru": (lambda: fx.Chain(fx.GRU(2, 4), lambda h: h[:, -1, :], fx.Dense(4, 3)), (5, 6, 2)),
    "lstm": (lambda: fx.Chain(fx.LSTM(2, 4), lambda h: h[:, -1, :], fx.Dense(4, 3)), (5, 6, 2)),
    "attention": (lambda: fx.Chain(fx.MultiHeadAttention(4, nheads=2), _mha_head, fx.Dense(4, 3)), (5, 3, 4)),
}


def _data(shape, n=4):
    rng = np.random.default_rng(7)
    return [(rng.standard_normal(shape).astype(np.float32), rng.standard_normal((shape[0], 3)).astype(np.float32))
            for _ in range(n)]


def _model(make):
    fx.seed_(3)
    return make()


def _loss(m, x, y):
    return fx.mse(m(x), y)


def _train_explicit(make, data):
    m = _model(make)
    fx.train_(_loss, m, data, fx.setup(fx.Adam(0.01), m))
    return m


def _train_loader(make, data):
    m = _model(make)
    xs = np.concatenate([x for x, _ in data])
    ys = np.concatenate([y for _, y in data])
    fx.train_(_loss, m, fx.DataLoader((xs, ys), batchsize=len(data[0][0])), fx.setup(fx.Adam(0.01), m))
    return m


def _train_tensors_compiled(make, data):
    m = _model(make)
    # Compiling some families is refused with a warning (running statistics, a fused kernel
    # without a replay): they must still train as eager does, which is what is compared.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fx.train_(_loss, m, [(fx.tensor(x), fx.tensor(y)) for x, y in data], fx.setup(fx.Adam(0.01), m),
                  compile=True)
    return m


def _custom_gradient(make, data):
    m = _model(make)
    opt = fx.setup(fx.Adam(0.01), m)
    for x, y in data:
        g = fx.gradient(lambda m: fx.mse(m(x), y), m)[0]
        fx.update_(opt, m, g)
    return m


def _custom_withgradient(make, data):
    m = _model(make)
    opt = fx.setup(fx.Adam(0.01), m)
    for x, y in data:
        val, grads = fx.withgradient(lambda m: fx.mse(m(x), y), m)
        assert np.isfinite(val)
        fx.update_(opt, m, grads[0])
    return m


def _custom_pullback(make, data):
    m = _model(make)
    opt = fx.setup(fx.Adam(0.01), m)
    for x, y in data:
        _val, back = fx.pullback(lambda m: fx.mse(m(x), y), m)
        fx.update_(opt, m, back(1.0)[0])
    return m


def _custom_jit(make, data):
    m = _model(make)
    opt = fx.setup(fx.Adam(0.01), m)
    loss = fx.jit(_loss)
    with warnings.catch_warnings():  # families it refuses (running statistics) train eagerly, as compared
        warnings.simplefilter("ignore")
        for x, y in data:
            g = fx.gradient(lambda m: loss(m, x, y), m)[0]
            fx.update_(opt, m, g)
    return m


def _implicit_train(make, data):
    m = _model(make)
    fx.train_(lambda x, y: fx.mse(m(x), y), fx.params(m), data, fx.Adam(0.01))
    return m


def _implicit_custom(make, data):
    m = _model(make)
    ps, rule = fx.params(m), fx.Adam(0.01)
    for x, y in data:
        gs = fx.gradient(lambda: fx.mse(m(x), y), ps)
        fx.update_(rule, ps, gs)
    return m


STYLES = [_train_loader, _train_tensors_compiled, _custom_gradient, _custom_withgradient, _custom_pullback,
          _custom_jit, _implicit_train, _implicit_custom]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("style", STYLES, ids=lambda f: f.__name__.lstrip("_"))
def test_every_loop_style_trains_the_same_parameters(family, style):
    make, shape = FAMILIES[family]
    data = _data(shape)
    want = _train_explicit(make, data)
    got = style(make, data)
    init = _model(make)
    for (a, b, p0) in zip(fx.params(got), fx.params(want), fx.params(init)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
        assert not np.array_equal(np.asarray(a), np.asarray(p0)) or np.asarray(p0).size == 0
    # running statistics too (BatchNorm): every tensor of the model
    for a, b in zip(fx.functor.leaves(got, trainable_only=False), fx.functor.leaves(want, trainable_only=False)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- the kept walks follow every change

def _step(m, opt, x, y):
    g = fx.gradient(lambda m: fx.mse(m(x), y), m)[0]
    fx.update_(opt, m, g)
    return g


def _xy():
    rng = np.random.default_rng(1)
    return rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((4, 2)).astype(np.float32)


def test_replacing_a_weight_is_seen_by_gradient_and_update():
    x, y = _xy()
    m = fx.Chain(fx.Dense(3, 2))
    opt = fx.setup(fx.Descent(0.1), m)
    _step(m, opt, x, y)
    new = fx.tensor(np.ones((2, 3), np.float32))
    m[0].weight = new
    g = _step(m, opt, x, y)
    assert g.layers[0].weight is not None
    # the new tensor itself was trained (not the one it replaced)
    assert not np.allclose(np.asarray(new), 1.0)
    np.testing.assert_allclose(np.asarray(new), 1.0 - 0.1 * np.asarray(g.layers[0].weight), rtol=1e-6)


def test_a_layer_appended_to_a_list_chain_is_walked():
    x, y = _xy()
    m = fx.Chain([fx.Dense(3, 2)])
    second = fx.Dense(2, 2)  # made first: appending it edits no attribute, only the list
    assert len(fx.gradient(lambda m: fx.mse(m(x), y), m)[0].layers) == 1
    m.layers.append(second)
    g = fx.gradient(lambda m: fx.mse(m(x), y), m)[0]
    assert len(g.layers) == 2 and g.layers[1].weight.shape == (2, 2)
    assert len(fx.params(m)) == 4
    # the old state no longer fits: update_ says so instead of updating half the model
    with pytest.raises(fx.optimise.StateMismatchError):
        fx.update_(fx.setup(fx.Descent(0.1), fx.Chain([fx.Dense(3, 2)])), m, g)


def test_a_replaced_entry_of_a_state_list_is_used():
    x, y = _xy()
    m = fx.Chain([fx.Dense(3, 2)])
    opt = fx.setup(fx.Descent(0.1), m)
    _step(m, opt, x, y)  # keeps the matching of the state's list to the model
    opt.layers[0] = fx.setup(fx.Descent(0.0), m[0])  # a new entry, no attribute edited
    w = np.asarray(m[0].weight).copy()
    _step(m, opt, x, y)
    np.testing.assert_array_equal(np.asarray(m[0].weight), w)


def test_a_users_children_override_is_asked_again():
    class Pick(fx.Layer):
        def __init__(self):
            self.a, self.b = fx.Dense(3, 2), fx.Dense(3, 2)
            self._use_b = False

        def children(self):
            return {"a": self.b if self._use_b else self.a}

        def __call__(self, x):
            return (self.b if self._use_b else self.a)(x)

    x, y = _xy()
    m = Pick()
    g = fx.gradient(lambda m: fx.mse(m(x), y), m)[0]
    assert fx.params(m)[0] is m.a.weight and g.a.weight is not None
    object.__setattr__(m, "_use_b", True)  # even bypassing Layer.__setattr__
    assert fx.params(m)[0] is m.b.weight


def test_a_plain_object_model_is_compared_with_its_snapshot():
    class Plain:
        def __init__(self):
            self.w = fx.ones(3)

        def __call__(self, x):
            return (x * self.w).sum()

    m = Plain()
    assert fx.params(m)[0] is m.w
    m.w = fx.zeros(3)
    assert fx.params(m)[0] is m.w
    assert fx.gradient(lambda m: m(fx.ones(3)), m)[0].w.tolist() == [1.0, 1.0, 1.0]


def test_a_replaced_state_leaf_and_freezing_take_effect():
    x, y = _xy()
    m = fx.Chain(fx.Dense(3, 2))
    opt = fx.setup(fx.Descent(0.1), m)
    _step(m, opt, x, y)
    opt.layers[0].weight = fx.setup(fx.Descent(0.0), m[0].weight)  # a rule that changes nothing
    w = np.asarray(m[0].weight).copy()
    b = np.asarray(m[0].bias).copy()
    _step(m, opt, x, y)
    np.testing.assert_array_equal(np.asarray(m[0].weight), w)
    assert not np.array_equal(np.asarray(m[0].bias), b)
    fx.freeze_(opt.layers[0].bias)
    b = np.asarray(m[0].bias).copy()
    _step(m, opt, x, y)
    np.testing.assert_array_equal(np.asarray(m[0].bias), b)


def test_an_edited_gradient_is_the_one_applied():
    x, y = _xy()
    m = fx.Dense(3, 2)
    opt = fx.setup(fx.Descent(1.0), m)
    g = fx.gradient(lambda m: fx.mse(m(x), y), m)[0]
    fx.update_(opt, m, g)  # keeps the matching
    w = np.asarray(m.weight).copy()
    g = fx.gradient(lambda m: fx.mse(m(x), y), m)[0]
    g.weight = g.weight * 0.0
    g.bias = None
    b = np.asarray(m.bias).copy()
    fx.update_(opt, m, g)
    np.testing.assert_array_equal(np.asarray(m.weight), w)
    np.testing.assert_array_equal(np.asarray(m.bias), b)


def test_a_shared_weight_is_updated_once():
    x, _ = _xy()
    d = fx.Dense(3, 3, bias=False)
    m = fx.Chain(d, d)
    opt = fx.setup(fx.Descent(0.5), m)
    w0 = np.asarray(d.weight).copy()
    g = fx.gradient(lambda m: m(x).sum(), m)[0]
    fx.update_(opt, m, g)
    np.testing.assert_allclose(np.asarray(d.weight), w0 - 0.5 * np.asarray(g.layers[0].weight), rtol=1e-6)


def test_update_without_a_gradient_raises():
    m = fx.Dense(2, 1)
    with pytest.raises(TypeError, match="gradient is missing"):
        fx.update_(fx.setup(fx.Adam(), m), m)


def test_kept_walks_do_not_keep_models_or_tensors_alive():
    import gc
    import weakref

    class Custom(fx.Layer):  # children() of its own: its walk keeps a snapshot of the root
        def __init__(self):
            self.d = fx.Dense(3, 2)

        def children(self):
            return {"d": self.d}

        def __call__(self, x):
            return self.d(x)

    x, y = _xy()
    refs = []
    for make in (lambda: fx.Chain(fx.Dense(3, 2)), Custom):
        m = make()
        opt = fx.setup(fx.Adam(), m)
        _step(m, opt, x, y)
        jl = fx.jit(lambda m, x, y: fx.mse(m(x), y))
        fx.gradient(lambda m: jl(m, x, y), m)
        fx.gradient(lambda m: jl(m, x, y), m)  # a replay
        assert jl.replayed == 1
        refs += [weakref.ref(m), weakref.ref(opt), weakref.ref(fx.params(m)[0])]
        del m, opt, jl
    w = fx.ones(3)
    fx.gradient(lambda w: (w * w).sum(), w)
    refs.append(weakref.ref(w))
    del w
    fx.gradient(lambda v: (v * v).sum(), fx.ones(2))  # the thread's last gradient is another's now
    gc.collect()
    assert [r() for r in refs] == [None] * len(refs)


def test_a_copied_layer_walks_its_own_tensors():
    import copy
    x, y = _xy()
    m = fx.Chain(fx.Dense(3, 2))
    fx.gradient(lambda m: fx.mse(m(x), y), m)  # keeps its walk
    shallow = copy.copy(m[0])
    shallow.weight = fx.zeros(2, 3)  # the copy's own tensor; the original keeps its walk
    assert fx.params(shallow)[0] is shallow.weight and fx.params(m)[0] is m[0].weight
    mapped = fx.fmap(lambda p: p * 1, m)  # fmap copies each layer and sets its new tensors
    assert {id(p) for p in fx.params(mapped)}.isdisjoint({id(p) for p in fx.params(m)})
    g = fx.gradient(lambda c: c(x).sum(), mapped)[0]
    assert g.layers[0].weight is not None


@pytest.mark.parametrize("call", ["update_", "train_"])
def test_a_none_state_for_a_model_with_parameters_raises(call):
    x, y = _xy()
    m = fx.Dense(3, 2)
    lost = None  # say, a freeze_ or thaw_ result (None, as in Optimisers.jl) kept by mistake
    with pytest.raises(TypeError, match="opt_state is None"):
        if call == "update_":
            fx.update_(lost, m, fx.gradient(lambda m: fx.mse(m(x), y), m)[0])
        else:
            fx.train_(lambda m, x, y: fx.mse(m(x), y), m, [(x, y)], lost)
    # a model with nothing to train has a None state, and that is fine
    fx.train_(lambda m, x: fx.relu(x).sum(), fx.relu, [(x,)], fx.setup(fx.Adam(), fx.relu))


def test_adjust_returns_the_state_it_changed():
    # `opt = fx.adjust_(opt, lr)`, the PyTorch habit of keeping an in-place call's result, must
    # leave a state that trains, with the new rate
    x, y = _xy()
    m = fx.Dense(3, 2)
    opt = fx.setup(fx.Descent(0.1), m)
    opt = fx.adjust_(opt, 0.5)
    assert opt.weight.rule.eta == 0.5
    w = m.weight.numpy().copy()
    g = fx.gradient(lambda m: fx.mse(m(x), y), m)[0]
    opt, m = fx.update_(opt, m, g)
    np.testing.assert_allclose(m.weight.numpy(), w - 0.5 * g.weight.numpy(), rtol=1e-6)

"""Optimisation rules against hand-computed Optimisers.jl formulas, and the setup/update_ API."""

import math

import numpy as np
import pytest

import fluxrs as fx
from fluxrs.optimise import Rule, StateMismatchError, apply_all


def t64(v):
    return fx.tensor(np.asarray(v, dtype=np.float64), dtype="float64")


X0 = np.array([1.0, -2.0, 3.0])
G1 = np.array([0.5, -1.0, 2.0])
G2 = np.array([-0.25, 0.75, 1.5])


def run_two_steps(rule):
    """Two updates through update_ (the fused kernel path) on a float64 parameter."""
    x = t64(X0)
    st = fx.setup(rule, x)
    fx.update_(st, x, t64(G1))
    x1 = x.numpy().copy()
    fx.update_(st, x, t64(G2))
    return x1, x.numpy()


def run_two_steps_python(rule):
    """The same two steps through rule.apply (the tensor-op reference path)."""
    x = t64(X0)
    s = rule.init(x)
    out = []
    for g in (G1, G2):
        s, step = rule.apply(s, x, t64(g))
        x.assign_(x - step)
        out.append(x.numpy().copy())
    return out


def test_defaults_are_optimisers_jl():
    assert fx.Descent().eta == 0.1
    assert (fx.Momentum().eta, fx.Momentum().rho) == (0.01, 0.9)
    assert (fx.Nesterov().eta, fx.Nesterov().rho) == (0.001, 0.9)
    a = fx.Adam()
    assert (a.eta, a.beta, a.epsilon) == (0.001, (0.9, 0.999), 1e-8)
    assert repr(a) == "Adam(0.001, (0.9, 0.999), 1e-08)"
    assert fx.ADAM is fx.Adam and fx.Optimiser is fx.OptimiserChain
    assert fx.Adam(η=0.01).eta == 0.01 and fx.Adam(eta=0.01, beta=(0.8, 0.99)).beta == (0.8, 0.99)
    assert fx.Momentum(0.1, ρ=0.5).rho == 0.5


def test_rule_argument_errors():
    with pytest.raises(TypeError, match="no hyperparameter 'gamma'"):
        fx.Adam(gamma=1)
    with pytest.raises(TypeError, match="at most 1 hyperparameters"):
        fx.Descent(0.1, 0.2)
    with pytest.raises(TypeError, match="both positionally and by keyword"):
        fx.Descent(0.1, eta=0.2)
    with pytest.raises(TypeError, match="beta must be a pair"):
        fx.Adam(0.1, 0.9)
    with pytest.raises(TypeError, match="real number"):
        fx.Descent("fast")


def test_descent_one_step():
    x1, x2 = run_two_steps(fx.Descent(0.1))
    np.testing.assert_allclose(x1, X0 - 0.1 * G1, rtol=1e-15)
    np.testing.assert_allclose(x2, X0 - 0.1 * G1 - 0.1 * G2, rtol=1e-15)


def test_momentum_by_hand():
    eta, rho = 0.1, 0.9
    v1 = eta * G1                      # v = ρ v + η dx, from v = 0
    v2 = rho * v1 + eta * G2
    want = [X0 - v1, X0 - v1 - v2]
    got = run_two_steps(fx.Momentum(eta, rho))
    py = run_two_steps_python(fx.Momentum(eta, rho))
    for g, p, w in zip(got, py, want):
        np.testing.assert_allclose(g, w, rtol=1e-14)
        np.testing.assert_allclose(p, w, rtol=1e-14)


def test_nesterov_by_hand():
    eta, rho = 0.01, 0.9
    v = np.zeros(3)
    x = X0.copy()
    want = []
    for g in (G1, G2):
        step = -rho ** 2 * v + (1 + rho) * eta * g
        v = rho * v - eta * g
        x = x - step
        want.append(x.copy())
    for got in (run_two_steps(fx.Nesterov(eta, rho)), run_two_steps_python(fx.Nesterov(eta, rho))):
        for g_, w in zip(got, want):
            np.testing.assert_allclose(g_, w, rtol=1e-14)


def test_adam_by_hand():
    eta, (b1, b2), eps = 0.01, (0.9, 0.999), 1e-8
    m = np.zeros(3); v = np.zeros(3); bt1, bt2 = b1, b2
    x = X0.copy()
    want = []
    for g in (G1, G2):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        x = x - m / (1 - bt1) / (np.sqrt(v / (1 - bt2)) + eps) * eta
        bt1, bt2 = bt1 * b1, bt2 * b2
        want.append(x.copy())
    # first Adam step is ≈ η·sign(g): a sanity check of the hand formula itself
    np.testing.assert_allclose(X0 - want[0], eta * np.sign(G1), rtol=1e-6)
    for got in (run_two_steps(fx.Adam(eta)), run_two_steps_python(fx.Adam(eta))):
        for g_, w in zip(got, want):
            np.testing.assert_allclose(g_, w, rtol=1e-13)


def test_adam_state_after_one_step():
    x = t64(X0)
    st = fx.setup(fx.Adam(0.01), x)
    fx.update_(st, x, t64(G1))
    (mt, vt), = st.state.arrays
    np.testing.assert_allclose(mt.numpy(), 0.1 * G1, rtol=1e-14)
    np.testing.assert_allclose(vt.numpy(), 0.001 * G1 ** 2, rtol=1e-12)
    assert st.state.scalars[0] == pytest.approx([0.81, 0.998001])


def test_weightdecay_clipgrad_and_chain():
    x1, _ = run_two_steps(fx.OptimiserChain(fx.WeightDecay(0.1), fx.Descent(0.5)))
    np.testing.assert_allclose(x1, X0 - 0.5 * (G1 + 0.1 * X0), rtol=1e-14)
    x1, _ = run_two_steps(fx.OptimiserChain(fx.ClipGrad(0.6), fx.Descent(1.0)))
    np.testing.assert_allclose(x1, X0 - np.clip(G1, -0.6, 0.6), rtol=1e-14)
    py = run_two_steps_python(fx.OptimiserChain(fx.WeightDecay(0.1), fx.Adam(0.01)))
    got = run_two_steps(fx.OptimiserChain(fx.WeightDecay(0.1), fx.Adam(0.01)))
    for a, b in zip(py, got):
        np.testing.assert_allclose(a, b, rtol=1e-13)


@pytest.mark.parametrize("rule", [fx.Descent(0.1), fx.Momentum(0.05, 0.9), fx.Nesterov(0.05, 0.9),
                                  fx.Adam(0.1), fx.OptimiserChain(fx.ClipGrad(1.0), fx.Adam(0.05))])
def test_converges_on_a_quadratic(rule):
    # f(x) = Σ s_i (x_i - c_i)², an ill-conditioned bowl
    c = fx.tensor([1.0, -2.0, 0.5, 3.0])
    s = fx.tensor([1.0, 0.5, 2.0, 0.25])
    x = fx.zeros(4)
    st = fx.setup(rule, x)
    for _ in range(1500):
        g = fx.gradient(lambda x: (s * (x - c) ** 2).sum(), x)[0]
        fx.update_(st, x, g)
    np.testing.assert_allclose(x.numpy(), c.numpy(), atol=2e-2)


def test_fused_kernel_matches_python_path_float32():
    fx.seed_(0)
    xs = [fx.randn(7, 5), fx.randn(5)]
    ys = [fx.tensor(x.numpy()) for x in xs]
    rule = fx.Adam(0.01)
    s_rust = [rule.init(x) for x in xs]
    s_py = [rule.init(y) for y in ys]
    rng = np.random.default_rng(0)
    for _ in range(5):
        gs = [fx.tensor(rng.normal(size=x.shape).astype(np.float32)) for x in xs]
        apply_all(rule, xs, gs, s_rust)
        for y, g, i in zip(ys, gs, range(2)):
            s_py[i], step = rule.apply(s_py[i], y, g)
            y.assign_(y - step)
    for x, y in zip(xs, ys):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- setup / update_

def model_and_grad():
    fx.seed_(1)
    m = fx.Chain(fx.Dense(3, 4, fx.relu), fx.Dense(4, 2), fx.softmax)
    g = fx.gradient(lambda m: (m(fx.ones(5, 3)) ** 2).sum(), m)
    return m, g


def test_setup_mirrors_the_model():
    m, g = model_and_grad()
    st = fx.setup(fx.Adam(), m)
    assert isinstance(st.layers[0].weight, fx.Leaf) and st.layers[0].weight.shape == (4, 3)
    assert st.layers[0].act is None and st.layers[2] is None
    assert isinstance(g[0].layers[1].bias, fx.Tensor)  # gradients mirror the model the same way


def test_update_changes_the_model_in_place():
    m, g = model_and_grad()
    w = m[0].weight
    before = w.numpy().copy()
    st = fx.setup(fx.Descent(0.1), m)
    out = fx.update_(st, m, g[0])
    assert out[0] is st and out[1] is m
    assert m[0].weight is w  # same tensor object, new values
    np.testing.assert_allclose(w.numpy(), before - 0.1 * g[0].layers[0].weight.numpy(), rtol=1e-6)


def test_bare_rule_updates_statelessly_and_momentum_lives_in_the_rule():
    m, g = model_and_grad()
    before = m[1].bias.numpy().copy()
    fx.update_(fx.Descent(0.01), m, g[0])
    np.testing.assert_allclose(m[1].bias.numpy(), before - 0.01 * g[0].layers[1].bias.numpy(), rtol=1e-6)
    rule = fx.Momentum(0.1)
    fx.update_(rule, m, g[0])
    assert len(rule._implicit) == 4


def test_state_from_another_model_is_a_clear_error():
    m, g = model_and_grad()
    other = fx.Chain(fx.Dense(3, 5, fx.relu), fx.Dense(5, 2), fx.softmax)
    st = fx.setup(fx.Adam(), other)
    before = m[0].weight.numpy().copy()
    with pytest.raises(StateMismatchError, match=r"at \.layers\[0\]\.weight.*\(5, 3\).*\(4, 3\)"):
        fx.update_(st, m, g[0])
    np.testing.assert_array_equal(m[0].weight.numpy(), before)
    with pytest.raises(StateMismatchError, match="children"):
        fx.update_(fx.setup(fx.Adam(), fx.Chain(fx.Dense(3, 4))), m, g[0])
    with pytest.raises(StateMismatchError, match=r"\.layers\[2\].*Struct subtree there, the model has function"):
        fx.update_(fx.setup(fx.Adam(), fx.Chain(fx.Dense(3, 4, fx.relu), fx.Dense(4, 2), fx.Dense(2, 2))), m, g[0])


def test_update_errors():
    m, g = model_and_grad()
    st = fx.setup(fx.Adam(), m)
    with pytest.raises(TypeError, match=r"grads\[0\]"):
        fx.update_(st, m, g)
    with pytest.raises(TypeError, match="fx.setup"):
        fx.update_(m, st, g[0])
    with pytest.raises(TypeError, match="needs a rule"):
        fx.update_(st, fx.params(m), fx.gradient(lambda: m(fx.ones(3)).sum(), fx.params(m)))
    with pytest.raises(TypeError, match="Rule|rule"):
        fx.setup(m, fx.Adam())


def test_tied_weights_share_one_leaf_and_update_once():
    d = fx.Dense(2, 2, bias=False)
    m = fx.Chain(d, d)
    st = fx.setup(fx.Descent(1.0), m)
    assert st.layers[0].weight is st.layers[1].weight
    g = fx.gradient(lambda m: m(fx.ones(2)).sum(), m)[0]
    before = d.weight.numpy().copy()
    fx.update_(st, m, g)
    np.testing.assert_allclose(d.weight.numpy(), before - g.layers[0].weight.numpy(), rtol=1e-6)


def test_freeze_thaw_adjust():
    m, g = model_and_grad()
    st = fx.setup(fx.Descent(0.1), m)
    fx.freeze_(st.layers[0])
    w0, w1 = m[0].weight.numpy().copy(), m[1].weight.numpy().copy()
    fx.update_(st, m, g[0])
    np.testing.assert_array_equal(m[0].weight.numpy(), w0)
    assert not np.array_equal(m[1].weight.numpy(), w1)
    fx.thaw_(st)
    fx.adjust_(st, 0.0)
    assert st.layers[0].weight.rule.eta == 0.0
    w0 = m[0].weight.numpy().copy()
    fx.update_(st, m, g[0])
    np.testing.assert_array_equal(m[0].weight.numpy(), w0)


def test_implicit_update_with_params_and_grads():
    m, _ = model_and_grad()
    ps = fx.params(m)
    x = fx.ones(5, 3)
    gs = fx.gradient(lambda: (m(x) ** 2).sum(), ps)
    opt = fx.Adam(0.01)
    w = m[0].weight.numpy().copy()
    fx.update_(opt, ps, gs)
    assert not np.array_equal(m[0].weight.numpy(), w)
    assert len(opt._implicit) == len(ps) == 4
    # state persists in the rule: the second step uses β^t from the first
    fx.update_(opt, ps, fx.gradient(lambda: (m(x) ** 2).sum(), ps))
    assert opt._implicit[id(m[0].weight)][1].scalars[0] == pytest.approx([0.9 ** 3, 0.999 ** 3])


def test_implicit_single_array_and_bound_rule():
    x = fx.tensor([1.0, 2.0])
    fx.update_(fx.Descent(0.5), x, [2.0, 2.0])  # gradient as a plain list
    assert x.tolist() == [0.0, 1.0]
    ps = fx.params(x)
    opt = fx.Descent(1.0, ps)  # Flux's oldest style: a rule bound to its parameters
    assert opt.params is ps
    gs = fx.gradient(lambda: (x * 3).sum(), ps)
    fx.update_(opt, gs)
    assert x.tolist() == [-3.0, -2.0]
    assert fx.Descent(ps, 0.3).eta == 0.3  # SGD(params(m), 0.1) order too


def test_custom_python_rule_runs_on_the_python_path():
    class ScaledSign(Rule):
        fields, defaults = ("eta",), (0.1,)

        def init(self, x):
            return 0  # a step counter

        def apply(self, state, x, dx):
            return state + 1, dx.sign() * self.eta * (state + 1)

    m = fx.Dense(2, 1)
    st = fx.setup(ScaledSign(0.5), m)
    b = m.bias.tolist()[0]
    for _ in range(2):
        g = fx.gradient(lambda m: m(fx.ones(2)).sum(), m)[0]
        fx.update_(st, m, g)
    assert st.bias.state == 2
    assert m.bias.tolist()[0] == pytest.approx(b - 0.5 - 1.0)
    # mixing a custom rule into a chain also falls back to Python
    x = fx.tensor([0.0])
    st = fx.setup(fx.OptimiserChain(fx.WeightDecay(0.0), ScaledSign(1.0)), x)
    fx.update_(st, x, fx.tensor([3.0]))
    assert x.tolist() == [-1.0]


def test_leaf_repr():
    st = fx.setup(fx.Momentum(), fx.zeros(2, 3))
    assert repr(st) == "Leaf(Momentum(0.01, 0.9), <1 array (2, 3)>)"
    assert repr(fx.setup(fx.Descent(), fx.zeros(2))) == "Leaf(Descent(0.1), ())"


def test_missing_gradients_are_skipped():
    m, _ = model_and_grad()
    # the loss ignores the second layer: its gradient subtree is None
    g = fx.gradient(lambda m: m[0](fx.ones(3)).sum(), m)[0]
    assert g.layers[1] is None
    st = fx.setup(fx.Adam(), m)
    w1 = m[1].weight.numpy().copy()
    fx.update_(st, m, g)
    np.testing.assert_array_equal(m[1].weight.numpy(), w1)
    assert st.layers[1].weight.state.scalars[0] == [0.9, 0.999]  # untouched

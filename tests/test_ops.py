"""The functional namespace (fx.exp, fx.sum, fx.matmul, ...): values against numpy, gradients
against central finite differences (float64), array-likes and numbers accepted, clear errors."""

import numpy as np
import pytest

import fluxrs as fx
from gradcheck import finite_difference

RNG = np.random.default_rng(0)
X = RNG.uniform(0.2, 1.5, (3, 4))  # positive, for log and sqrt; away from tan's poles
S = RNG.standard_normal((3, 4))    # either sign, none near 0 (sign, abs kinks)
S[np.abs(S) < 0.1] = 0.5

UNARY = {  # name: (numpy reference, input)
    "exp": (np.exp, S), "log": (np.log, X), "log1p": (np.log1p, X), "expm1": (np.expm1, S),
    "sqrt": (np.sqrt, X), "abs": (np.abs, S), "square": (np.square, S), "sin": (np.sin, S),
    "cos": (np.cos, S), "tan": (np.tan, X), "sign": (np.sign, S), "tanh": (np.tanh, S),
}


def f64(a):
    return fx.tensor(np.asarray(a, dtype=np.float64), dtype="float64")


def grad_vs_fd(f, *arrays):
    ts = [f64(a) for a in arrays]
    w = f64(RNG.standard_normal(np.shape(f(*ts))))

    def loss():
        return (f(*ts) * w).sum()

    gs = fx.gradient(lambda *t: (f(*t) * w).sum(), *ts)
    for g, fd in zip(gs, finite_difference(loss, ts)):
        np.testing.assert_allclose(np.zeros_like(fd) if g is None else g.numpy(), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", list(UNARY))
def test_unary_values_and_gradients(name):
    ref, x = UNARY[name]
    f = getattr(fx, name)
    np.testing.assert_allclose(f(f64(x)).numpy(), ref(x), rtol=1e-12)
    np.testing.assert_allclose(f(x.astype(np.float32)).numpy(), ref(x), rtol=2e-6, atol=1e-7)  # float32
    np.testing.assert_allclose(f(x.tolist()).numpy(), ref(x), rtol=2e-6, atol=1e-7)  # a list
    assert f(0.5) == pytest.approx(float(ref(0.5)), rel=1e-12) and isinstance(f(0.5), float)  # a number
    grad_vs_fd(f, x)


def test_expm1_is_accurate_near_zero():
    x = np.array([1e-8, -3e-5, 1e-3, 0.49, -0.51, 5.0], dtype=np.float32)
    np.testing.assert_allclose(fx.expm1(x).numpy(), np.expm1(x.astype(np.float64)), rtol=3e-7)
    grad_vs_fd(fx.expm1, np.array([1e-6, -0.3, 0.49999, 0.50001, 2.0, -4.0]))


def test_clamp_and_clip():
    np.testing.assert_array_equal(fx.clamp(S, -0.5, 0.5).numpy(), np.clip(S, -0.5, 0.5).astype(np.float32))
    np.testing.assert_array_equal(fx.clamp(S, None, 0.0).numpy(), np.minimum(S, 0).astype(np.float32))
    np.testing.assert_array_equal(fx.clip(S, 0.0).numpy(), np.maximum(S, 0).astype(np.float32))
    assert fx.clip(3.0, 0, 1) == 1.0
    grad_vs_fd(lambda t: fx.clamp(t, -0.5, 0.5), S)
    with pytest.raises(ValueError, match="fx.clamp: lo"):
        fx.clamp(S, 1, 0)
    with pytest.raises(TypeError, match="fx.clamp: hi must be a real number or None, got ndarray of shape"):
        fx.clamp(S, 0, np.ones(4))


@pytest.mark.parametrize("name,ref", [("maximum", np.maximum), ("minimum", np.minimum), ("pow", np.power)])
def test_binary_values_and_gradients(name, ref):
    f = getattr(fx, name)
    a, b = X, RNG.uniform(0.2, 1.5, (4,))  # broadcasting (3, 4) with (4,)
    np.testing.assert_allclose(f(f64(a), f64(b)).numpy(), ref(a, b), rtol=1e-12)
    np.testing.assert_allclose(f(f64(a), b).numpy(), ref(a, b), rtol=1e-12)   # array beside a tensor
    np.testing.assert_allclose(f(a, f64(b)).numpy(), ref(a, b), rtol=1e-12)
    np.testing.assert_allclose(f(f64(a), 0.7).numpy(), ref(a, 0.7), rtol=1e-12)  # a number beside a tensor
    np.testing.assert_allclose(f(0.7, f64(a)).numpy(), ref(0.7, a), rtol=1e-12)
    np.testing.assert_allclose(f(a.tolist(), b.tolist()).numpy(), ref(a, b), rtol=2e-6)
    assert f(2.0, 3.0) == float(ref(2.0, 3.0))
    grad_vs_fd(f, a, b + 0.05)  # no ties


def test_matmul():
    a, b, v = RNG.standard_normal((3, 4)), RNG.standard_normal((4, 2)), RNG.standard_normal(4)
    np.testing.assert_allclose(fx.matmul(f64(a), f64(b)).numpy(), a @ b, rtol=1e-12)
    np.testing.assert_allclose(fx.matmul(f64(a), v).numpy(), a @ v, rtol=1e-12)
    grad_vs_fd(fx.matmul, a, b)
    with pytest.raises(ValueError, match=r"fx.matmul: shapes \(3, 4\) and \(3, 4\) do not match"):
        fx.matmul(a, a)
    with pytest.raises(TypeError, match="fx.matmul: the arguments must be arrays, not scalars"):
        fx.matmul(a, 2.0)


@pytest.mark.parametrize("name,ref", [("sum", np.sum), ("mean", np.mean), ("max", np.max), ("min", np.min),
                                      ("prod", np.prod)])
@pytest.mark.parametrize("axis", [None, 0, 1, -1, (0, 1)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions(name, ref, axis, keepdims):
    f = getattr(fx, name)
    x = RNG.uniform(0.5, 1.5, (3, 5)) * np.sign(RNG.standard_normal((3, 5)))
    y = f(f64(x), axis, keepdims=keepdims)
    np.testing.assert_allclose(y.numpy(), ref(x, axis=axis, keepdims=keepdims), rtol=1e-12)
    grad_vs_fd(lambda t: f(t, axis=axis, keepdims=keepdims), x)


def test_prod_with_zeros_and_empty():
    x = np.array([[2.0, 0.0, 3.0], [0.0, 0.0, 5.0]])
    np.testing.assert_array_equal(fx.prod(f64(x), 1).numpy(), [0.0, 0.0])
    grad_vs_fd(lambda t: fx.prod(t, 1), x)  # d/dx of a product with one zero is not zero
    assert fx.prod(np.ones((0,), np.float32)).item() == 1.0
    assert fx.prod(fx.ones(2, 0), 1).tolist() == [1.0, 1.0]


def test_reduction_errors():
    with pytest.raises(TypeError, match="fx.max: axis must be an int or a tuple of ints, got Tensor .*fx.maximum"):
        fx.max(fx.ones(3), fx.ones(3))
    with pytest.raises(ValueError, match=r"fx.sum: axis 2 is out of range for a tensor of shape \(3, 4\)"):
        fx.sum(X, 2)


def test_transpose_and_reshape():
    x = RNG.standard_normal((2, 3, 4))
    np.testing.assert_array_equal(fx.transpose(f64(x)).numpy(), np.transpose(x))
    np.testing.assert_array_equal(fx.transpose(f64(x), (1, 0, 2)).numpy(), np.transpose(x, (1, 0, 2)))
    np.testing.assert_array_equal(fx.transpose(f64(x), 2, 0, 1).numpy(), np.transpose(x, (2, 0, 1)))
    np.testing.assert_array_equal(fx.reshape(f64(x), 6, 4).numpy(), x.reshape(6, 4))
    np.testing.assert_array_equal(fx.reshape(f64(x), (4, -1)).numpy(), x.reshape(4, -1))
    grad_vs_fd(lambda t: fx.transpose(t, (2, 0, 1)), x)
    grad_vs_fd(lambda t: fx.reshape(t, (4, 6)), x)
    with pytest.raises(ValueError, match=r"fx.transpose: axes \(0, 0, 1\) are not a permutation"):
        fx.transpose(x, 0, 0, 1)


def test_where_is_the_same_function():
    assert fx.ops.where is fx.where


def test_bad_arguments_name_the_function_and_type():
    for name in ["exp", "log", "sum", "transpose", "prod"]:
        with pytest.raises(TypeError, match=f"fx.{name}: x must be a tensor, an array or a real number, got str"):
            getattr(fx, name)("abc")
    with pytest.raises(TypeError, match="fx.sqrt: x must be .* got NoneType"):
        fx.sqrt(None)
    with pytest.raises(ValueError, match=r"fx.exp: x \(list\)"):
        fx.exp([[1.0, 2.0], [3.0]])  # ragged
    with pytest.raises(TypeError, match="fx.maximum: the second argument must be .* got str"):
        fx.maximum(fx.ones(2), "a")


def test_existing_names_keep_their_meaning():
    # activations and the like are not replaced by the functional namespace
    assert fx.sigmoid is fx.activations.sigmoid and fx.tanh is fx.activations.tanh
    assert fx.softmax is fx.activations.softmax
    assert fx.identity([1, 2]) == [1, 2]  # identity returns its argument, as Julia's

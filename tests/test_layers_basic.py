"""Dense, Chain and activations: values against numpy, gradients against central finite
differences (float64), indexing, naming and the Flux-style repr."""

import math

import numpy as np
import pytest

import fluxrs as fx
from gradcheck import finite_difference

ACTS = {
    "identity": lambda z: z,
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "relu": lambda z: np.maximum(z, 0),
    "tanh": np.tanh,
    "softplus": lambda z: np.log1p(np.exp(z)),
    "swish": lambda z: z / (1 + np.exp(-z)),
    "gelu": lambda z: 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3))),
    "elu": lambda z: np.where(z > 0, z, np.exp(z) - 1),
    "leakyrelu": lambda z: np.where(z > 0, z, 0.01 * z),
    "celu": lambda z: np.where(z > 0, z, np.exp(z) - 1),
    "selu": lambda z: 1.0507009873554805 * np.where(z > 0, z, 1.6732632423543772 * (np.exp(z) - 1)),
    "hardsigmoid": lambda z: np.clip((z + 3) / 6, 0, 1),
    "hardtanh": lambda z: np.clip(z, -1, 1),
    "relu6": lambda z: np.clip(z, 0, 6),
    "mish": lambda z: z * np.tanh(np.log1p(np.exp(z))),
    "tanhshrink": lambda z: z - np.tanh(z),
    "softsign": lambda z: z / (1 + np.abs(z)),
    "logsigmoid": lambda z: -np.log1p(np.exp(-z)),
    "lisht": lambda z: z * np.tanh(z),
    "hardswish": lambda z: z * np.clip((z + 3) / 6, 0, 1),
    # NNlib's definitions (src/activations.jl); hardshrink is PyTorch's
    "trelu": lambda z: np.where(z <= 1, 0.0, z),
    "softshrink": lambda z: np.where(z + 0.5 > 0, np.where(z - 0.5 < 0, 0.0, z - 0.5), z + 0.5),
    "hardshrink": lambda z: np.where(np.abs(z) > 0.5, z, 0.0),
    "logcosh": lambda z: np.log(np.cosh(z)),
}


def numpy_softmax(z, axis=-1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("name", sorted(ACTS))
def test_activation_values_match_numpy(name):
    z = np.linspace(-4, 4, 17)
    got = getattr(fx, name)(fx.tensor(z, dtype="float64")).numpy()
    np.testing.assert_allclose(got, ACTS[name](z), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", sorted(ACTS))
def test_activation_gradients_match_finite_differences(name):
    # away from kinks, where the derivative is defined
    z = np.array([-2.7, -1.3, -0.4, 0.35, 1.1, 2.45, 4.2])
    g = fx.gradient(lambda x: getattr(fx, name)(x).sum(), fx.tensor(z, dtype="float64"))[0].numpy()
    h = 1e-6
    fd = (ACTS[name](z + h) - ACTS[name](z - h)) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7)


def test_activations_accept_arraylikes_and_numbers():
    assert fx.relu([-1.0, 2.0]).tolist() == [0.0, 2.0]
    assert isinstance(fx.sigmoid(0.0), float) and fx.σ(0.0) == 0.5
    assert fx.σ is fx.sigmoid
    assert fx.leakyrelu(-1.0, 0.2) == pytest.approx(-0.2)
    np.testing.assert_allclose(fx.softmax(np.array([[1.0, 2.0], [3.0, 3.0]])).numpy(),
                               numpy_softmax(np.array([[1.0, 2.0], [3.0, 3.0]])), rtol=1e-6)
    # softmax over another axis, by Flux's keyword or numpy's
    a = np.random.default_rng(0).normal(size=(3, 4))
    np.testing.assert_allclose(fx.softmax(fx.tensor(a), dims=0).numpy(), numpy_softmax(a, 0), rtol=1e-5)
    np.testing.assert_allclose(fx.logsoftmax(fx.tensor(a), axis=0).numpy(), np.log(numpy_softmax(a, 0)), rtol=1e-5)


def test_shrink_and_threshold_parameters():
    z = np.linspace(-3, 3, 13)
    np.testing.assert_allclose(fx.trelu(fx.tensor(z, dtype="float64"), 2.0).numpy(), np.where(z <= 2, 0, z))
    np.testing.assert_allclose(fx.softshrink(fx.tensor(z, dtype="float64"), 1.5).numpy(),
                               np.sign(z) * np.maximum(np.abs(z) - 1.5, 0))
    np.testing.assert_allclose(fx.hardshrink(fx.tensor(z, dtype="float64"), 1.0).numpy(),
                               np.where(np.abs(z) > 1, z, 0))
    assert fx.softshrink(-10.0) == -9.5 and fx.softshrink(10.0) == 9.5  # NNlib's docstring
    assert fx.logcosh(800.0) == pytest.approx(800 - math.log(2))  # stable where cosh overflows
    with pytest.raises(ValueError, match="λ must be non-negative"):
        fx.softshrink([1.0], -0.5)
    with pytest.raises(TypeError, match="theta"):
        fx.trelu([1.0], "1")


# NNlib: test/activations.jl, "rrelu": slopes drawn from U(lo, hi)
def test_rrelu_random_slopes_in_training_and_mean_slope_in_test():
    x = fx.tensor(np.full(2000, -10.0), dtype="float64")
    y = fx.rrelu(x).numpy()
    np.testing.assert_allclose(y, -10 * (1 / 8 + 1 / 3) / 2)  # outside gradient: the mean slope
    assert fx.rrelu([-4.0, 3.0], 0.25, 0.75).tolist() == [-2.0, 3.0]
    fx.seed_(3)
    ya = fx.rrelu(x, active=True).numpy()
    assert -10 / 3 <= ya.min() and ya.max() <= -10 / 8 and ya.std() > 0.1
    assert abs(ya.mean() - y[0]) < 0.05
    fx.seed_(3)
    np.testing.assert_array_equal(fx.rrelu(x, active=True).numpy(), ya)  # reproducible with fx.seed_
    # inside gradient: random, and the gradient is each element's own slope (1 for x > 0)
    z = fx.tensor(np.r_[np.linspace(-5, -0.5, 50), np.linspace(0.5, 5, 50)], dtype="float64")
    seen = {}

    def loss(z):
        out = fx.rrelu(z, 0.1, 0.6)
        seen["y"] = out.numpy().copy()
        return out.sum()

    g = fx.gradient(loss, z)[0].numpy()
    slope = seen["y"] / z.numpy()
    assert len(np.unique(slope[:50])) > 10 and np.all((0.1 <= slope[:50]) & (slope[:50] <= 0.6))
    np.testing.assert_allclose(g, slope)
    assert fx.gradient(lambda z: fx.rrelu(z, active=False).sum(), z)[0].numpy()[0] == pytest.approx(11 / 48)
    with pytest.raises(ValueError, match="lo <= hi"):
        fx.rrelu(x, 0.5, 0.1)


def test_elu_like_gradients_stay_finite_for_large_inputs():
    x = fx.tensor([100.0, 500.0, -3.0])
    for f in (fx.celu, fx.selu):
        g = fx.gradient(lambda x: f(x).sum(), x)[0].numpy()
        assert np.all(np.isfinite(g)), f.__name__


# ---------------------------------------------------------------- Dense

def test_softmax_of_infinite_logits():
    # NNlib test/softmax.jl: the +Inf entries share the mass, and the other entries get none
    inf = np.inf
    assert fx.softmax(fx.tensor([2.0, inf])).tolist() == [0.0, 1.0]
    assert fx.softmax(fx.tensor([inf, inf])).tolist() == [0.5, 0.5]
    assert fx.softmax(fx.tensor([[inf, 2.0, inf], [1.0, 1.0, 1.0]])).numpy()[0].tolist() == [0.5, 0.0, 0.5]
    assert fx.logsoftmax(fx.tensor([2.0, inf])).tolist() == [-inf, 0.0]
    np.testing.assert_allclose(fx.logsoftmax(fx.tensor([inf, inf])).numpy(), [-np.log(2)] * 2, rtol=1e-6)
    assert np.isnan(fx.softmax(fx.tensor([np.nan, inf])).numpy()).all()  # NaN still wins, as without +Inf
    # -Inf entries (a mask) stay finite elsewhere, forward and backward
    x = fx.tensor([[1.0, -inf, 2.0]])
    np.testing.assert_allclose(fx.softmax(x).numpy(), [numpy_softmax(np.array([1.0, 2.0])).tolist()[:1] + [0.0] +
                                                       numpy_softmax(np.array([1.0, 2.0])).tolist()[1:]], rtol=1e-6)
    g = fx.gradient(lambda x: (fx.softmax(x) * fx.tensor([[1.0, 2.0, 3.0]])).sum(), x)[0].numpy()
    assert np.isfinite(g).all() and g[0, 1] == 0.0


def test_dense_shapes_and_default_init():
    fx.seed_(1)
    d = fx.Dense(784, 32, fx.σ)
    assert d.weight.shape == (32, 784) and d.bias.shape == (32,)
    assert d.weight.dtype == np.float32 and d.bias.tolist() == [0.0] * 32
    bound = math.sqrt(6 / (784 + 32))  # Glorot uniform, as Flux
    w = d.weight.numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert abs(w.mean()) < 0.01 * bound * 10
    assert d.σ is fx.sigmoid


@pytest.mark.parametrize("act", ["identity", "sigmoid", "relu", "tanh", "gelu"])
def test_dense_output_matches_numpy(act):
    fx.seed_(2)
    d = fx.Dense(5, 3, getattr(fx, act))
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    W, b = d.weight.numpy(), d.bias.numpy()
    d.bias.assign_(fx.tensor([0.1, -0.2, 0.3]))
    b = d.bias.numpy()
    want = ACTS[act](x @ W.T + b)
    np.testing.assert_allclose(d(x).numpy(), want, rtol=1e-5, atol=1e-6)
    # one unbatched vector
    np.testing.assert_allclose(d(x[0]).numpy(), want[0], rtol=1e-5, atol=1e-6)
    assert d(x[0]).shape == (3,)


def test_dense_constructor_forms():
    assert repr(fx.Dense((784, 32))) == "Dense(784 => 32)  # 25_120 parameters"
    assert repr(fx.Dense((784, 32), fx.σ)) == "Dense(784 => 32, σ)  # 25_120 parameters"
    assert repr(fx.Dense(784, 32, fx.σ)) == "Dense(784 => 32, σ)  # 25_120 parameters"
    d = fx.Dense(3, 2, bias=False)
    assert d.bias is None and repr(d) == "Dense(3 => 2, bias=False)  # 6 parameters"
    assert d(fx.ones(3)).shape == (2,)
    d = fx.Dense(np.ones((2, 3)))  # Flux's Dense(ones(2, 3)): weight given, Float64 kept
    assert d.weight.shape == (2, 3) and d.weight.dtype == np.float64 and d.bias.tolist() == [0.0, 0.0]
    d = fx.Dense(fx.ones(2, 3), [1.0, 2.0], fx.relu)
    assert d.bias.tolist() == [1.0, 2.0] and d.act is fx.relu
    d = fx.Dense(3, 2, init=fx.zeros32)
    assert d.weight.tolist() == [[0.0] * 3] * 2
    with pytest.raises(ValueError, match="bias must have shape"):
        fx.Dense(3, 2, bias=[1.0])
    with pytest.raises(TypeError, match="out must be an integer"):
        fx.Dense(3)
    with pytest.raises(TypeError, match="callable"):
        fx.Dense(3, 2, "relu")


def test_dense_wrong_input_size_names_the_layer():
    d = fx.Dense(784, 32)
    with pytest.raises(ValueError) as e:
        d(np.zeros((32, 28, 28), dtype=np.float32))
    msg = str(e.value)
    assert "Dense(784 => 32) expects input with 784 features on axis -1, got (32, 28, 28)" in msg
    assert "reshape(32, 784)" in msg
    with pytest.raises(ValueError, match="expects input with 784 features"):
        d(fx.ones(10))


def test_dense_converts_float64_numpy_once_with_a_warning():
    import fluxrs.layers.basic as basic
    basic._warned_f64 = False
    d = fx.Dense(4, 2)
    with pytest.warns(UserWarning, match="float64 input converted to float32"):
        y = d(np.ones(4))
    assert y.dtype == np.float32
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d(np.ones(4))  # no second warning
        d([1.0, 2.0, 3.0, 4.0])


def test_float64_warnings_point_at_the_callers_line(monkeypatch):
    import warnings
    import fluxrs.layers.basic as basic
    import sys
    tensor_module = sys.modules["fluxrs.tensor"]  # fx.tensor is the function
    monkeypatch.setattr(basic, "_warned_f64", False)
    monkeypatch.setattr(tensor_module, "_warned_f64", False)
    model = fx.Chain(fx.Chain(fx.Dense(3, 2)))  # the layer that converts is two Chains deep
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        model(np.ones((4, 3)))
        fx.tensor(np.ones(3))
        fx.MaxPool((2,))(np.ones((1, 1, 4)))  # converted on its way into a layer without parameters
    layer_warning, *tensor_warnings = seen
    assert "float64 input converted" in str(layer_warning.message)
    assert [w.filename for w in seen] == [__file__] * 2
    assert [w.lineno for w in seen] == [layer_warning.lineno, layer_warning.lineno + 1]
    assert len(tensor_warnings) == 1  # shown once


# One constructor call per layer taking sizes, with a size given as a float: (call, the float)
FLOAT_SIZES = {
    "Dense": (lambda: fx.Dense(64.0, 10), "64.0"),
    "Dense-pair": (lambda: fx.Dense((64, 10.0)), "10.0"),
    "Dense-out": (lambda: fx.Dense(64, 10.0), "10.0"),
    "Bilinear": (lambda: fx.Bilinear((5, 3.0), 2), "3.0"),
    "Embedding": (lambda: fx.Embedding(10.0, 4), "10.0"),
    "Scale": (lambda: fx.Scale(3.0), "3.0"),
    "Conv": (lambda: fx.Conv((3, 3), (1.0, 6)), "1.0"),
    "Conv-split": (lambda: fx.Conv((3, 3), 1, 6.0), "6.0"),
    "ConvTranspose": (lambda: fx.ConvTranspose((2, 2), (4.0, 2)), "4.0"),
    "DepthwiseConv": (lambda: fx.DepthwiseConv((3, 3), (2, 4.0)), "4.0"),
    "RNN": (lambda: fx.RNN(3.0, 4), "3.0"),
    "LSTM": (lambda: fx.LSTM((3, 4.0)), "4.0"),
    "GRUCell": (lambda: fx.GRUCell(3, 4.5), "4.5"),
    "BatchNorm": (lambda: fx.BatchNorm(16.0), "16.0"),
    "InstanceNorm": (lambda: fx.InstanceNorm(16.0), "16.0"),
    "GroupNorm": (lambda: fx.GroupNorm(16, 4.0), "4.0"),
    "LayerNorm": (lambda: fx.LayerNorm(8.0), "8.0"),
    "MultiHeadAttention": (lambda: fx.MultiHeadAttention(16.0), "16.0"),
}


@pytest.mark.parametrize("name", sorted(FLOAT_SIZES))
def test_sizes_must_be_ints_for_every_layer(name):
    make, value = FLOAT_SIZES[name]
    with pytest.raises(TypeError) as e:
        make()
    msg = str(e.value)
    assert "must be an integer (sizes are ints)" in msg and f"got {value}" in msg, msg
    if float(value).is_integer():
        assert f"write {int(float(value))}" in msg, msg  # the fix


def test_dense_and_chain_gradients_match_finite_differences():
    fx.seed_(3)
    m = fx.f64(fx.Chain(fx.Dense(4, 5, fx.tanh), fx.Dense(5, 3, fx.σ), fx.Dense(3, 2), fx.softmax))
    assert m[0].weight.dtype == np.float64
    x = fx.tensor(np.random.default_rng(1).normal(size=(6, 4)), dtype="float64")
    y = fx.tensor(np.random.default_rng(2).random((6, 2)), dtype="float64")

    def loss(m):
        return ((m(x) - y) ** 2).sum()

    g = fx.gradient(loss, m)[0]
    ps = [m[0].weight, m[0].bias, m[1].weight, m[1].bias, m[2].weight, m[2].bias]
    gs = [g.layers[0].weight, g.layers[0].bias, g.layers[1].weight, g.layers[1].bias, g.layers[2].weight,
          g.layers[2].bias]
    fds = finite_difference(lambda: loss(m), ps)
    for got, fd in zip(gs, fds):
        np.testing.assert_allclose(got.numpy(), fd, rtol=1e-6, atol=1e-8)
    assert g.layers[3] is None  # softmax has nothing to differentiate


def test_dense_gradient_wrt_single_vector_input():
    m = fx.f64(fx.Dense(3, 2, fx.relu))
    m.bias.assign_(fx.tensor([0.5, 0.5], dtype="float64"))
    x = fx.tensor([0.3, -0.2, 0.9], dtype="float64")
    gx = fx.gradient(lambda x: m(x).sum(), x)[0]
    W = m.weight.numpy()
    active = (W @ x.numpy() + 0.5) > 0
    np.testing.assert_allclose(gx.numpy(), (W * active[:, None]).sum(0), rtol=1e-12)


# ---------------------------------------------------------------- Chain

def test_chain_indexing_slicing_iteration():
    a, b, c = fx.Dense(4, 3), fx.Dense(3, 2), fx.softmax
    m = fx.Chain(a, b, c)
    assert m[0] is a and m[-1] is c and len(m) == 3 and list(m) == [a, b, c]
    head = m[0:2]
    assert isinstance(head, fx.Chain) and head[0] is a and head[1] is b
    x = fx.rand(5, 4)
    np.testing.assert_allclose(m(x).numpy(), fx.softmax(head(x)).numpy(), rtol=1e-6)
    # slices share parameters with the whole
    assert fx.params(head)[0] is a.weight
    with pytest.raises(KeyError, match="not named"):
        m["enc"]


def test_named_chain():
    m = fx.Chain(enc=fx.Dense(4, 2, fx.relu), dec=fx.Dense(2, 4))
    assert m["enc"] is m[0] and m["dec"] is m[1]
    assert repr(m) == "Chain(enc=Dense(4 => 2, relu), dec=Dense(2 => 4))  # 22 parameters"
    sub = m[1:]
    assert isinstance(sub, fx.Chain) and list(sub.layers) == ["dec"]
    g = fx.gradient(lambda m: m(fx.ones(4)).sum(), m)[0]
    assert g.layers["enc"].weight.shape == (2, 4)
    with pytest.raises(KeyError, match="no layer named 'middle'"):
        m["middle"]
    with pytest.raises(TypeError, match="not both"):
        fx.Chain(fx.relu, enc=fx.relu)


def test_chain_repr_param_counts():
    m = fx.Chain(fx.Dense(784, 32, fx.σ), fx.Dense(32, 10), fx.softmax)
    assert repr(m) == "Chain(Dense(784 => 32, σ), Dense(32 => 10), softmax)  # 25_450 parameters"
    assert sum(p.size for p in fx.params(m)) == 25_450
    nested = fx.Chain(fx.Chain(fx.Dense(2, 2), fx.relu), fx.Dense(2, 1))
    assert repr(nested) == "Chain(Chain(Dense(2 => 2), relu), Dense(2 => 1))  # 9 parameters"
    assert repr(fx.Chain(fx.relu)) == "Chain(relu)"


def test_wide_models_print_as_a_tree_with_a_count_per_layer():
    from fluxrs.functor import WIDTH, param_count
    small = fx.Chain(fx.Dense(2, 3), fx.relu)
    assert "\n" not in repr(small)
    inner = fx.Chain(*[fx.Dense(10, 10, fx.relu) for _ in range(8)])
    m = fx.Chain(fx.Dense(4, 10), inner, fx.BatchNorm(10), fx.softmax)
    lines = repr(m).splitlines()
    assert len(lines) > 1 and all(len(line) <= WIDTH for line in lines[:-1])
    assert lines[0] == "Chain(" and lines[-1].startswith(")  # Total:")
    assert lines[-1].endswith(f", {param_count(m)[0]:_} parameters, plus {param_count(m)[1]:_} non-trainable")
    # inner is too wide for one line too, so it opens one level deeper
    assert lines[2] == "  Chain(" and lines[3].startswith("    Dense(10 => 10, relu),")
    dense_lines = [line for line in lines if "Dense(" in line]
    assert len(dense_lines) == 9
    for line, layer in zip(dense_lines, [m[0], *inner]):
        assert line.rstrip().endswith(f"# {param_count(layer)[0]:_} parameters")
    assert any(line.strip() == "softmax," for line in lines)


def test_custom_layers_print_by_class_name_and_children():
    class Affine(fx.Layer):
        def __init__(self, n):
            self.scale, self.shift, self.n = fx.ones(n), fx.zeros(n, dtype="float64"), n

        def __call__(self, x):
            return x * self.scale + self.shift

    @fx.layer
    class Block:
        def __init__(self):
            self.inner = fx.Dense(2, 2)

        def __call__(self, x):
            return self.inner(x)

    class Printed(fx.Layer):
        def __repr__(self):
            return "Printed!"

        def __call__(self, x):
            return x

    a = Affine(3)
    assert repr(a) == "Affine(scale=Tensor(shape=(3,)), shift=Tensor(shape=(3,), dtype=float64), n=3)  # 6 parameters"
    assert repr(fx.Chain(Block(), Printed())) == "Chain(Block(inner=Dense(2 => 2)), Printed!)  # 6 parameters"
    a.parent = fx.Chain(a)  # a cycle prints, shortened
    assert "Affine(" in repr(a) and "..." in repr(a)


def test_chain_vector_form_and_non_callable_layer():
    m = fx.Chain([fx.Dense(2, 2), fx.relu])
    assert isinstance(m.layers, list) and len(m) == 2
    assert repr(m).startswith("Chain([Dense(2 => 2), relu])")
    with pytest.raises(TypeError, match="layer 1 is not callable"):
        fx.Chain(fx.relu, 3)


def test_fmap_over_chain_returns_new_model():
    m = fx.Chain(fx.Dense(2, 2), fx.Dense(2, 1))
    g = fx.gradient(lambda m: m(fx.ones(2)).sum(), m)[0]
    m2 = fx.fmap(lambda p, g: p - 0.01 * g, m, g)
    assert isinstance(m2, fx.Chain) and m2[1] is not m[1]
    np.testing.assert_allclose(m2[1].bias.numpy(), m[1].bias.numpy() - 0.01, rtol=1e-6)


def test_initialisers():
    fx.seed_(0)
    for init, dims in [(fx.glorot_uniform, (100, 50)), (fx.glorot_normal, (100, 50)),
                       (fx.kaiming_uniform, (100, 50)), (fx.kaiming_normal, (100, 50))]:
        w = init(*dims)
        assert w.shape == dims and w.dtype == np.float32
    assert np.std(fx.glorot_normal(200, 300).numpy()) == pytest.approx(math.sqrt(2 / 500), rel=0.05)
    assert np.std(fx.kaiming_normal(200, 300).numpy()) == pytest.approx(math.sqrt(2 / 300), rel=0.05)
    assert np.abs(fx.kaiming_uniform(200, 300).numpy()).max() <= math.sqrt(2) * math.sqrt(3 / 300)
    assert fx.glorot_uniform(3, 4, dtype="float64").dtype == np.float64
    fx.seed_(5); a = fx.glorot_uniform(3, 3).tolist()
    fx.seed_(5); b = fx.glorot_uniform(3, 3).tolist()
    assert a == b
    assert fx.ones32(2).tolist() == [1.0, 1.0] and fx.layers.init.zeros(2, 2).shape == (2, 2)


# Flux: test/utils.jl, "orthogonal"
def test_orthogonal():
    fx.seed_(1)
    for rows, cols in [(5, 3), (3, 5)]:
        v = fx.orthogonal(rows, cols).numpy().astype(np.float64)
        if rows < cols:
            np.testing.assert_allclose(v @ v.T, np.eye(rows), atol=1e-5)
        else:
            np.testing.assert_allclose(v.T @ v, np.eye(cols), atol=1e-5)
    # more dimensions: the matrix (dims[0], prod(dims[1:])), Flux's with the axes reversed
    for dims in [(5, 4, 3), (5, 2, 2)]:
        v = fx.orthogonal(*dims).numpy().astype(np.float64).reshape(dims[0], -1)
        rows, cols = v.shape
        if rows < cols:
            np.testing.assert_allclose(v @ v.T, np.eye(rows), atol=1e-5)
        else:
            np.testing.assert_allclose(v.T @ v, np.eye(cols), atol=1e-5)
    w = fx.orthogonal(3, 4, gain=1.5)
    assert w.dtype == np.float32
    np.testing.assert_allclose(w.numpy() @ w.numpy().T, 2.25 * np.eye(3), atol=1e-5)
    # the sign fix makes the distribution uniform: no systematic sign on the diagonal
    diag = np.array([np.diag(fx.orthogonal(4, 4).numpy()) for _ in range(200)])
    assert abs((diag > 0).mean() - 0.5) < 0.1
    assert np.linalg.norm(fx.orthogonal(3, gain=2).numpy()) == pytest.approx(2)  # a vector: as Flux's 1×n matrix
    with pytest.raises(ValueError, match="at least 1 dimension"):
        fx.orthogonal(())


# Flux: test/utils.jl, "sparse_init"
def test_sparse_init():
    fx.seed_(2)
    with pytest.raises(ValueError, match="only matrices"):
        fx.sparse_init(100, 100, 100, sparsity=0.1)
    v = fx.sparse_init(100, 100, sparsity=-0.1).numpy()
    assert (v == 0).sum() == 0 and v.dtype == np.float32
    v = fx.sparse_init(100, 100, sparsity=1.1).numpy()
    assert (v == 0).sum() == v.size
    for n_in, n_out, sparsity, std in [(100, 100, 0.25, 0.1), (100, 400, 0.75, 0.01)]:
        expected_zeros = math.ceil(n_in * sparsity)
        v = fx.sparse_init(n_in, n_out, sparsity=sparsity, std=std).numpy()
        assert ((v == 0).sum(axis=0) == expected_zeros).all()
        assert 0.9 * std < v[v != 0].std() < 1.1 * std
    # the zeros are at random places, not the first rows
    v = fx.sparse_init(50, 50, sparsity=0.5).numpy()
    assert 0 < (v[:25] == 0).mean() < 1


# Flux: test/utils.jl, "truncated_normal"
def test_truncated_normal():
    fx.seed_(3)
    m = fx.truncated_normal(100, 100).numpy()
    assert m.min() == pytest.approx(-2, abs=0.05) and m.max() == pytest.approx(2, abs=0.05)
    assert m.mean() == pytest.approx(0, abs=0.1)
    size = (100, 100, 100)
    for mu, sigma, lo, hi in [(0.0, 1, -2, 3), (1, 2, -4.0, 5.0)]:
        v = fx.truncated_normal(size, mean=mu, std=sigma, lo=lo, hi=hi).numpy()
        assert v.mean() == pytest.approx(mu, abs=0.1)
        assert v.min() == pytest.approx(lo, abs=1e-2) and v.max() == pytest.approx(hi, abs=1e-2)
        assert lo <= v.min() and v.max() <= hi
        assert v.dtype == np.float32
    for mu, sigma, lo, hi in [(6, 2, -100.0, 100), (-7.0, 10, -100, 100)]:
        v = fx.truncated_normal(*size, mean=mu, std=sigma, lo=lo, hi=hi).numpy()
        assert v.mean() == pytest.approx(mu, abs=0.1) and v.std() == pytest.approx(sigma, abs=0.1)
    # the standard normal truncated to [0, ∞): mean √(2/π)
    v = fx.truncated_normal(10**6, lo=0.0, hi=50.0).numpy()
    assert v.mean() == pytest.approx(math.sqrt(2 / math.pi), abs=5e-3)
    with pytest.warns(UserWarning, match="more than 2 std outside"):
        fx.truncated_normal(10, mean=5.0, lo=-1.0, hi=1.0)
    with pytest.raises(ValueError, match="lo < hi"):
        fx.truncated_normal(3, lo=1.0, hi=-1.0)


def test_lecun_normal():
    fx.seed_(4)
    w = fx.lecun_normal(300, 500).numpy()
    assert w.std() == pytest.approx(1 / math.sqrt(500), rel=0.03)
    assert np.abs(w).max() <= 2 / math.sqrt(500) / 0.87962566103423978 + 1e-7  # truncated at 2σ
    w = fx.lecun_normal(64, 8, 3, 3, gain=2.0).numpy()  # a conv weight: fan_in = 8·3·3
    assert w.shape == (64, 8, 3, 3) and w.std() == pytest.approx(2 / math.sqrt(72), rel=0.05)


# Flux: test/utils.jl, "identity_init"
def test_identity_init():
    assert fx.identity_init(3).tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_array_equal(fx.identity_init(3, 5).numpy(), np.eye(3, 5))
    np.testing.assert_array_equal(fx.identity_init(5, 3, gain=2).numpy(), 2 * np.eye(5, 3))
    m = fx.Dense(5, 3, fx.relu, init=fx.identity_init)
    assert m(fx.tensor([1.0, -2.0, 3.0, -4.0, 5.0])).tolist() == [1.0, 0.0, 3.0]
    w = fx.identity_init(2, 2, 3, gain=1.5).numpy()  # Flux's identity_init(3, 2, 2) reversed
    want = np.zeros((2, 2, 3))
    want[0, 0, 1] = want[1, 1, 1] = 1.5
    np.testing.assert_array_equal(w, want)
    # an identity convolution, with odd kernels and SamePad, in 1, 2 and 3 spatial dimensions
    rng = np.random.default_rng(0)
    for k in [(3,), (5, 3), (3, 3, 1)]:
        c = fx.Conv(k, 4, 4, pad=fx.SamePad(), init=fx.identity_init)
        x = rng.normal(size=(2, 4) + (6,) * len(k)).astype(np.float32)
        np.testing.assert_allclose(c(x).numpy(), x, atol=1e-6)
    assert fx.identity_init(3, 3, shift=1).tolist() == np.roll(np.eye(3), 1, axis=0).tolist()
    assert fx.identity_init(3, 3, dtype="float64").dtype == np.float64


def test_f32_f64_roundtrip():
    m = fx.Dense(2, 3)
    m64 = fx.f64(m)
    assert m64.weight.dtype == np.float64 and m.weight.dtype == np.float32
    assert fx.f32(m64).weight.dtype == np.float32
    np.testing.assert_allclose(m64.weight.numpy(), m.weight.numpy())


@pytest.mark.parametrize("act", ["identity", "relu", "sigmoid", "tanh"])
def test_fused_and_composed_dense_agree(act):
    fx.seed_(4)
    m = fx.f64(fx.Dense(6, 3, getattr(fx, act)))
    m.bias.assign_(fx.tensor([0.1, -0.2, 0.3], dtype="float64"))
    x = fx.tensor(np.random.default_rng(4).normal(size=(5, 6)), dtype="float64")
    y1, g1 = fx.withgradient(lambda m, x: (m(x) ** 2).sum(), m, x)
    composed = lambda m, x: (getattr(fx, act)(x @ m.weight.T + m.bias) ** 2).sum()  # act(x @ W.T + b) in ops
    y2, g2 = fx.withgradient(composed, m, x)
    assert y1 == pytest.approx(y2, rel=1e-12)
    for a, b in [(g1[0].weight, g2[0].weight), (g1[0].bias, g2[0].bias), (g1[1], g2[1])]:
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-12)

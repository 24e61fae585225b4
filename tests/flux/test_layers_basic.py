"""Flux.jl's test/layers/basic.jl, translated to fluxrs: batch-first (Flux's (features, batch)
is (batch, features) here, a weight keeps Flux's (out, in)), 0-based indices, float32.
Each test names its upstream testset; upstream expectations keep their values."""

import operator

import numpy as np
import pytest

import fluxrs as fx


def randn32(*shape):
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


# basic.jl, testset "helpers" / "activations"
def test_helpers_activations():
    dummy_model = fx.Chain(lambda x: x ** 2, lambda x: x - 3, lambda x: fx.tan(x))
    x = fx.tensor(randn32(10))
    acts = fx.activations(dummy_model, x)
    np.testing.assert_array_equal(acts[0].numpy(), (x ** 2).numpy())
    np.testing.assert_array_equal(acts[1].numpy(), (x ** 2 - 3).numpy())
    np.testing.assert_allclose(acts[2].numpy(), np.tan(x.numpy() ** 2 - 3), rtol=1e-5)
    assert fx.activations(fx.Chain(), x) == ()
    assert fx.activations(fx.Chain(fx.identity, lambda x: "foo"), x)[1] == "foo"  # results of any type


# basic.jl, testset "Chain"
def test_chain():
    fx.Chain(fx.Dense(10, 5, fx.σ), fx.Dense(5, 2))(randn32(10))
    with pytest.raises(ValueError):  # Flux: DimensionMismatch
        fx.Chain(fx.Dense(10, 5, fx.σ), fx.Dense(2, 1))(randn32(10))

    fx.Chain(first=fx.Dense(10, 5, fx.σ), second=fx.Dense(5, 2))(randn32(10))
    m = fx.Chain(first=fx.Dense(10, 5, fx.σ), second=fx.Dense(5, 2))
    assert m["first"] is m[0]
    assert m[0:2].layers == m.layers
    assert fx.fmap(lambda x: x, m).layers.keys() == m.layers.keys()  # does not forget names

    with pytest.raises(ValueError):  # Flux: ArgumentError, reserved name
        fx.Chain(layers=fx.Dense(10, 10), two=fx.identity)

    fx.Chain([fx.Dense(10, 5, fx.σ), fx.Dense(5, 2)])(randn32(10))  # vector of layers

    c = fx.Chain(fx.Dense(10, 5, fx.σ), fx.Dense(5, 2), fx.Dense(2, 1, fx.relu))
    assert c[0] is c[0]  # Flux: c[1] == c[begin]
    assert c[2] is c[-1]  # Flux: c[3] == c[end]


# basic.jl, testset "Chain" (several arguments reach the first layer as a tuple; Flux's
# src/layers/basic.jl: (c::Chain)(x, ys...) = _applychain(c.layers, (x, ys...)))
def test_chain_several_arguments():
    assert fx.Chain(fx.identity)(1, 2, 3) == (1, 2, 3)
    assert fx.Chain(lambda t: t[0] - t[1], lambda d: 10 * d)(5, 3) == 20
    assert fx.Chain()(1, 2) == (1, 2)


# basic.jl, testset "Activations"
def test_activations():
    c = fx.Chain(fx.Dense(3, 5, fx.relu), fx.Dense(5, 1, fx.relu))
    X = np.array([1.0, 1.0, 1.0], dtype=np.float32)
    fx.gradient(lambda: fx.activations(c, X)[1][0], fx.params(c))

    c2 = fx.Chain(enc=c[0], dec=c[1])
    for a, b in zip(fx.activations(c, X), fx.activations(c2, X)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    fx.gradient(lambda: fx.activations(c2, X)[1][0], fx.params(c2))


# basic.jl, testset "Dense" / "constructors"
def test_dense_constructors():
    assert fx.Dense(10, 100).weight.shape == (100, 10)
    assert fx.Dense(10, 100).bias.shape == (100,)
    assert fx.Dense(np.random.rand(100, 10), np.random.rand(100)).σ is fx.identity
    assert fx.Dense(np.random.rand(100, 10)).σ is fx.identity

    assert fx.Dense(np.random.rand(100, 10), False).σ is fx.identity
    assert fx.Dense(np.random.rand(100, 10), False, fx.tanh).σ is fx.tanh
    assert fx.Dense(np.random.rand(100, 10), np.random.rand(100)).σ is fx.identity
    # Float16 eltypes: fluxrs has float32 and float64 only; the bias follows the weight's dtype
    assert fx.Dense(np.random.rand(100, 10), True).bias.dtype == np.float64
    assert fx.Dense(np.random.rand(100, 10), np.random.rand(100).astype(np.float32)).bias.dtype == np.float64

    assert fx.Dense(3, 4, init=lambda *d: fx.randn(*d, dtype="float64"), bias=True).bias.dtype == np.float64
    assert fx.Dense(3, 4, init=lambda *d: fx.randn(*d, dtype="float64"), bias=[1, 2, 3, 4]).bias.dtype == np.float64

    with pytest.raises(TypeError):  # Flux: MethodError
        fx.Dense(10, 10.5)
    with pytest.raises(TypeError):
        fx.Dense(10, 10.5, fx.tanh)
    with pytest.raises(ValueError):  # Flux: DimensionMismatch
        fx.Dense(3, 4, bias=np.random.rand(5))
    with pytest.raises(ValueError):
        fx.Dense(np.random.rand(4, 3), np.random.rand(5))
    with pytest.raises((TypeError, ValueError)):  # Flux: MethodError (a vector is no weight)
        fx.Dense(np.random.rand(5))
    with pytest.raises((TypeError, ValueError)):
        fx.Dense(np.random.rand(5), np.random.rand(5))
    with pytest.raises((TypeError, ValueError)):
        fx.Dense(np.random.rand(5), np.random.rand(5), fx.tanh)


# basic.jl, testset "Dense" / "dimensions"
def test_dense_dimensions():
    assert len(fx.Dense((10, 5))(randn32(10))) == 5
    with pytest.raises(ValueError):  # Flux: DimensionMismatch
        fx.Dense((10, 5))(randn32(1))
    with pytest.raises(ValueError):  # Flux: MethodError, avoid broadcasting
        fx.Dense((10, 5))(1)
    assert fx.Dense(10, 5)(randn32(10)).shape == (5,)
    assert fx.Dense(10, 5)(randn32(2, 10)).shape == (2, 5)
    assert fx.Dense(10, 5)(randn32(3, 2, 10)).shape == (3, 2, 5)
    assert fx.Dense(10, 5)(randn32(4, 3, 2, 10)).shape == (4, 3, 2, 5)
    with pytest.raises(ValueError):
        fx.Dense(10, 5)(randn32(3, 2, 11))


# basic.jl, testset "Dense" / "zeros"
def test_dense_zeros():
    ones = fx.ones32
    np.testing.assert_array_equal(fx.Dense(10, 1, fx.identity, init=ones)(np.ones((1, 10), np.float32)).numpy(),
                                  10 * np.ones((1, 1)))
    np.testing.assert_array_equal(fx.Dense(10, 1, fx.identity, init=ones)(np.ones((2, 10), np.float32)).numpy(),
                                  10 * np.ones((2, 1)))
    np.testing.assert_array_equal(fx.Dense(10, 2, fx.identity, init=ones)(np.ones((1, 10), np.float32)).numpy(),
                                  10 * np.ones((1, 2)))
    x = np.stack([np.ones(10), 2 * np.ones(10)]).astype(np.float32)  # Flux: [ones(10,1) 2*ones(10,1)]
    np.testing.assert_array_equal(fx.Dense(10, 2, fx.identity, init=ones)(x).numpy(), [[10, 10], [20, 20]])
    np.testing.assert_array_equal(fx.Dense(10, 2, fx.identity, init=ones, bias=False)(x).numpy(),
                                  [[10, 10], [20, 20]])


# basic.jl, testset "Dense" / "type matching"
def test_dense_type_matching():
    d1 = fx.Dense((2, 3))
    d2 = fx.Dense(d1.weight, False)
    W = d1.weight.numpy()
    x1 = randn32(4, 2)
    np.testing.assert_allclose(d1(x1).numpy(), d2(x1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(d1(x1).numpy(), x1 @ W.T, rtol=1e-5, atol=1e-6)
    x2 = x1.astype(np.float64)
    y2 = d1(x2)  # warns once per process, as Flux does
    np.testing.assert_allclose(y2.numpy(), x2 @ W.T, rtol=1e-5, atol=1e-6)
    assert y2.dtype == np.float32
    assert d2(x2).dtype == np.float32

    x3 = np.random.default_rng(1).integers(-5, 6, (4, 2))
    np.testing.assert_allclose(d1(x3).numpy(), x3 @ W.T, rtol=1e-5, atol=1e-5)
    x4 = np.random.default_rng(2).random((4, 2)) < 0.5
    np.testing.assert_allclose(d1(x4).numpy(), x4 @ W.T, rtol=1e-5, atol=1e-6)
    x5 = fx.onehotbatch([True, False, True, True, False], [True, False])
    np.testing.assert_allclose(d1(x5).numpy(), np.asarray(x5) @ W.T, rtol=1e-5, atol=1e-6)


# basic.jl, testset "Scale". Batch-first: Flux's Scale(2, 3) on (2, 3, 4) is Scale(3, 2) on
# (4, 3, 2) here, the sizes in reverse, as every array is.
def test_scale():
    assert len(fx.Scale(10)(randn32(10))) == 10
    assert len(fx.Scale(10)(randn32(1))) == 10
    assert len(fx.Scale(10, bias=False)(randn32(10))) == 10
    assert len(fx.Scale(10, fx.tanh)(randn32(10))) == 10
    with pytest.raises(ValueError):  # Flux: DimensionMismatch
        fx.Scale(10)(randn32(2))

    np.testing.assert_array_equal(fx.Scale(2)(np.array([[1.0], [2.0]])).numpy(), [[1, 1], [2, 2]])  # [1 2]
    np.testing.assert_array_equal(fx.Scale(2)([1, 2]).numpy(), [1, 2])
    assert not np.array_equal(fx.Scale(2, init=lambda *d: fx.randn(*d))([1, 2]).numpy(), [1, 2])
    np.testing.assert_array_equal(fx.Scale(2, bias=False)([[1, 3], [2, 4]]).numpy(), [[1, 3], [2, 4]])
    np.testing.assert_array_equal(fx.Scale(2, fx.square, bias=False, init=fx.ones32)([[1, 3], [2, 4]]).numpy(),
                                  [[1, 9], [4, 16]])

    assert fx.Scale(2)(np.random.rand(4, 3, 2)).shape == (4, 3, 2)
    assert fx.Scale(3, 2)(np.random.rand(4, 3, 2)).shape == (4, 3, 2)
    assert fx.Scale(4, 3, 2, bias=False)(np.random.rand(4, 3, 2)).shape == (4, 3, 2)
    assert fx.Scale(3, 2, bias=False)(np.random.rand(4, 1, 2)).shape == (4, 3, 2)
    np.testing.assert_array_equal(
        fx.Scale(3, 2, fx.tanh, bias=False, init=fx.zeros32)(np.random.rand(4, 1, 2)).numpy(), np.zeros((4, 3, 2)))

    with pytest.raises(TypeError):  # Flux: MethodError
        fx.Scale(1.0)
    with pytest.raises(TypeError):
        fx.Scale(1.0, 2.0)
    with pytest.raises(Exception):
        fx.Scale()
    with pytest.raises(TypeError):
        fx.Scale(fx.sin)


# basic.jl, testset "Maxout" / "Constructor"
def test_maxout_constructor():
    mo = fx.Maxout(lambda: fx.identity, 4)
    x = np.random.rand(40).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(mo(x)), x)


# basic.jl, testset "Maxout" / "simple alternatives"
def test_maxout_simple_alternatives():
    mo = fx.Maxout(lambda x: fx.tensor(x), lambda x: 2 * fx.tensor(x), lambda x: 0.5 * fx.tensor(x))
    x = np.random.rand(40).astype(np.float32)
    np.testing.assert_array_equal(mo(x).numpy(), 2 * x)


# basic.jl, testset "Maxout" / "complex alternatives". Flux's [0.5; 0.1] * [3.0 2.0] is an
# outer product; batch-first, the input is the column (2, 1) and the weights a row.
def test_maxout_complex_alternatives():
    mo = fx.Maxout(lambda x: fx.tensor(x) @ fx.tensor([[0.5, 0.1]]), lambda x: fx.tensor(x) @ fx.tensor([[0.2, 0.7]]))
    x = np.array([[3.0], [2.0]], dtype=np.float32)
    target = x * np.array([0.5, 0.7], dtype=np.float32)
    np.testing.assert_array_equal(mo(x).numpy(), target)


# basic.jl, testset "Maxout" / "params"
def test_maxout_params():
    mo = fx.Maxout(lambda: fx.Dense(32, 64), 4)
    assert len(fx.params(mo)) == 8  # 4 alts, each with weight and bias


# basic.jl, testset "SkipConnection" / "zero sum"
def test_skipconnection_zero_sum():
    x = randn32(10, 10, 10, 10)
    y = fx.SkipConnection(lambda x: fx.zeros(*x.shape), operator.add)(fx.tensor(x))
    np.testing.assert_array_equal(y.numpy(), x)


# basic.jl, testset "SkipConnection" / "concat size" (Flux's dims=2, the batch, is axis 0)
def test_skipconnection_concat_size():
    x = randn32(2, 10)
    assert fx.SkipConnection(fx.Dense(10, 10), lambda a, b: fx.concat([a, b], axis=0))(x).shape == (4, 10)


# basic.jl, testset "Bilinear" / "SkipConnection recombinator"
def test_bilinear_skipconnection_recombinator():
    sc = fx.SkipConnection(fx.Dense(10, 10), fx.Bilinear(10, 10, 5))
    assert sc(randn32(9, 10)).shape == (9, 5)


# basic.jl, testset "Bilinear" / "Two-streams zero sum"
def test_bilinear_two_streams_zero_sum():
    x = np.zeros((9, 10), np.float32)
    y = np.zeros((9, 2), np.float32)
    b = fx.Bilinear(10, 2, 3)
    assert b(x, y).shape == (9, 3)
    assert float((b(x, y) ** 2).sum()) == 0.0


# basic.jl, testset "Bilinear" / "Inner interactions"
def test_bilinear_inner_interactions():
    x = randn32(7, 11)
    b = fx.Bilinear(11, 11, 3)
    assert b(x).shape == (7, 3)
    gs = fx.gradient(lambda: (b(x) ** 2).sum(), fx.params(b))
    assert all(gs[p] is not None for p in fx.params(b))


# basic.jl, testset "Bilinear" / "constructors". Weights are (out, in1, in2): Flux's (3,4,5).
def test_bilinear_constructors():
    b1 = fx.Bilinear(np.random.randn(3, 4, 5))
    assert b1.bias.dtype == np.float64
    assert b1.σ is fx.identity

    b2 = fx.Bilinear(np.random.randn(3, 4, 5), False)
    assert b2.bias is None  # Flux: === false

    b3 = fx.Bilinear(np.random.randn(3, 4, 5).astype(np.float32), True, fx.tanh)  # Flux: Float16
    assert b3.σ is fx.tanh
    assert b3.bias.dtype == np.float32
    assert b3(np.random.rand(4).astype(np.float32), np.random.rand(5).astype(np.float32)).shape == (3,)

    b4 = fx.Bilinear(3, 3, 7, bias=np.arange(1, 8), init=fx.zeros32)
    assert b4.bias.dtype == np.float32  # @test_skip upstream; holds here

    with pytest.raises(ValueError):  # Flux: ArgumentError, expects a 3-array
        fx.Bilinear(np.random.rand(3))
    with pytest.raises(ValueError):
        fx.Bilinear(np.random.rand(3, 4), False, fx.tanh)
    with pytest.raises(ValueError):  # Flux: DimensionMismatch, wrong length bias
        fx.Bilinear(np.random.rand(3, 4, 5), np.random.rand(6), fx.tanh)


# basic.jl, testset "Parallel" / "zero sum"
def test_parallel_zero_sum():
    x = randn32(10, 10, 10, 10)
    y = fx.Parallel(operator.add, lambda x: fx.zeros(*np.shape(x)), fx.identity)(x)
    np.testing.assert_array_equal(np.asarray(y), x)


# basic.jl, testset "Parallel" / "concat size" (Flux's dims=2 and hcat join batches: axis 0)
def test_parallel_concat_size():
    x = randn32(2, 10)
    cat0 = lambda *ys: fx.concat(list(ys), axis=0)  # noqa: E731  (Flux: hcat)
    assert fx.Parallel(cat0, fx.Dense(10, 10), fx.identity)(x).shape == (4, 10)
    assert fx.Parallel(cat0, one=fx.Dense(10, 10), two=fx.identity)(x).shape == (4, 10)


# basic.jl, testset "Parallel" / "vararg input"
def test_parallel_vararg_input():
    inputs = randn32(10), randn32(5), randn32(4)
    plus = lambda *ys: sum(ys[1:], ys[0])  # noqa: E731  (Julia's +, any number of arguments)
    assert fx.Parallel(plus, fx.Dense(10, 2), fx.Dense(5, 2), fx.Dense(4, 2))(inputs).shape == (2,)
    assert fx.Parallel(plus, a=fx.Dense(10, 2), b=fx.Dense(5, 2), c=fx.Dense(4, 2))(inputs).shape == (2,)
    with pytest.raises(ValueError):  # Flux: ArgumentError, wrong number of inputs
        fx.Parallel(operator.add, fx.sin, fx.cos)(1, 2, 3)
    assert fx.Parallel(operator.add, fx.sin, fx.cos)(np.pi / 2) == pytest.approx(1)  # one input, several layers
    assert fx.Parallel(operator.truediv, fx.abs)(3, -4) == pytest.approx(3 / 4)  # one layer, several inputs
    assert fx.Parallel(operator.truediv, fx.abs)((3, -4)) == pytest.approx(3 / 4)
    assert fx.Parallel(operator.truediv, f=fx.abs)(3, -4) == pytest.approx(3 / 4)


# basic.jl, testset "Parallel" / "named access"
def test_parallel_named_access():
    m = fx.Parallel(lambda *ys: fx.concat(list(ys), axis=0), one=fx.Dense(10, 10), two=fx.identity)
    assert m[0] is m["one"]
    assert m[0:2] == [m["one"], m["two"]]

    with pytest.raises(ValueError):  # Flux: ArgumentError, reserved names
        fx.Parallel(operator.add, layers=fx.Dense(10, 10), two=fx.identity)
    with pytest.raises(TypeError):  # the connection is the first argument: Python refuses it by name
        fx.Parallel(operator.add, connection=fx.Dense(10, 10), two=fx.identity)

    assert list(fx.fmap(lambda x: x, m).layers) == ["one", "two"]  # does not forget names

    vcat = lambda *ys: list(ys)  # noqa: E731
    assert fx.Parallel(vcat, x=fx.log)(1) == [0]
    assert fx.Parallel(vcat, fx.log)(1) == [0]


# basic.jl, testset "Parallel" / "trivial cases"
def test_parallel_trivial_cases():
    hcat = lambda *ys: ys  # noqa: E731
    assert isinstance(fx.Parallel(hcat).layers, tuple)  # not a NamedTuple
    assert fx.Parallel(hcat)(1) == hcat()
    assert fx.Parallel(hcat, lambda x: 1 / x)(2) == hcat(1 / 2)  # still calls connection once


# Not upstream: a Parallel called with nothing has nothing to give its layers.
def test_parallel_no_input_raises():
    for m in (fx.Parallel(lambda *ys: ys, fx.abs), fx.Parallel(lambda *ys: ys)):
        with pytest.raises(TypeError, match="needs an input"):
            m()
        with pytest.raises(TypeError, match="needs an input"):
            m(())


# basic.jl, testset "Parallel" / "connection is called once"
def test_parallel_connection_is_called_once():
    CNT = [0]

    def f_cnt(*x):
        CNT[0] += 1
        return sum(x)

    fx.Parallel(f_cnt, fx.sin, fx.cos, fx.tan)(1)
    assert CNT[0] == 1
    fx.Parallel(f_cnt, fx.sin, fx.cos, fx.tan)(1, 2, 3)
    assert CNT[0] == 2
    fx.Parallel(f_cnt, fx.sin)(1)
    assert CNT[0] == 3
    fx.Parallel(f_cnt, fx.sin)(1, 2, 3)
    assert CNT[0] == 4


# basic.jl, testset "Parallel" / "Input domain": layers that take a custom input type
def test_parallel_input_domain():
    class Input:
        def __init__(self, x):
            self.x = x

    class L1(fx.Layer):
        def __init__(self, x):
            self.x = x

        def __call__(self, v):  # Flux: l.x * x, with * extended to Input
            return self.x @ (v.x if isinstance(v, Input) else v)

    rng = np.random.default_rng(3)
    par = fx.Parallel(operator.add, L1(fx.tensor(rng.random((3, 3)))), L1(fx.tensor(rng.random((3, 3)))))
    ip, ip2 = Input(fx.tensor(rng.random((3, 3)))), Input(fx.tensor(rng.random((3, 3))))

    np.testing.assert_allclose(par(ip).numpy(), (par.layers[0](ip.x) + par.layers[1](ip.x)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(par(ip, ip2).numpy(), (par.layers[0](ip.x) + par.layers[1](ip2.x)).numpy(), rtol=1e-6)
    gs = fx.gradient(lambda par, x, y: par(Input(x), Input(y)).sum(), par, ip.x, ip2.x)
    gs_reg = fx.gradient(lambda par, x, y: (par.layers[0](x) + par.layers[1](y)).sum(), par, ip.x, ip2.x)
    for a, b in zip(gs[0].layers, gs_reg[0].layers):
        np.testing.assert_allclose(a.x.numpy(), b.x.numpy(), rtol=1e-6)
    np.testing.assert_allclose(gs[1].numpy(), gs_reg[1].numpy(), rtol=1e-6)
    np.testing.assert_allclose(gs[2].numpy(), gs_reg[2].numpy(), rtol=1e-6)


# basic.jl, testset "Embedding" (0-based: Flux's m(2) is m(1); the output gains a trailing
# embedding axis, (3,) -> (3, 4), where Flux's gains a leading one)
def test_embedding():
    vocab_size, embed_size = 10, 4
    m = fx.Embedding(vocab_size, embed_size)
    assert m.weight.shape == (embed_size, vocab_size)
    W = m.weight.numpy()

    # one index
    assert m(0).dtype == np.float32 and m(0).shape == (embed_size,)
    np.testing.assert_allclose(m(1).numpy(), W[:, 1])
    np.testing.assert_allclose(m(fx.onehot(2, range(vocab_size))).numpy(), W[:, 2])
    with pytest.raises(ValueError):  # Flux: DimensionMismatch
        m(fx.onehot(2, range(1000)))
    np.testing.assert_allclose(m(3).numpy(), m(np.arange(vocab_size) == 3).numpy())

    # a batch of indices
    x = np.random.default_rng(4).integers(0, vocab_size, 3)
    y = m(x)
    assert y.dtype == np.float32 and y.ndim == 2
    np.testing.assert_allclose(y.numpy(), W[:, x].T)
    y2 = m(fx.onehotbatch(x, range(vocab_size)))
    assert y2.dtype == np.float32 and y2.ndim == 2
    np.testing.assert_allclose(y2.numpy(), y.numpy(), rtol=1e-6)
    with pytest.raises(ValueError):
        m(fx.onehotbatch(x, range(1000)))
    np.testing.assert_allclose(m(x[:, None] == np.arange(vocab_size)).numpy(), y.numpy(), rtol=1e-6)

    # more dimensions via reshape
    x = np.random.default_rng(5).integers(0, vocab_size, (4, 3))
    y = m(x)
    assert y.dtype == np.float32 and y.shape == (4, 3, embed_size)
    x3 = fx.onehotbatch(x, range(vocab_size))
    assert x3.shape == (4, 3, vocab_size)
    assert m(x3).shape == (4, 3, embed_size)


# basic.jl, testset "EmbeddingBag". Flux._splitat is EmbeddingBag(data, offsets)'s split,
# tested here through the layer; offsets are 0-based.
@pytest.mark.parametrize("reduction,ref", [("sum", np.sum), ("mean", np.mean), ("maximum", np.max)])
def test_embeddingbag(reduction, ref):
    vocab_size, embed_size = 10, 4
    emb_bag = fx.EmbeddingBag((vocab_size, embed_size), reduction)
    emb = fx.Embedding(emb_bag.weight)
    assert emb_bag.weight.shape == (embed_size, vocab_size)
    with pytest.raises(ValueError):  # Flux: ErrorException, one index is not a bag
        emb_bag(1)

    # _splitat, through offsets (Flux's [1, 3, 6] is [0, 2, 5])
    data = np.arange(9)
    np.testing.assert_allclose(emb_bag(data, [0, 2, 5]).numpy(), emb_bag([[0, 1], [2, 3, 4], [5, 6, 7, 8]]).numpy(), rtol=1e-6)
    np.testing.assert_allclose(emb_bag(data, list(range(9))).numpy(), emb_bag(data[:, None]).numpy(), rtol=1e-6)
    np.testing.assert_allclose(emb_bag(data, [0]).numpy(), emb_bag(data[None, :]).numpy(), rtol=1e-6)
    np.testing.assert_allclose(emb_bag(data, [0, 8]).numpy(), emb_bag([list(range(8)), [8]]).numpy(), rtol=1e-6)
    for bad in ([0, 1, 1, 4], [0, 4, 1], [1, 2, 4], [0, 4, 10]):  # non-monotonic, unsorted, not from 0, too large
        with pytest.raises(ValueError):  # Flux: ArgumentError
            emb_bag(data, bad)

    # single bag (input as a vector)
    x = np.random.default_rng(6).integers(0, vocab_size, 3)
    y = emb_bag(x)
    z = ref(emb(x).numpy(), axis=0)
    assert y.dtype == np.float32 and y.ndim == 1
    np.testing.assert_allclose(y.numpy(), z, rtol=1e-6)

    # PyTorch style input/offset bagging
    np.testing.assert_allclose(emb_bag([0, 2, 1, 3, 4, 6], [0, 2, 4]).numpy(),
                               emb_bag([[0, 2], [1, 3], [4, 6]]).numpy(), rtol=1e-6)
    np.testing.assert_allclose(emb_bag([0, 2, 1, 3, 4, 6], [0, 2, 4]).numpy(),
                               emb_bag(np.array([[0, 2], [1, 3], [4, 6]])).numpy(), rtol=1e-6)  # Flux: [1 2 5; 3 4 7]
    with pytest.raises(ValueError):
        emb_bag([0, 1, 2, 3, 4, 5], [1, 3])
    with pytest.raises(ValueError):
        emb_bag([0, 1, 2, 3, 4, 5], [0, 11])

    # docstring example
    np.testing.assert_allclose(emb_bag(list(range(10)), [0, 4, 5, 7]).numpy(),
                               emb_bag([[0, 1, 2, 3], [4], [5, 6], [7, 8, 9]]).numpy(), rtol=1e-6)

    # multiple bags (input as a vector of vectors)
    rng = np.random.default_rng(7)
    xs = [rng.integers(0, vocab_size, 3) for _ in range(4)]
    y = emb_bag(xs)
    z = np.stack([ref(emb(b).numpy(), axis=0) for b in xs])
    assert y.dtype == np.float32 and y.ndim == 2
    np.testing.assert_allclose(y.numpy(), z, rtol=1e-6)

    # multiple bags (input as a matrix: one bag per row, batch-first)
    x = rng.integers(0, vocab_size, (5, 3))
    xvec = list(x)
    y = emb_bag(x)
    z = np.stack([ref(emb(b).numpy(), axis=0) for b in xvec])
    np.testing.assert_allclose(y.numpy(), emb_bag(xvec).numpy(), rtol=1e-6)
    np.testing.assert_allclose(y.numpy(), z, rtol=1e-6)

    # a one-hot matrix is a bag, but a one-hot vector is not
    with pytest.raises(ValueError):
        emb_bag(fx.onehot(2, range(vocab_size)))

    i2 = rng.integers(0, vocab_size, 3)
    y2 = emb_bag(fx.onehotbatch(i2, range(vocab_size)))
    z2 = emb(i2)
    assert y2.dtype == np.float32 and y2.ndim == 1
    np.testing.assert_allclose(y2.numpy(), ref(z2.numpy(), axis=0), rtol=1e-6)
    with pytest.raises(ValueError):
        emb_bag(fx.onehotbatch(np.arange(5), range(1000)))


# basic.jl, testset "second derivatives": Zygote's forward-over-reverse hessians; fluxrs's
# autodiff is first-order only (leave out).


# basic.jl, testset "gradients of Chain{Vector}"
def test_gradients_of_chain_vector():
    m1 = fx.Chain(fx.Dense(3, 4, fx.tanh, bias=False), fx.Dense(4, 2))
    m1v = fx.Chain([m1[0], m1[1]])
    assert sum(p.size for p in fx.params(m1)) == sum(p.size for p in fx.params(m1v))

    x1 = randn32(5, 3)
    np.testing.assert_allclose(m1(x1).numpy(), m1v(x1).numpy())

    y1 = np.random.default_rng(8).random((5, 2)) < 0.5
    g1 = fx.gradient(lambda: fx.logitcrossentropy(m1(x1), y1), fx.params(m1))
    g1v = fx.gradient(lambda: fx.logitcrossentropy(m1v(x1), y1), fx.params(m1v))
    np.testing.assert_allclose(g1[m1[0].weight].numpy(), g1v[m1v[0].weight].numpy(), rtol=1e-6)
    np.testing.assert_allclose(g1[m1[1].bias].numpy(), g1v[m1v[1].bias].numpy(), rtol=1e-6)

    np.testing.assert_allclose(fx.destructure(m1)[0].numpy(), fx.destructure(m1v)[0].numpy())
    z1 = np.random.default_rng(9).random(22).astype(np.float32)
    np.testing.assert_allclose(fx.destructure(m1)[1](z1)[0].weight.numpy(), fx.destructure(m1v)[1](z1)[0].weight.numpy())


# basic.jl, testset "PairwiseFusion"
def test_pairwisefusion():
    rng = np.random.default_rng(10)
    x = (rng.random((10, 1)).astype(np.float32), rng.random((10, 30)).astype(np.float32))
    layer = fx.PairwiseFusion(operator.add, fx.Dense(1, 30), fx.Dense(30, 10))
    y = layer(x)
    assert len(y) == 2
    assert y[0].shape == (10, 30)
    assert y[1].shape == (10, 10)

    x = rng.random((10, 1)).astype(np.float32)
    layer = fx.PairwiseFusion(operator.add, fx.Dense(1, 10), fx.Dense(10, 1))
    y = layer(x)
    assert len(y) == 2
    assert y[0].shape == (10, 10)
    assert y[1].shape == (10, 1)

    vcat = lambda a, b: np.concatenate([np.atleast_1d(a), np.atleast_1d(b)])  # noqa: E731
    out = fx.PairwiseFusion(vcat, lambda x: x + 1, lambda x: x + 2, lambda x: x ** 3)(2, 10, 20)
    assert out[0] == 3 and out[1].tolist() == [5, 12] and out[2].tolist() == [125, 1728, 8000]
    out = fx.PairwiseFusion(vcat, lambda x: x + 1, lambda x: x + 2, lambda x: x ** 3)(7)
    assert out[0] == 8 and out[1].tolist() == [10, 9] and out[2].tolist() == [1000, 729, 343]

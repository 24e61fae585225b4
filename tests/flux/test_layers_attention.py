"""Flux's own tests of MultiHeadAttention, translated: Flux.jl test/layers/attention.jl.

Layout: Flux's ``(dim, len, batch)`` is ``(batch, len, dim)`` here, and its attention scores
``(len_k, len_q, nheads, batch)`` are ``(batch, nheads, len_q, len_k)``: the same axes
reversed, so Flux's ``α[2, 1, :, :]`` (key 2, query 1) is ``α[:, :, 0, 1]`` and its upper
triangle ``triu(α[:, :, 1, 1])`` (key ≤ query) our lower one, ``tril(α[0, 0])``.
"""

import numpy as np
import pytest

import fluxrs as fx
from gradcheck import check_gradients, f64

rng = np.random.default_rng(0)
dim, nheads, len_, batch_size = 4, 2, 3, 5


def rand32(*shape):
    return fx.tensor(rng.random(shape).astype(np.float32))


@pytest.fixture
def setup():
    mha = fx.MultiHeadAttention(dim, nheads=nheads)
    q = rand32(batch_size, len_, dim)
    k = rand32(batch_size, len_, dim)
    v = rand32(batch_size, len_, dim)
    return mha, q, k, v


# test/layers/attention.jl, @testset "attention"
def test_attention(setup):
    mha, q, k, v = setup
    y, α = mha(q, k, v)
    assert y.ndim == 3 and y.dtype == np.float32
    assert y.shape == (batch_size, len_, dim)
    assert α.ndim == 4 and α.dtype == np.float32
    assert α.shape == (batch_size, nheads, len_, len_)


# test/layers/attention.jl, @testset "attention" / "self-attention"
def test_self_attention(setup):
    mha, q, _, _ = setup
    y1, α1 = mha(q)
    y2, α2 = mha(q, q, q)
    np.testing.assert_allclose(y1.numpy(), y2.numpy(), rtol=1e-6)
    np.testing.assert_allclose(α1.numpy(), α2.numpy(), rtol=1e-6)


# test/layers/attention.jl, @testset "attention" / "key and value are the same"
def test_key_and_value_are_the_same(setup):
    mha, q, k, _ = setup
    y1, α1 = mha(q, k)
    y2, α2 = mha(q, k, k)
    np.testing.assert_allclose(y1.numpy(), y2.numpy(), rtol=1e-6)
    np.testing.assert_allclose(α1.numpy(), α2.numpy(), rtol=1e-6)


# test/layers/attention.jl, @testset "attention" / "change dims"
def test_change_dims(setup):
    _, q, k, v = setup
    # Flux's MultiHeadAttention(4 => 10 => 5; nheads): input 4, q/k/v projections 10, output 5
    dims = (4, 10, 5)
    mha2 = fx.MultiHeadAttention(dims[0], nheads=nheads, qk_dim=dims[1], v_dim=dims[1], out_dim=dims[2])
    y2, _ = mha2(q, k, v)
    assert y2.shape == (batch_size, len_, dims[2])


# test/layers/attention.jl, @testset "attention" / "mask"
def test_mask(setup):
    mha, q, _, _ = setup
    mask = fx.make_causal_mask(q.shape[1])  # Flux's make_causal_mask(q) reads the length off q
    y, α = mha(q, mask=mask)
    assert np.all(α.numpy()[:, :, 0, 1] == 0)
    a = α.numpy()[0, 0]
    np.testing.assert_allclose(a, np.tril(a), rtol=1e-6)


# test/layers/attention.jl, @testset "attention" / "bias"
def test_bias(setup):
    mha, q, k, v = setup
    # use bias to produce a causal mask
    b = np.zeros((len_, len_), dtype=np.float32)  # (query, key) here
    for i in range(len_):
        for j in range(i, len_):
            b[j, i] = np.inf  # typemax(Float32)
    y, α = mha(q, k, v, bias=b)
    assert np.all(α.numpy()[:, :, 0, 1] == 0)
    a = α.numpy()[0, 0]
    np.testing.assert_allclose(a, np.tril(a), rtol=1e-6)


# test/layers/attention.jl, @testset "attention" / "gradient"
def test_gradient(setup):
    mha, q, _, _ = setup
    m = fx.f64(mha)
    q64 = f64(q.numpy())

    def loss():
        y, α = m(q64)
        return (y ** 2).sum() + (α ** 2).sum()

    check_gradients(loss, m, q64)

"""Flux.jl's test/layers/upsample.jl, translated to fluxrs: batch-first (Flux's (W, H, C, N) is
(N, C, H, W) here, scales and sizes reversed with it), float32. Each test names its upstream
testset; upstream expectations keep their values."""

import numpy as np

import fluxrs as fx


def rand32(*shape):
    return np.random.default_rng(0).random(shape).astype(np.float32)


# upsample.jl, testset "upsample bilinear"
def test_upsample_bilinear():
    m = fx.Upsample("bilinear", scale=(3, 2))
    y = m(rand32(3, 2, 4, 3))
    assert y.dtype == np.float32 and y.ndim == 4
    assert y.shape == (3, 2, 12, 6)

    m = fx.Upsample("bilinear", scale=3)
    y = m(rand32(3, 2, 4, 3))
    assert y.dtype == np.float32 and y.ndim == 4
    assert y.shape == (3, 2, 12, 9)

    m = fx.Upsample("bilinear", size=(6, 4))
    y = m(rand32(3, 2, 4, 3))
    assert y.dtype == np.float32 and y.ndim == 4
    assert y.shape == (3, 2, 6, 4)


# upsample.jl, testset "upsample nearest"
def test_upsample_nearest():
    m = fx.Upsample("nearest", scale=(2,))
    y = m(rand32(3, 2, 3))
    assert y.dtype == np.float32 and y.ndim == 3
    assert y.shape == (3, 2, 6)

    x = rand32(3, 2, 4, 3)
    m = fx.Upsample("nearest", scale=(3, 2))
    y = m(x)
    assert y.dtype == np.float32 and y.ndim == 4
    assert y.shape == (3, 2, 12, 6)

    # Flux's scale=(2,) scales the first (W) axis only; batch-first that is the last one
    m = fx.Upsample("nearest", scale=(1, 2))
    y = m(x)
    assert y.shape == (3, 2, 4, 6)

    m = fx.Upsample("nearest", scale=2)
    y = m(x)
    assert y.dtype == np.float32 and y.ndim == 4
    assert y.shape == (3, 2, 8, 6)

    m = fx.Upsample(2)  # upstream compares an undefined y2; the intent: Upsample(2) is nearest, scale 2
    y2 = m(x)
    np.testing.assert_array_equal(y2.numpy(), y.numpy())

    m = fx.Upsample("nearest", size=(8, 6))
    y = m(x)
    assert y.dtype == np.float32 and y.ndim == 4
    assert y.shape == (3, 2, 8, 6)


# upsample.jl, testset "PixelShuffle"
def test_pixelshuffle():
    m = fx.PixelShuffle(2)
    y = m(rand32(3, 18, 3))
    assert y.dtype == np.float32 and y.ndim == 3
    assert y.shape == (3, 9, 6)

    m = fx.PixelShuffle(3)
    y = m(rand32(3, 18, 4, 3))
    assert y.dtype == np.float32 and y.ndim == 4
    assert y.shape == (3, 2, 12, 9)

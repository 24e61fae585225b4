"""Flux.jl's test/layers/stateless.jl (its current form: the helpers; the losses moved to
test/losses.jl), translated to fluxrs: batch-first, float32. Each test names its upstream
testset; upstream expectations keep their values."""

import numpy as np

import fluxrs as fx


# stateless.jl, testset "helpers" / "flatten": (10, 10, 3, 2) in Flux is (2, 3, 10, 10) here
def test_helpers_flatten():
    x = np.random.default_rng(0).standard_normal((2, 3, 10, 10)).astype(np.float32)
    assert fx.flatten(x).shape == (2, 300)


# stateless.jl, testset "helpers" / "normalise": Flux's default dims=ndims(x), its last axis,
# the batch; batch-first that is axis 0 (Flux's (3, 2, 2) is (2, 2, 3) here)
def test_helpers_normalise():
    x = np.random.default_rng(1).standard_normal((2, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(fx.normalise(x).numpy(), fx.normalise(x, dims=0).numpy())

"""Flux.jl's test/loading.jl, translated to fluxrs.

Translation: ``Dense(in => out)`` is ``fx.Dense(in, out)`` (weight (out, in) as in Flux), a
layer's ``σ`` is ``act``, BatchNorm's ``μ``/``σ²`` are ``running_mean``/``running_var``,
``bias=false`` is stored as None, and Flux's ArgumentError / DimensionMismatch /
ErrorException from `loadmodel!` are all `fx.CheckpointError` (a ValueError) here.
Skipped upstream checks are noted where they would be, with the reason.
"""

import numpy as np
import pytest

import fluxrs as fx


def same(a, b):
    return np.array_equal(np.asarray(a), np.asarray(b))


def add(*xs):
    return sum(xs[1:], xs[0])


def reshape_to_batch(x):  # Flux: x -> reshape(x, :, size(x)[end]); batch-first here
    return x.reshape(x.shape[0], -1)


# test/loading.jl, testset "loadmodel!(dst, src)"
def test_loadmodel_dst_src():
    m1 = fx.Chain(fx.Dense(10, 5), fx.Dense(5, 2, fx.relu))
    m2 = fx.Chain(fx.Dense(10, 5), fx.Dense(5, 2))
    m3 = fx.Chain(fx.Conv((3, 3), (3, 16)), fx.Dense(5, 2))
    m4 = fx.Chain(fx.Dense(10, 6), fx.Dense(6, 2))
    m5 = fx.Chain(fx.Dense(10, 5), fx.Parallel(add, fx.Dense(fx.ones32(2, 5), False), fx.Dense(5, 2)))
    m6 = fx.Chain(fx.Dense(10, 5), fx.Parallel(add, fx.Dense(5, 2), fx.Dense(5, 2)))

    fx.loadmodel_(m1, m2)
    # trainable parameters copy over
    assert same(m1[0].weight, m2[0].weight)
    assert same(m1[0].bias, m2[0].bias)
    # non-array leaves are untouched
    assert m1[1].act is fx.relu

    fx.loadmodel_(m5, m6)
    # more complex nested structures also work
    assert same(m5[0].weight, m6[0].weight)
    assert same(m5[1].layers[0].weight, m6[1].layers[0].weight)
    # false bias is not overwritten
    assert m5[1].layers[0].bias is None

    # mismatched nodes throw an error
    with pytest.raises(fx.CheckpointError):
        fx.loadmodel_(m1, m3)
    with pytest.raises(fx.CheckpointError):
        fx.loadmodel_(m1, m5)
    # size mismatches throw an error
    with pytest.raises(fx.CheckpointError, match="shape mismatch"):
        fx.loadmodel_(m1, m4)

    # tests for BatchNorm and Dropout
    m1 = fx.Chain(fx.Conv((3, 3), (3, 16)), fx.BatchNorm(16), fx.flatten, fx.Dropout(0.2))
    m2 = fx.Chain(fx.Conv((3, 3), (3, 16)), fx.BatchNorm(16), reshape_to_batch, fx.Dropout(0.1))
    m2[1].running_mean.assign_(np.random.rand(16).astype(np.float32))
    fx.loadmodel_(m1, m2)
    # non-trainable parameters are copied as well
    assert same(m1[1].running_mean, m2[1].running_mean)
    # functions are not copied
    assert m1[2] is fx.flatten
    # dropout rate is not copied
    assert m1[3].p == 0.2

    # from LegolasFlux: Chain(...) vs Chain([...]), MaxPool, testmode not copied, a bigger model
    chain1 = fx.Chain(fx.Dropout(0.2),
                      fx.Conv((3, 3), (1, 32), fx.relu),
                      fx.BatchNorm(32, fx.relu),
                      fx.MaxPool((2, 2)),
                      fx.Dropout(0.2),
                      fx.Conv((3, 3), (32, 16), fx.relu),
                      fx.Dropout(0.2),
                      fx.MaxPool((2, 2)),
                      fx.Dropout(0.2),
                      fx.Conv((3, 3), (16, 10), fx.relu),
                      fx.Dropout(0.2),
                      reshape_to_batch,
                      fx.Dropout(0.2),
                      fx.Dense(90, 10),
                      fx.softmax)
    chain2 = fx.Chain([fx.Dropout(0.1),
                       fx.Conv((3, 3), (1, 32), fx.relu),
                       fx.BatchNorm(32, fx.relu),
                       fx.MaxPool((3, 3)),
                       fx.Dropout(0.1),
                       fx.Conv((3, 3), (32, 16), fx.relu),
                       fx.Dropout(0.1),
                       fx.MaxPool((3, 3)),
                       fx.Dropout(0.1),
                       fx.Conv((3, 3), (16, 10), fx.relu),
                       fx.Dropout(0.1),
                       reshape_to_batch,
                       fx.Dropout(0.1),
                       fx.Dense(90, 10),
                       fx.softmax])
    chain2[2].running_mean.assign_(np.full(32, 5, np.float32))
    chain2[2].running_var.assign_(np.full(32, 2, np.float32))
    fx.testmode_(chain2)
    fx.loadmodel_(chain1, chain2)
    for dst, src in zip(chain1, chain2):
        if isinstance(dst, fx.Dropout):
            assert dst.p == 0.2
        elif isinstance(dst, (fx.Conv, fx.Dense)):
            assert same(dst.weight, src.weight)
            assert same(dst.bias, src.bias)
        elif isinstance(dst, fx.MaxPool):
            assert dst.k == (2, 2)
        elif isinstance(dst, fx.BatchNorm):
            assert same(dst.running_mean, src.running_mean)
            assert same(dst.running_var, src.running_var)
            assert dst.active is None

    # copy only a subset of the model
    chain1[-2].weight.assign_(np.ones((10, 90), np.float32))
    chain1[2].running_mean.assign_(np.full(32, 3, np.float32))
    chain1[1].bias.assign_(np.full(32, 5, np.float32))
    fx.loadmodel_(chain2[-2], chain1[-2])
    fx.loadmodel_(chain2[2], chain1[2])
    assert same(chain2[-2].weight, chain1[-2].weight)
    assert same(chain2[2].running_mean, chain1[2].running_mean)
    assert not same(chain2[1].bias, chain1[1].bias)

    # test shared weights
    shared_dst = fx.Dense(10, 10)
    shared_src = fx.Dense(10, 10)
    # matched weights are okay
    m1 = fx.Chain(shared_dst, fx.Dense(shared_dst.weight))
    m2 = fx.Chain(shared_src, fx.Dense(shared_src.weight))
    fx.loadmodel_(m1, m2)
    assert m1[0].weight is m1[1].weight
    assert same(m1[0].weight, m2[1].weight)
    # mismatched weights are an error
    m2 = fx.Chain(fx.Dense(10, 10), fx.Dense(10, 10))
    with pytest.raises(fx.CheckpointError, match="tied"):
        fx.loadmodel_(m1, m2)
    # loading into tied weights with absent parameter is okay when the dst == zero
    b = fx.zeros32(5)
    m1 = fx.Chain(fx.Dense(10, 5, bias=b), fx.Dense(5, 5, bias=b))
    m2 = fx.Chain(fx.Dense(10, 5, bias=fx.zeros32(5)), fx.Dense(5, 5, bias=False))
    fx.loadmodel_(m1, m2)
    assert m1[0].bias is m1[1].bias
    assert not np.any(m1[0].bias.numpy())
    # loading into tied weights with absent parameter is bad when the dst != zero
    m2[0].bias.assign_(np.ones(5, np.float32))
    with pytest.raises(fx.CheckpointError, match="tied"):
        fx.loadmodel_(m1, m2)


# test/loading.jl, testset "loadmodel! & filter" (inside "loadmodel!(dst, src)")
def test_loadmodel_filter():
    m1 = fx.Chain(fx.Dense(10, 5), fx.Dense(5, 2, fx.relu))
    m2 = fx.Chain(fx.Dense(10, 5), fx.Dropout(0.2), fx.Dense(5, 2))
    m3 = fx.Chain(fx.Dense(10, 5), fx.Dense(5, 2, fx.relu))

    # this will not error cause Dropout is skipped
    fx.loadmodel_(m1, m2, filter=lambda x: not isinstance(x, fx.Dropout))
    assert same(m1[0].weight, m2[0].weight)
    assert same(m1[1].weight, m2[2].weight)

    # this will not error cause Dropout is skipped
    fx.loadmodel_(m2, m3, filter=lambda x: not isinstance(x, fx.Dropout))
    assert same(m3[0].weight, m2[0].weight)
    assert same(m3[1].weight, m2[2].weight)


# test/loading.jl, testset "loadmodel! & absent bias" (inside "loadmodel!(dst, src)")
def test_loadmodel_absent_bias():
    m0 = fx.Chain(fx.Dense(2, 3, bias=False, init=fx.ones32), fx.Dense(3, 1))
    m1 = fx.Chain(fx.Dense(2, 3, bias=fx.randn(3)), fx.Dense(3, 1))
    m2 = fx.Chain(fx.Dense(np.array([[1, 2], [3, 4], [5, 6]], np.float32), np.array([7, 8, 9], np.float32)),
                  fx.Dense(3, 1))

    fx.loadmodel_(m1, m2)
    assert m1[0].bias.tolist() == [7, 8, 9]
    assert float(m1[0].weight.numpy().sum()) == 21

    # load from a model without bias -- should ideally recognise the `false` but `Params` doesn't store it
    m1 = fx.loadmodel_(m1, m0)
    assert not np.any(m1[0].bias.numpy())
    assert float(m1[0].weight.numpy().sum()) == 6  # written before error

    # load into a model without bias -- should it ignore the parameter which has no home, or error?
    m0 = fx.loadmodel_(m0, m2)
    assert m0[0].bias is None  # obviously unchanged (Flux: iszero(false))
    assert float(m0[0].weight.numpy().sum()) == 21


# test/loading.jl, testset "loadmodel!(dst, src) with BSON"
def test_loadmodel_dst_src_with_bson(tmp_path):
    # BSON is Julia's format; fx.save / fx.load (safetensors) is the Python equivalent
    m1 = fx.Chain(fx.Dense(np.array([[1, 2], [3, 4], [5, 6]], np.float32), np.array([7, 8, 9], np.float32)),
                  fx.Dense(3, 1))
    m2 = fx.Chain(fx.Dense(np.zeros((3, 2), np.float32), np.zeros(3, np.float32)), fx.Dense(3, 1))
    assert not same(m1[0].weight, m2[0].weight)
    path = tmp_path / "test.safetensors"
    fx.save(path, m1)
    m2 = fx.loadmodel_(m2, fx.load(path).model)
    assert same(m1[0].weight, m2[0].weight)


# test/loading.jl, testset "state"
def test_state():
    m1 = fx.Chain(fx.Dense(10, 5), fx.Parallel(add, fx.Dense(fx.ones32(2, 5), False), fx.Dense(5, 2)))
    m2 = fx.Chain(fx.Dense(10, 5), fx.Parallel(add, fx.Dense(fx.zeros32(2, 5), fx.ones32(2)), fx.Dense(5, 2)))
    s = fx.state(m1)
    assert isinstance(s, dict)  # Flux: a NamedTuple
    assert list(s) == ["layers"]
    assert isinstance(s["layers"], list)  # Flux: a Tuple
    assert len(s["layers"]) == 2
    # Flux: `s.layers[1].weight === m1[1].weight`; fluxrs's state holds copies (numpy arrays)
    assert same(s["layers"][0]["weight"], m1[0].weight)
    # Flux: `s.layers[1].σ === ()`; fluxrs's state leaves out what is not a tensor
    assert "act" not in s["layers"][0]
    assert same(s["layers"][1]["layers"][0]["weight"], m1[1].layers[0].weight)

    # Flux's state of m1 holds `bias = false`, which loadmodel! writes as zeros; fluxrs's state
    # has no entry for an absent bias, so strict=False skips it and the bias keeps its ones
    fx.loadmodel_(m2, s, strict=False)
    assert same(m2[0].weight, m1[0].weight)
    # from the model itself, the absent bias is seen, and written as zeros as in Flux
    fx.loadmodel_(m2, m1)
    assert np.all(m2[1].layers[0].bias.numpy() == 0)


# test/loading.jl, testsets "non-state elements are replaced with empty tuple", "track active
# state and batch norm params", "preservation of saved types" (inside "state")
@pytest.mark.skip(reason="fx.state holds only tensors (as numpy arrays), the contents of a safetensors file; "
                         "Flux.state also keeps numbers, strings, flags and `()` for functions")
def test_state_non_tensor_elements():
    pass

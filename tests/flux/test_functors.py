"""Flux.jl's test/functors.jl, and the "use params in gradient context" testset of its
older test/functor.jl (the gradient of a tree of arrays), translated to fluxrs.

Translation: Flux's ``gradient`` differentiates arrays anywhere in a tuple or NamedTuple
argument; in fluxrs a float numpy array inside a tuple, list or dict argument is
differentiated the same way (as float64: fluxrs keeps an array's dtype when it is an
argument of `gradient`). Flux's implicit ``gradient(() -> ..., params(...))`` is kept for
models; for bare numpy arrays the explicit form is used, since `fx.params` copies numpy
arrays into new tensors.
"""

import warnings

import numpy as np
import pytest

import fluxrs as fx


# test/functors.jl (top level: gpu on a machine without a GPU)
@pytest.mark.skipif(fx.gpu_available(), reason="checks the behaviour without a GPU")
def test_functors_gpu_without_a_gpu():
    if fx.gpu_available():
        pytest.skip("a GPU is available")
    x = np.random.rand(10, 10).astype(np.float32)
    # Flux: `x === gpu(x)`, gpu does nothing without a GPU; fluxrs does the same (the data as a
    # CPU tensor) and says why once
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = fx.gpu(x)
    assert y.device == "cpu" and np.array_equal(y.numpy(), x)


# test/functors.jl (top level: cpu_device)
def test_functors_cpu_device():
    x = np.random.rand(10, 10).astype(np.float32)
    # Flux: dev = Flux.cpu_device(); dev(x) == x. fluxrs has fx.cpu (and fx.to_device(x, "cpu"))
    # rather than device objects; the `typeof(dev) <: CPUDevice` check has no counterpart
    assert np.array_equal(fx.cpu(x).numpy(), x)
    assert np.array_equal(fx.to_device(x, "cpu").numpy(), x)


# test/functor.jl, testset "Params" > "use params in gradient context"
def test_params_use_params_in_gradient_context():
    m = fx.Chain(fx.Dense(3, 2), fx.Dense(2, 2))
    ps = fx.params(m)
    gs = fx.gradient(lambda: sum(p.sum() for p in fx.params(m)), ps)
    for p in ps:
        np.testing.assert_allclose(gs[p].numpy(), np.ones(p.shape))

    # Flux: w1, w2 = rand(2), rand(2) with implicit params; the explicit form on a tuple,
    # a list and a dict (Flux: a NamedTuple) of numpy arrays
    w1, w2 = np.random.rand(2), np.random.rand(2)
    (gs,) = fx.gradient(lambda ws: sum(p.sum() for p in ws), (w1, w2))
    for g, p in zip(gs, (w1, w2)):
        np.testing.assert_allclose(g.numpy(), np.ones(p.shape))
    (gs,) = fx.gradient(lambda ws: sum(p.sum() for p in ws), [w1, w2])
    for g, p in zip(gs, (w1, w2)):
        np.testing.assert_allclose(g.numpy(), np.ones(p.shape))
    (gs,) = fx.gradient(lambda ws: (ws["a"] * ws["b"]).sum(), {"a": w1, "b": w2})
    np.testing.assert_allclose(gs["a"].numpy(), w2)
    np.testing.assert_allclose(gs["b"].numpy(), w1)

    m = fx.Chain(fx.Dense(3, 2), fx.Dense(2, 2))
    g = fx.gradient(lambda m: fx.params(m)[0].sum(), m)[0]
    assert np.array_equal(g.layers[0].weight.numpy(), np.ones((2, 3), np.float32))

    gs = fx.gradient(lambda: fx.params(m)[0].sum(), fx.params(m))
    assert np.array_equal(gs[fx.params(m)[0]].numpy(), np.ones((2, 3), np.float32))

    # Tests from Flux's pull request on params inside the gradient
    m = fx.Dense(3, 2)
    ps = fx.params(m)
    data = np.random.rand(5, 3).astype(np.float32)  # Flux: rand(Float32, 3, 5), batch-first here

    def loss(m, x):
        return (m(x) ** 2).sum()

    g1 = fx.gradient(lambda: loss(m, data), fx.params(m))

    def f2():
        fx.params(m)  # just creating params without using them
        return loss(m, data)

    def f3():
        ps = fx.params(m)
        return loss(m, data) + sum(p.sum() for p in ps)

    g2 = fx.gradient(f2, fx.params(m))
    g3 = fx.gradient(f3, fx.params(m))
    g4 = fx.gradient(lambda: loss(m, data) + sum(p.sum() for p in ps), fx.params(m))
    g5 = fx.gradient(lambda: fx.params(m)[0].sum() + fx.params(m)[1].sum(), fx.params(m))
    g6 = fx.gradient(lambda: ps[0].sum() + ps[1].sum(), fx.params(m))
    w = m.weight
    np.testing.assert_array_equal(g2[w].numpy(), g1[w].numpy())
    np.testing.assert_allclose(g3[w].numpy(), g1[w].numpy() + 1, rtol=1e-6)
    np.testing.assert_allclose(g4[w].numpy(), g1[w].numpy() + 1, rtol=1e-6)
    assert np.all(g5[w].numpy() == 1)
    assert np.all(g6[w].numpy() == 1)  # @test_broken in Flux; fluxrs gets it right

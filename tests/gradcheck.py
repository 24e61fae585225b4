"""Shared test helper: gradients from fx.gradient against central finite differences (float64)."""

import numpy as np

import fluxrs as fx


def f64(a):
    return fx.tensor(np.asarray(a, dtype=np.float64), dtype="float64")


def numeric_gradient(f, x, h=1e-6, at=None):
    """Central differences ``(f(x + h e_i) - f(x - h e_i)) / 2h`` of the scalar function f of
    the numpy array x, at the flat indices `at` (every element when None; zero elsewhere)."""
    g = np.zeros_like(x)
    for i in range(x.size) if at is None else at:
        up, down = x.copy(), x.copy()
        up.flat[i] += h
        down.flat[i] -= h
        g.flat[i] = (f(up) - f(down)) / (2 * h)
    return g


def finite_difference(f, tensors, h=1e-6):
    """Central differences of the scalar f() with respect to every element of every tensor."""
    out = []
    for t in tensors:
        base = t.numpy().copy()

        def at(a, t=t):
            t.assign_(f64(a))
            return float(f())

        out.append(numeric_gradient(at, base, h))
        t.assign_(f64(base))
    return out


def check_gradients(f, *roots, rtol=1e-6, atol=1e-8, seed=0):
    """Compare the gradient of ``sum(f() * R)`` (R a fixed random array, so that no symmetry
    hides an error) with respect to every trainable tensor under `roots` (models or tensors)
    with central finite differences. `f` returns a tensor or a tuple of tensors."""
    def outputs():
        y = f()
        return y if isinstance(y, tuple) else (y,)

    rng = np.random.default_rng(seed)
    weights = [f64(rng.normal(size=tuple(y.shape))) for y in outputs()]

    def loss():
        total = None
        for y, w in zip(outputs(), weights):
            term = (y * w).sum()
            total = term if total is None else total + term
        return total

    ps = fx.params(*roots)
    assert len(ps) > 0
    for p in ps:
        assert p.dtype == np.float64, "build the layer with float64 weights (fx.f64) for gradient checks"
    gs = fx.gradient(loss, ps)
    fds = finite_difference(loss, list(ps))
    for i, (p, fd) in enumerate(zip(ps, fds)):
        g = gs[p]
        got = np.zeros_like(fd) if g is None else g.numpy()
        np.testing.assert_allclose(got, fd, rtol=rtol, atol=atol, err_msg=f"parameter #{i} of shape {fd.shape}")
    return gs

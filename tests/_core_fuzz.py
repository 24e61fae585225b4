"""The most dangerous property group of tests/test_properties.py, run in a child process so
that a crash of the core (a segfault, an abort) cannot take the test run down with it.

    python tests/_core_fuzz.py MAX_EXAMPLES LOGFILE KNOWN_BUGS

Raw tensor methods (reshape, transpose, permute, swapaxes, indexing, select, slice,
index_select, broadcast_to, reductions, softmax, matmul, concat, stack, contiguous,
astype, numpy/tolist) on tensors of random shapes (zero-size and 0-d included) and layouts
(transposed and sliced views), with arguments that include extreme integers, each compared
with numpy where numpy has an answer, and differentiated. Each call is written to LOGFILE
(line-buffered) before it is made, so that the parent can name the call that crashed.
KNOWN_BUGS is a comma-separated list of core bugs present in this build (see
test_properties.CORE_BUGS); the shapes that hit them are left out: "zero-size-layout" (a
zero-length axis after an axis longer than 1), "shape-overflow" (a byte size beyond isize).
Prints "examples run: N" at the end.
"""

import math
import sys
import warnings

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fluxrs as fx

warnings.simplefilter("ignore")

# OverflowError: an integer too large for the binding's usize/isize argument (a known
# binding defect, see test_properties.test_tensor_methods_refuse_bad_integers_...).
ALLOWED = (ValueError, TypeError, IndexError, KeyError, OverflowError)
EXTREME = [-2**63 - 1, -2**63, -2**31, -5, -1, 0, 1, 2, 3, 2**31, 2**63 - 1, 2**64]


def trap(shape) -> bool:
    shape = tuple(shape)
    return any(s == 0 and any(d != 1 for d in shape[:i]) for i, s in enumerate(shape))


def overflows(shape) -> bool:
    n = 8
    for d in shape:
        n *= max(int(d), 1)
    return n > 2**63 - 1


class Fuzz:
    def __init__(self, log, known: set):
        self.log, self.known, self.count = log, known, 0
        self.skip_trap = "zero-size-layout" in known

    def ok_shape(self, shape) -> bool:
        return not (self.skip_trap and trap(shape)) and not ("shape-overflow" in self.known and overflows(shape))

    def call(self, desc: str, f, *args):
        self.log.write(desc + "\n")
        self.log.flush()
        try:
            return True, f(*args)
        except ALLOWED as e:
            assert "internal error" not in str(e), f"{desc}: core panic: {e}"
            return False, e

    def check(self, desc: str, got, want):
        """Compare a result with numpy's, then differentiate through it."""
        g = got.numpy()
        assert g.shape == np.shape(want), f"{desc}: shape {g.shape}, numpy {np.shape(want)}"
        np.testing.assert_allclose(g, np.asarray(want, dtype=g.dtype), rtol=2e-3, atol=1e-3, equal_nan=True,
                                   err_msg=desc)


def make(fz: Fuzz, data) -> tuple:
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=3).filter(fz.ok_shape),
                      label="shape")
    dt = data.draw(st.sampled_from(["float32", "float64"]), label="dtype")
    a = data.draw(hnp.arrays(dt, shape, elements=st.floats(-10, 10, width=32) | st.sampled_from(
        [math.nan, math.inf, -math.inf])), label="values")
    view = data.draw(st.sampled_from(["plain", "T", "slice"]), label="view")
    if view == "T" and a.ndim >= 2 and fz.ok_shape(a.shape[::-1]):
        t = fx.tensor(np.ascontiguousarray(a.T), dtype=dt).T
    elif view == "slice" and a.ndim >= 1:
        big = np.concatenate([a, a], axis=-1) if a.shape[-1] else a
        t = fx.tensor(big, dtype=dt)[..., ::2] if a.shape[-1] else fx.tensor(a, dtype=dt)
        a = big[..., ::2] if a.shape[-1] else a
    else:
        t = fx.tensor(a, dtype=dt)
    return t, np.asarray(a, dtype=dt)


def ref(f):
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return True, f()
    except Exception:
        return False, None


def one_example(fz: Fuzz, data) -> None:
    t, a = make(fz, data)
    nd = a.ndim
    ints = st.one_of(st.integers(-nd - 1, nd + 1), st.sampled_from(EXTREME))
    op = data.draw(st.sampled_from(["reshape", "transpose", "swapaxes", "getitem", "select", "slice", "index_select",
                                    "broadcast_to", "sum", "mean", "max", "min", "logsumexp", "softmax",
                                    "logsoftmax", "matmul", "concat", "stack", "contiguous", "astype", "tolist"]),
                   label="op")
    desc = f"{op} on {a.shape} {a.dtype} (strides {t.is_contiguous and 'contiguous' or 'view'})"
    if op == "reshape":
        new = data.draw(st.one_of(st.lists(st.integers(-1, 4), max_size=4), st.lists(st.sampled_from(EXTREME),
                                                                                     min_size=1, max_size=3)))
        have, want = ref(lambda: a.reshape(new))
        f = lambda x: x.reshape(new)  # noqa: E731
        desc += f" to {new}"
    elif op == "transpose":
        perm = data.draw(st.one_of(st.permutations(range(nd)), st.lists(ints, max_size=4)))
        have, want = ref(lambda: np.transpose(a, perm))
        f = lambda x: x.transpose(perm)  # noqa: E731
        desc += f" {perm}"
    elif op == "swapaxes":
        i, j = data.draw(ints), data.draw(ints)
        have, want = ref(lambda: np.swapaxes(a, i, j))
        f = lambda x: x.swapaxes(i, j)  # noqa: E731
        desc += f" {i} {j}"
    elif op == "getitem":
        key = data.draw(hnp.basic_indices(a.shape, allow_newaxis=True, allow_ellipsis=True) if nd else
                        st.sampled_from([(), None, Ellipsis]))
        have, want = ref(lambda: a[key])
        f = lambda x: x[key]  # noqa: E731
        desc += f" [{key!r}]"
    elif op == "select":
        ax, i = data.draw(ints), data.draw(ints)
        have, want = ref(lambda: np.take(a, i, axis=ax) if -a.shape[ax] <= i < a.shape[ax] else 1 / 0)
        f = lambda x: x.select(ax, i)  # noqa: E731
        desc += f" axis={ax} index={i}"
    elif op == "slice":
        ax, lo, hi, step = (data.draw(ints) for _ in range(4))
        have, want = False, None
        f = lambda x: x.slice(ax, lo, hi, step)  # noqa: E731
        desc += f" axis={ax} {lo}:{hi}:{step}"
    elif op == "index_select":
        ax = data.draw(ints)
        idx = data.draw(st.lists(ints, max_size=3))
        have, want = ref(lambda: np.take(a, idx, axis=ax) if all(0 <= i < a.shape[ax] for i in idx) else 1 / 0)
        f = lambda x: x.index_select(ax, idx)  # noqa: E731
        desc += f" axis={ax} {idx}"
    elif op == "broadcast_to":
        shape = data.draw(st.one_of(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=3),
                                    st.lists(st.sampled_from([-1, 0, 1, 2, 3]), max_size=4).map(tuple)))
        have, want = ref(lambda: np.broadcast_to(a, shape))
        f = lambda x: x.broadcast_to(shape)  # noqa: E731
        desc += f" {shape}"
    elif op in ("sum", "mean", "max", "min", "logsumexp"):
        axis = data.draw(st.one_of(st.none(), ints, st.lists(st.integers(-nd, max(nd - 1, 0)), max_size=3)))
        keep = data.draw(st.booleans())
        np_ax = tuple(axis) if isinstance(axis, list) else axis
        if op == "logsumexp":
            have, want = ref(lambda: np.log(np.sum(np.exp(a), axis=np_ax, keepdims=keep)) if a.size else 1 / 0)
            have = have and bool(np.all(np.isfinite(a))) and np.abs(a).max(initial=0) < 30
        else:
            have, want = ref(lambda: getattr(np, op)(a, axis=np_ax, keepdims=keep))
        f = lambda x: getattr(x, op)(axis, keep)  # noqa: E731
        desc += f" axis={axis!r} keepdims={keep}"
    elif op in ("softmax", "logsoftmax"):
        ax = data.draw(ints)
        have, want = False, None
        f = lambda x: getattr(x, op)(ax)  # noqa: E731
        desc += f" axis={ax}"
    elif op == "matmul":
        other = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=3).filter(fz.ok_shape))
        b = np.ones(other, dtype=a.dtype)
        have, want = ref(lambda: a @ b)
        if have and a.ndim >= 2 and b.ndim >= 2:  # the backward pass transposes both
            have = fz.ok_shape(a.shape[:-2] + a.shape[-2:][::-1]) and fz.ok_shape(b.shape[:-2] + b.shape[-2:][::-1])
            if not have and fz.skip_trap:
                return
        tb = fx.tensor(b, dtype=str(a.dtype))
        f = lambda x: x @ tb  # noqa: E731
        desc += f" @ {other}"
    elif op in ("concat", "stack"):
        ax = data.draw(ints)
        have, want = ref(lambda: (np.concatenate if op == "concat" else np.stack)([a, a], axis=ax))
        f = lambda x: getattr(fx, op)([x, x], ax)  # noqa: E731
        desc += f" axis={ax}"
    elif op == "contiguous":
        have, want = True, a
        f = lambda x: x.contiguous()  # noqa: E731
    elif op == "astype":
        dt = data.draw(st.sampled_from(["float32", "float64", "int32", "bool", "x"]))
        have, want = (True, a.astype(dt)) if dt in ("float32", "float64") else (False, None)
        f = lambda x: x.astype(dt)  # noqa: E731
        desc += f" {dt}"
    else:  # tolist: as numpy's
        ok, lst = fz.call(desc, lambda x: x.tolist(), t)
        np.testing.assert_array_equal(np.asarray(lst), np.asarray(a.tolist()), err_msg=desc)
        fz.count += 1
        return
    if have and not fz.ok_shape(np.shape(want)):
        return
    ok, got = fz.call(desc, f, t)
    if not ok:
        return
    out_shape = tuple(got.shape)
    if not fz.ok_shape(out_shape):
        return  # a view of a shape the core mishandles: go no further with it
    if have:
        fz.check(desc, got, want)
    else:
        got.numpy()
    fz.count += 1
    if got.size and got.size < 10_000:
        ok, g = fz.call(desc + " (gradient)", lambda x: fx.gradient(lambda y: f(y).sum(), x), t)
        if ok and g[0] is not None:
            assert tuple(g[0].shape) == a.shape, f"{desc}: gradient shape {tuple(g[0].shape)}"


def main() -> None:
    n, path = int(sys.argv[1]), sys.argv[2]
    known = set(filter(None, sys.argv[3].split(","))) if len(sys.argv) > 3 else set()
    with open(path, "w", buffering=1) as log:
        fz = Fuzz(log, known)

        @settings(max_examples=n, deadline=None, database=None, print_blob=True,
                  suppress_health_check=list(HealthCheck))
        @given(st.data())
        def run(data):
            one_example(fz, data)

        run()
    print(f"examples run: {n} ({fz.count} calls succeeded)")


if __name__ == "__main__":
    main()

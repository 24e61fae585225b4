"""Property-based robustness tests (issue 8).

Random shapes (zero-size axes and 0-d included), dtypes (float16/32/64, integers, bools,
objects, strings, None, nested and ragged lists), NaN and infinities, non-contiguous arrays
(transposes, strided and reversed slices, Fortran order) and wrong argument types are thrown
at the public functions and layers: tensor construction, arithmetic and broadcasting,
reductions over random axes, reshape/transpose/indexing, matmul, softmax, every activation,
every loss of fx.losses, the layers (Dense, Chain, convolutions, pooling, normalisation,
recurrent, attention, ...), fx.gradient, the optimisers' update_, DataLoader,
onehotbatch/onecold, and save/load.

The property: every call either succeeds with a correct result (compared with numpy where
the reference is simple: arithmetic, reductions, matmul, softmax, activations, Dense) or
raises ValueError, TypeError, IndexError or KeyError (subclasses such as fx.CheckpointError
included) with a message; never RuntimeError "internal error in fluxrs core", never a crash.

How much runs is set by the hypothesis profile (tests/conftest.py): the default ``quick``
profile keeps this file well under a minute; the ``long`` profile is the dedicated job, 500
examples per test (over 10,000 in all):

    HYPOTHESIS_PROFILE=long python -m pytest tests/test_properties.py

Add ``--hypothesis-show-statistics`` to see the examples each test ran.

Guarding the interpreter: the group most likely to bring it down (raw core tensor ops on
zero-size, 0-d and awkward layouts, extreme integer arguments) runs in a child process
(tests/_core_fuzz.py) whose exit status is checked, and inputs big enough to exhaust memory
are tried one per child process. Known core bugs (`CORE_BUGS`, each with its reproduction)
are probed once per session in a child process: while one is present, the in-process
strategies avoid the inputs that trigger it and its own test xfails with the reproduction;
once the core is fixed those inputs come back on their own.
"""

from __future__ import annotations

import functools
import math
import operator
import os
import pathlib
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import assume, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import fluxrs as fx  # noqa: E402
from fluxrs import _core  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::RuntimeWarning")]

#: What a rejected call may raise. Subclasses count (CheckpointError, StateMismatchError).
ALLOWED = (ValueError, TypeError, IndexError, KeyError)

HERE = pathlib.Path(__file__).parent


def attempt(f, *args, **kwargs):
    """``(True, result)``, or ``(False, error)`` for an allowed error with a real message.
    Anything else (RuntimeError from a core panic, AttributeError, ...) fails the test."""
    try:
        return True, f(*args, **kwargs)
    except ALLOWED as e:
        msg = str(e)
        assert "internal error" not in msg, f"a core panic reached the user: {msg}"
        assert msg.strip(), f"{type(e).__name__} without a message"
        return False, e


# ---------------------------------------------------------------- known core bugs

class CoreBug:
    """A crash of the Rust core that the Python layer cannot prevent, with its reproduction
    (run after ``import fluxrs as fx, numpy as np``) and the fix it needs."""

    def __init__(self, repro: str, fix: str):
        self.repro, self.fix = repro, fix


CORE_BUGS = {
    # Layout::contiguous_strides gives a zero-length axis stride 1 (shape[i].max(1)) but
    # Layout::is_contiguous multiplies `expected` by the raw 0, so a freshly made tensor of
    # shape (2, 0) counts as non-contiguous; reshape_raw then copies it with
    # copy_contiguous (which makes the same layout again) and calls itself on the copy,
    # forever: a stack overflow (SIGSEGV). Every op that reshapes internally (sum over an
    # inner axis, matmul, stack, x[None], ...) is affected.
    "zero-size-layout": CoreBug(
        "fx.zeros(2, 0).reshape(0, 2)",
        "rust/core/src/layout.rs: Layout::is_contiguous must return true when numel() == 0 (and use "
        "`expected *= d.max(1)` as contiguous_strides does)"),
    # Shapes whose element count (or byte size) overflows are accepted by reshape and
    # broadcast_to (numel() is an unchecked product), and converting such a tensor to numpy
    # builds an ndarray view from a raw pointer with an overflowing shape: SIGSEGV.
    "shape-overflow": CoreBug(
        "fx.zeros(0).reshape(2**31, 2**31, 0).numpy()",
        "check shapes with checked_mul in the core (Tensor::reshape, broadcast_to, full, from_vec): the product "
        "of the non-zero axes times the item size must fit an isize, else Error::Shape"),
    # A result too big for memory: Vec allocation failure aborts the process (SIGABRT).
    "allocation-abort": CoreBug(
        "fx.ones(2**20, 1) + fx.ones(1, 2**20)",
        "allocate tensor buffers with Vec::try_reserve_exact and map the failure to an error (Python "
        "MemoryError), in the elementwise/broadcast kernels, conv/im2col buffers and Tensor::full"),
}


def run_child(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, RUST_BACKTRACE="0")
    return subprocess.run([sys.executable, "-c", "import fluxrs as fx, numpy as np\n" + code],
                          capture_output=True, text=True, timeout=timeout, env=env)


def crashed(r: subprocess.CompletedProcess) -> bool:
    """Killed by a signal (a negative return code), as a segfault or abort does."""
    return r.returncode < 0


@functools.lru_cache(maxsize=None)
def core_bug_present(key: str) -> bool:
    return crashed(run_child(CORE_BUGS[key].repro))


def zero_size_trap(shape) -> bool:
    """Whether a tensor of `shape` hits the "zero-size-layout" bug: a zero-length axis after
    an axis whose length is not 1."""
    shape = tuple(shape)
    return any(s == 0 and any(d != 1 for d in shape[:i]) for i, s in enumerate(shape))


def safe(*shapes) -> bool:
    """No shape among `shapes` can crash the core in this build."""
    if not any(zero_size_trap(s) for s in shapes):
        return True
    return not core_bug_present("zero-size-layout")


# ---------------------------------------------------------------- strategies

FLOATS = [np.float16, np.float32, np.float64]
INTS = [np.int8, np.int32, np.int64, np.uint8]
NUMERIC = FLOATS + INTS + [np.bool_]
SPECIAL = [math.nan, math.inf, -math.inf, 0.0, -0.0]


def shapes(min_dims=0, max_dims=4, min_side=0, max_side=4):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side) \
        .filter(lambda s: safe(s))


def elements(dtype, finite=False, bound=1e3):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        width = dtype.itemsize * 8
        fin = st.floats(-bound, bound, width=width)
        return fin if finite else st.one_of(fin, fin, fin, st.sampled_from(SPECIAL))
    if dtype.kind == "b":
        return st.booleans()
    info = np.iinfo(dtype)
    return st.integers(max(info.min, -1000), min(info.max, 1000))


@st.composite
def laid_out(draw, a: np.ndarray) -> np.ndarray:
    """The same values as `a` in some memory layout: C, Fortran, a transposed view, a strided
    view of a bigger array, or a reversed view."""
    kind = draw(st.sampled_from(["C", "F", "T", "strided", "reversed"]))
    if a.ndim == 0 or kind == "C":
        return a
    if kind == "F":
        return np.asfortranarray(a)
    if kind == "T":
        return np.ascontiguousarray(a.T).T
    if kind == "strided":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    return a[::-1].copy()[::-1]


@st.composite
def arrays(draw, dtype=None, shape=None, finite=False, bound=1e3, **shape_kw):
    dtype = draw(st.sampled_from(NUMERIC)) if dtype is None else dtype
    if not isinstance(dtype, (type, np.dtype)) and hasattr(dtype, "example"):
        dtype = draw(dtype)
    shape = draw(shapes(**shape_kw)) if shape is None else shape
    a = draw(hnp.arrays(dtype, shape, elements=elements(dtype, finite, bound)))
    return draw(laid_out(a))


def float_arrays(**kw):
    return arrays(dtype=st.sampled_from([np.float32, np.float64]), **kw)


#: Values that are not numbers or arrays of numbers.
JUNK = st.one_of(
    st.none(), st.text(max_size=3), st.binary(max_size=3), st.just(object()),
    st.just(np.array([None, 1], dtype=object)), st.just(np.array(["a", "b"])), st.just([[1.0, 2.0], [3.0]]),
    st.just({"a": 1.0}), st.just(lambda x: x), st.complex_numbers(max_magnitude=10, allow_nan=False),
    st.just(np.array([1 + 2j])), st.just({1, 2}), st.integers(2**64, 2**70), st.just(np.datetime64("2020-01-01")),
    st.just([None, None]), st.just(Ellipsis), st.just(fx.Dense(2, 2)),
)


def dtype_of(x) -> np.dtype:
    return np.asarray(x).dtype


@st.composite
def tensors(draw, finite=False, bound=1e3, **shape_kw):
    """A tensor (float32 or float64), and its values as a float64 numpy array. Sometimes a
    non-contiguous view of a tensor (a transpose or a slice)."""
    dt = draw(st.sampled_from(["float32", "float64"]))
    a = draw(arrays(dtype=np.dtype(dt), finite=finite, bound=bound, **shape_kw))
    t = fx.tensor(a, dtype=dt)
    if a.ndim >= 2 and draw(st.booleans()) and safe(a.shape[::-1]):
        t = fx.tensor(np.ascontiguousarray(a.T), dtype=dt).T  # a transposed view
    return t, np.asarray(a)


def as_numpy(t) -> np.ndarray:
    return np.asarray(t.numpy() if isinstance(t, fx.Tensor) else t)


def assert_close(got, want, rtol=1e-5, atol=1e-6, what=""):
    got, want = as_numpy(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, numpy {want.shape}"
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol,
                               equal_nan=True, err_msg=what)


def tol(dtype) -> dict:
    return dict(rtol=2e-3, atol=1e-4) if np.dtype(dtype) == np.float32 else dict(rtol=1e-9, atol=1e-11)


# ---------------------------------------------------------------- construction

@given(st.one_of(arrays(), JUNK, st.lists(st.floats(allow_nan=True), max_size=4), st.floats(), st.integers(-5, 5),
                 st.booleans()),
       st.sampled_from([None, "float32", "float64", np.float16, "int32", "complex64", "foo", object, 5, np.float64]))
def test_tensor_construction(data, dtype):
    ok, t = attempt(fx.tensor, data, dtype)
    if not ok:
        return
    want_dtype = np.dtype(dtype) if dtype is not None else np.dtype("float32")
    assert t.dtype == want_dtype
    want = np.asarray(data).astype(want_dtype)
    assert tuple(t.shape) == want.shape
    np.testing.assert_array_equal(t.numpy(), want)  # exact, NaN where NaN
    assert t.numpy().flags.c_contiguous or t.numpy().size <= 1 or not t.is_contiguous


@given(st.sampled_from([fx.zeros, fx.ones, fx.rand, fx.randn]),
       st.one_of(st.lists(st.integers(-2, 4), max_size=4), st.lists(JUNK, min_size=1, max_size=2),
                 st.lists(st.integers(2**40, 2**70), min_size=1, max_size=3)),
       st.sampled_from([False, True]),
       st.sampled_from(["float32", "float64", "int64", None, "x"]))
def test_constructors(f, shape, packed, dtype):
    args = (tuple(shape),) if packed else tuple(shape)
    try:
        ok, t = attempt(f, *args, dtype=dtype) if dtype is not None else attempt(f, *args)
    except MemoryError:
        return  # a size this machine cannot hold, refused before the core would abort
    if ok:
        assert tuple(t.shape) == tuple(shape)
        if f in (fx.zeros, fx.ones):
            assert np.all(t.numpy() == (0.0 if f is fx.zeros else 1.0))


@given(st.one_of(st.integers(0, 3), st.lists(st.integers(0, 3), max_size=3).map(tuple), JUNK),
       st.one_of(st.floats(), st.integers(-3, 3), JUNK))
def test_full(shape, value):
    ok, t = attempt(fx.full, shape, value)
    if ok:
        want = np.full(shape, value, dtype=np.float32)
        np.testing.assert_array_equal(t.numpy(), want)


# ---------------------------------------------------------------- arithmetic and broadcasting

BINARY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "**": operator.pow,
          "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
          "!=": operator.ne, "maximum": lambda a, b: a.maximum(b), "minimum": lambda a, b: a.minimum(b)}
NP_BINARY = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide, "**": np.power, "<": np.less,
             "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal, "==": np.equal, "!=": np.not_equal,
             "maximum": np.maximum, "minimum": np.minimum}


@st.composite
def operand_pairs(draw):
    """Two shapes that broadcast (usually) or not, a tensor for the left operand and anything
    for the right: a tensor (maybe of the other dtype), a numpy array, a list, a number, junk."""
    if draw(st.integers(0, 4)):
        (sa, sb), _ = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3))
    else:
        sa, sb = draw(shapes(max_dims=3, max_side=3)), draw(shapes(max_dims=3, max_side=3))
    assume(safe(sa, sb))
    ta, a = draw(tensors(shape=sa))
    kind = draw(st.sampled_from(["tensor", "tensor-other", "numpy", "list", "scalar", "junk"]))
    if kind == "junk":
        return ta, a, draw(JUNK), None
    if kind == "scalar":
        v = draw(st.one_of(st.floats(-10, 10), st.integers(-3, 3), st.sampled_from(SPECIAL)))
        return ta, a, v, np.asarray(v, dtype=ta.dtype)
    b = draw(arrays(shape=sb))
    if kind == "tensor":
        return ta, a, fx.tensor(b, dtype=ta.dtype), b.astype(ta.dtype)
    if kind == "tensor-other":
        other = "float64" if ta.dtype == np.float32 else "float32"
        try:
            assume(safe(np.broadcast_shapes(sa, sb)))
        except ValueError:
            pass
        return ta, a, fx.tensor(b, dtype=other), None  # mixed dtypes: fine only when one side is 0-d
    if kind == "list":
        return ta, a, b.tolist(), np.asarray(b.tolist()).astype(ta.dtype)
    return ta, a, b, b.astype(ta.dtype)


@given(st.sampled_from(sorted(BINARY)), operand_pairs(), st.booleans())
def test_arithmetic_and_broadcasting(op, pair, reflected):
    ta, a, other, b = pair
    note(f"{op}: {tuple(ta.shape)} {ta.dtype} with {type(other).__name__} {getattr(other, 'shape', '')}")
    if b is not None:
        try:
            out_shape = np.broadcast_shapes(a.shape, b.shape)
        except ValueError:
            out_shape = None
        assume(out_shape is None or safe(out_shape))
    # `b is None` first: junk such as a ragged list has no np.ndim.
    if reflected and op in ("+", "-", "*", "/", "**") and b is not None and not isinstance(other, fx.Tensor) \
            and np.ndim(other) == 0:
        ok, got = attempt(BINARY[op], other, ta)
        left, right = b, a.astype(ta.dtype)
    else:
        ok, got = attempt(BINARY[op], ta, other)
        left, right = a.astype(ta.dtype), b
    if not ok or right is None or left is None:
        return
    with np.errstate(all="ignore"):
        want = NP_BINARY[op](left, right)
    if want.dtype == bool:
        want = want.astype(ta.dtype)
    assert got.dtype == ta.dtype
    assert_close(got, want, **tol(ta.dtype), what=op)


UNARY = {"exp": np.exp, "log": np.log, "log1p": np.log1p, "sqrt": np.sqrt, "abs": np.abs, "tanh": np.tanh,
         "sin": np.sin, "cos": np.cos, "sign": np.sign, "__neg__": np.negative,
         "sigmoid": lambda x: 1 / (1 + np.exp(-x)), "relu": lambda x: np.where(np.isnan(x), x, np.maximum(x, 0)),
         "softplus": lambda x: np.logaddexp(0, x)}


@given(st.sampled_from(sorted(UNARY)), tensors(bound=50))
def test_elementwise_math(name, ta):
    t, a = ta
    ok, got = attempt(getattr(t, name))
    assert ok, got
    with np.errstate(all="ignore"):
        want = UNARY[name](a.astype(t.dtype))
    assert_close(got, want, **tol(t.dtype), what=name)


# ---------------------------------------------------------------- reductions

def _np_logsumexp(a, axis, keepdims):
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    with np.errstate(all="ignore"):
        out = np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


NP_REDUCE = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min, "logsumexp": _np_logsumexp}


@st.composite
def axes_for(draw, ndim):
    return draw(st.one_of(
        st.none(), st.integers(-ndim - 1, ndim),
        st.lists(st.integers(-ndim, max(ndim - 1, 0)), max_size=3).map(tuple),
        st.just([0]) if ndim else st.just([]), JUNK))


@given(st.data(), st.sampled_from(sorted(NP_REDUCE)), tensors(bound=100), st.booleans())
def test_reductions(data, name, ta, keepdims):
    t, a = ta
    axis = data.draw(axes_for(t.ndim), label="axis")
    # bytes are a sequence of small ints to the binding: b"" reduces over no axes, as () does
    assume(not isinstance(axis, (bytes, bytearray)))
    a = a.astype(t.dtype)
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ax = tuple(axis) if isinstance(axis, list) else axis
            want = np.asarray(NP_REDUCE[name](a, axis=ax, keepdims=keepdims))
    except Exception:
        want = None  # numpy refuses (axis out of range, repeated, junk, empty max): so must fluxrs
    if want is not None:
        assume(safe(want.shape))
    ok, got = attempt(getattr(t, name), axis, keepdims)
    if want is None:
        assert not ok, f"numpy refuses {name}(axis={axis!r}) on {a.shape}, fluxrs gave {got!r}"
        return
    if not ok:
        # where numpy answers and fluxrs refuses: max/min/logsumexp of nothing, and an explicit
        # axis of a 0-d tensor (numpy's legacy leniency; fluxrs says the axis is out of range)
        assert (name in ("max", "min", "logsumexp") and a.size == 0) or (a.ndim == 0 and axis is not None), got
        return
    n = max(a.size, 1)
    if name in ("sum", "mean"):
        with np.errstate(all="ignore"):
            scale = np.asarray(NP_REDUCE[name](np.abs(a.astype(np.float64)), axis=ax, keepdims=keepdims))
        bound = np.where(np.isfinite(scale), scale, 0) * n * np.finfo(t.dtype).eps * 4 + 1e-6
        got_a, want_a = as_numpy(got).astype(np.float64), want.astype(np.float64)
        assert got_a.shape == want_a.shape
        assert np.array_equal(np.isnan(got_a), np.isnan(want_a)), (got_a, want_a)
        fin = np.isfinite(want_a)
        assert np.array_equal(got_a[~fin & ~np.isnan(want_a)], want_a[~fin & ~np.isnan(want_a)])
        assert np.all(np.abs(got_a - want_a)[fin] <= np.broadcast_to(bound, want_a.shape)[fin])
    else:
        assert_close(got, want, **tol(t.dtype), what=name)


# ---------------------------------------------------------------- shapes and indexing

@given(st.data(), tensors(max_side=3))
def test_reshape_and_transpose(data, ta):
    t, a = ta
    n = a.size
    new = data.draw(st.one_of(
        st.lists(st.integers(0, 6), max_size=4).filter(lambda s: math.prod(s) == n),
        st.permutations(list(a.shape) + [1]).map(list),
        st.lists(st.integers(-2, 6), min_size=1, max_size=3),
        st.just([-1]), st.just([n, -1]) if n else st.just([0, -1]), JUNK), label="shape")
    try:
        want = a.reshape(new)
    except Exception:
        want = None
    if want is not None:
        assume(safe(want.shape))
    ok, got = attempt(t.reshape, new)
    if ok:
        assert want is not None, f"numpy refuses reshape to {new!r}, fluxrs gives {tuple(got.shape)}"
        np.testing.assert_array_equal(got.numpy(), want.astype(t.dtype))
    perm = data.draw(st.one_of(st.permutations(range(a.ndim)).map(tuple), st.lists(st.integers(-4, 4), max_size=4)
                               .map(tuple), JUNK), label="perm")
    try:
        want = np.transpose(a, perm)
    except Exception:
        want = None
    if want is not None:
        assume(safe(want.shape))
    ok, got = attempt(t.transpose, perm)
    if ok:
        assert want is not None, f"numpy refuses transpose{perm!r}, fluxrs gives {tuple(got.shape)}"
        np.testing.assert_array_equal(got.numpy(), want.astype(t.dtype))
    if a.ndim >= 2 and safe(a.T.shape):
        np.testing.assert_array_equal(t.T.numpy(), a.T.astype(t.dtype))


@st.composite
def index_keys(draw, shape):
    basic = hnp.basic_indices(shape, min_dims=0, allow_newaxis=True, allow_ellipsis=True)
    n0 = shape[0] if shape else 1
    arr = st.one_of(
        st.lists(st.integers(-n0, max(n0 - 1, 0)), max_size=3).map(lambda v: np.asarray(v, dtype=np.int64)),
        hnp.arrays(np.bool_, (n0,)),
    )
    wild = st.one_of(st.integers(-2**70, 2**70), st.floats(), st.just(slice(None, None, -1)), st.just((0, 0, 0, 0)),
                     JUNK)
    return draw(st.one_of(basic, basic, arr, wild))


@given(st.data(), tensors(max_side=4, max_dims=3))
def test_indexing(data, ta):
    t, a = ta
    key = data.draw(index_keys(a.shape), label="key")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            want = a[key]
    except Exception:
        want = None
    if want is not None:
        assume(safe(np.shape(want)))
    ok, got = attempt(t.__getitem__, key)
    if ok:
        assert want is not None, f"numpy refuses index {key!r}, fluxrs gives {tuple(got.shape)}"
        want = np.asarray(want).astype(t.dtype)
        np.testing.assert_array_equal(got.numpy(), want)
        # and through a kernel, which reads the view's storage by its own offset
        np.testing.assert_array_equal((got * 2.0).numpy(), want * 2)


#: Views with no elements whose offset would lie past the end of their buffer: (base, key).
_EMPTY_VIEWS = {
    "columns 1::2 of (0, 6)": (np.zeros((0, 6), np.float32), lambda b: b[..., 1::2]),
    "row 1 of (4, 0)": (np.zeros((4, 0), np.float32), lambda b: b[1]),
    "rows 2: of (4, 0)": (np.zeros((4, 0), np.float32), lambda b: b[2:]),
    "rows 2: of a (0, 4) transposed": (np.zeros((0, 4), np.float32), lambda b: b.T[2:]),
    "rows 2: of the last column of (2, 3)": (np.arange(6, dtype=np.float32).reshape(2, 3), lambda b: b[:, 2:][2:]),
}


_EMPTY_VIEW_OPS = {
    "numpy": lambda v: v.numpy(),
    "add a number": lambda v: (v + 1.0).numpy(),
    "multiply by itself": lambda v: (v * v).numpy(),
    "exp": lambda v: v.exp().numpy(),
    "sum": lambda v: v.sum().numpy(),
    "sum over axis 0": lambda v: v.sum(axis=0).numpy(),
    "reshape": lambda v: v.reshape(-1).numpy(),
    "transpose then add": lambda v: (v.T + 1.0).numpy(),
    "matmul": lambda v: (v @ fx.zeros(v.shape[-1], 2)).numpy(),
    "index": lambda v: v[..., :1].numpy(),
    "gradient": lambda v: fx.gradient(lambda u: (u * u).sum(), v)[0].numpy(),
    "AlphaDropout": lambda v: fx.AlphaDropout(0.3, active=True)(v).numpy(),
    "Dropout": lambda v: fx.Dropout(0.5, active=True)(v).numpy(),
}


@pytest.mark.parametrize("op", sorted(_EMPTY_VIEW_OPS))
@pytest.mark.parametrize("view", sorted(_EMPTY_VIEWS))
def test_empty_views_go_through_every_op(view, op):
    """An empty view whose offset would lie past its buffer (as slicing and indexing make
    them) gives what a fresh tensor of its shape gives, never an internal error."""
    base, key = _EMPTY_VIEWS[view]
    a, t = key(base), key(fx.tensor(base))
    assert tuple(t.shape) == a.shape and a.size == 0
    got = _EMPTY_VIEW_OPS[op](t)
    want = _EMPTY_VIEW_OPS[op](fx.tensor(np.ascontiguousarray(a)))  # a fresh tensor of that shape
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_writes_into_empty_views_change_nothing():
    t = fx.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    v = t[:, 2:][2:]
    v[...] = 7.0
    t[:, 2:][2:] = 7.0
    fx.tensor(np.zeros((4, 0), np.float32))[1][...] = 1.0
    np.testing.assert_array_equal(t.numpy(), np.arange(6, dtype=np.float32).reshape(2, 3))


@given(st.data(), tensors(max_side=4, max_dims=3))
def test_writes_through_basic_indices_land_in_place(data, ta):
    """``t[key] = v`` for integer/slice/ellipsis keys writes where numpy's does: columns and
    strided slices are views, not copies that swallow the write (negative steps are not
    supported, and say so)."""
    t, a = ta
    key = data.draw(hnp.basic_indices(a.shape, min_dims=0, allow_newaxis=False, allow_ellipsis=True)
                    .filter(lambda k: not any(isinstance(p, slice) and (p.step or 1) < 0
                                              for p in (k if isinstance(k, tuple) else (k,)))), label="key")
    want = np.array(a, dtype=t.dtype)
    want[key] = 7.0
    t[key] = 7.0
    np.testing.assert_array_equal(t.numpy(), want)


@given(st.data(), st.integers(1, 3), st.sampled_from([fx.concat, fx.stack]))
def test_concat_and_stack(data, k, f):
    shape = data.draw(shapes(max_dims=3, max_side=3), label="shape")
    parts = []
    for _ in range(k):
        s = list(shape)
        if s and data.draw(st.booleans()):
            s[0] = data.draw(st.integers(0, 3))  # other lengths on axis 0: fine for concat only
        parts.append(data.draw(arrays(dtype=np.float32, shape=tuple(s))))
    axis = data.draw(st.one_of(st.integers(-4, 4), JUNK), label="axis")
    items = [fx.tensor(p) if data.draw(st.booleans()) else p for p in parts] + data.draw(
        st.lists(JUNK, max_size=1), label="junk items")
    try:
        want = (np.concatenate if f is fx.concat else np.stack)(parts, axis=axis)
    except Exception:
        want = None
    # every part, and every part with the new axis stack gives it, must be safe for the core
    assume(safe(*(p.shape for p in parts)))
    if isinstance(axis, int) and not isinstance(axis, bool) and -4 <= axis <= 4:
        assume(safe(*(np.expand_dims(p, axis).shape for p in parts if -p.ndim - 1 <= axis <= p.ndim)))
    if want is not None:
        assume(safe(want.shape))
    ok, got = attempt(f, items, axis)
    if ok:
        assert want is not None and len(items) == len(parts), f"numpy refuses, fluxrs gives {tuple(got.shape)}"
        np.testing.assert_array_equal(got.numpy(), want)


# ---------------------------------------------------------------- matmul

@st.composite
def matmul_operands(draw):
    if draw(st.integers(0, 3)):
        n, k, m = (draw(st.integers(0, 4)) for _ in range(3))
        batch = draw(st.lists(st.integers(1, 3), max_size=2))
        sa = tuple(batch) + (n, k) if draw(st.booleans()) else (k,)
        sb = (k, m) if draw(st.booleans()) else (k,)
        if draw(st.booleans()):
            sb = tuple(batch) + sb if len(sb) == 2 else sb
    else:
        sa, sb = draw(shapes(max_dims=3)), draw(shapes(max_dims=3))
    return sa, sb


@given(matmul_operands(), st.sampled_from(["float32", "float64"]), st.booleans())
def test_matmul(sab, dt, finite):
    sa, sb = sab
    a = np.random.default_rng(len(sa) * 7 + len(sb)).normal(size=sa)
    b = np.random.default_rng(len(sb)).normal(size=sb)
    if not finite and a.size:
        a.flat[0] = math.nan
    try:
        want = np.matmul(a.astype(dt), b.astype(dt))
    except Exception:
        want = None
    assume(safe(sa, sb, np.shape(want) if want is not None else ()))
    if want is not None and a.ndim >= 2 and b.ndim >= 2:
        assume(safe(a.shape[:-2] + (a.shape[-1], a.shape[-2]), b.shape[:-2] + (b.shape[-1], b.shape[-2])))
    ok, got = attempt(operator.matmul, fx.tensor(a, dtype=dt), fx.tensor(b, dtype=dt))
    if want is None:
        assert not ok, f"numpy refuses {sa} @ {sb}, fluxrs gives {tuple(got.shape)}"
        return
    assert ok, got
    assert_close(got, want, **tol(dt), what=f"{sa} @ {sb}")


# ---------------------------------------------------------------- softmax and activations

def _np_softmax(x, axis):
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / e.sum(axis=axis, keepdims=True)


@given(st.data(), tensors(bound=30, min_dims=1), st.sampled_from([fx.softmax, fx.logsoftmax]))
def test_softmax(data, ta, f):
    t, a = ta
    dims = data.draw(st.one_of(st.integers(-t.ndim - 1, t.ndim), JUNK), label="dims")
    ok, got = attempt(f, t, dims)
    in_range = isinstance(dims, int) and not isinstance(dims, bool) and -t.ndim <= dims < t.ndim
    if not in_range:
        assert not ok, f"{f.__name__}(dims={dims!r}) on {a.shape} should be refused"
        return
    assert ok, got
    assert tuple(got.shape) == a.shape
    if a.size == 0:
        return
    with np.errstate(all="ignore"):
        a = a.astype(t.dtype)
        want = _np_softmax(a, dims)
        if f is fx.logsoftmax:
            m = np.max(a, axis=dims, keepdims=True)
            want = a - m - np.log(np.exp(a - m).sum(axis=dims, keepdims=True))
    # compare where the slice along `dims` is finite (infinities have several honest answers)
    finite = np.broadcast_to(np.all(np.isfinite(a), axis=dims, keepdims=True), a.shape)
    got_a = as_numpy(got)
    assert got_a.shape == a.shape
    np.testing.assert_allclose(got_a[finite], want[finite], **tol(t.dtype))
    assert np.all(np.isnan(got_a)[np.broadcast_to(np.any(np.isnan(a), axis=dims, keepdims=True), a.shape)])


_SELU_L, _SELU_A = 1.0507009873554805, 1.6732632423543772


def _sig(x):
    return 1 / (1 + np.exp(-x))


NP_ACT = {
    "identity": lambda x: x, "sigmoid": _sig, "relu": lambda x: np.where(x > 0, x, 0 * x), "tanh": np.tanh,
    "leakyrelu": lambda x: np.where(x > 0, x, 0.01 * x), "elu": lambda x: np.where(x > 0, x, np.expm1(x)),
    "gelu": lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))),
    "swish": lambda x: x * _sig(x), "hardswish": lambda x: x * np.clip((x + 3) / 6, 0, 1),
    "lisht": lambda x: x * np.tanh(x), "softplus": lambda x: np.logaddexp(0, x),
    "logsigmoid": lambda x: -np.logaddexp(0, -x), "celu": lambda x: np.where(x > 0, x, np.expm1(x)),
    "selu": lambda x: _SELU_L * np.where(x > 0, x, _SELU_A * np.expm1(x)),
    "hardsigmoid": lambda x: np.clip((x + 3) / 6, 0, 1), "hardtanh": lambda x: np.clip(x, -1, 1),
    "relu6": lambda x: np.clip(x, 0, 6), "mish": lambda x: x * np.tanh(np.logaddexp(0, x)),
    "tanhshrink": lambda x: x - np.tanh(x), "softsign": lambda x: x / (1 + np.abs(x)),
}


@given(st.sampled_from(sorted(NP_ACT)), st.one_of(tensors(bound=20).map(lambda p: ("tensor", p)),
                                                  arrays(bound=20).map(lambda a: ("array", a)),
                                                  st.floats(-20, 20).map(lambda v: ("number", v)),
                                                  JUNK.map(lambda j: ("junk", j))))
def test_activations(name, arg):
    f = getattr(fx, name)
    kind, x = arg
    if kind == "tensor":
        t, a = x
        ok, got = attempt(f, t)
        dt = t.dtype
    else:
        if kind == "array":
            assume(safe(np.shape(x)))
        ok, got = attempt(f, x)
        if kind == "junk":
            if name == "identity":  # Julia's identity: anything passes through, unconverted
                assert ok and got is x
                return
            assert not ok or isinstance(x, (bool, int, np.ndarray)), f"{name}({x!r}) should be refused"
            return
        a = np.asarray(x)
        dt = np.dtype("float64") if kind == "number" else np.dtype("float32")
    assert ok, got
    if kind == "number":
        assert isinstance(got, float)
    a = a.astype(np.float64).astype(dt)
    with np.errstate(all="ignore"):
        want = NP_ACT[name](a.astype(np.float64))
    got_a = as_numpy(got)
    assert got_a.shape == a.shape
    fin = np.isfinite(a)
    np.testing.assert_allclose(got_a[fin].astype(np.float64), want[fin], rtol=1e-3 if dt == np.float32 else 1e-7,
                               atol=1e-5 if dt == np.float32 else 1e-10, err_msg=name)
    assert np.all(np.isnan(got_a[np.isnan(a)])), f"{name} must let NaN through"


@given(st.sampled_from(["leakyrelu", "elu", "celu", "softmax", "logsoftmax"]), st.one_of(JUNK, st.floats()))
def test_activation_parameters(name, p):
    attempt(getattr(fx, name), fx.ones(2, 3), p)


# ---------------------------------------------------------------- losses

LOSSES = ["mae", "mse", "msle", "huber_loss", "crossentropy", "logitcrossentropy", "binarycrossentropy",
          "logitbinarycrossentropy", "kldivergence", "poisson_loss", "hinge_loss", "squared_hinge_loss",
          "dice_coeff_loss", "tversky_loss", "binary_focal_loss", "focal_loss", "siamese_contrastive_loss",
          "ctc_loss"]


@st.composite
def loss_arguments(draw):
    shape = draw(shapes(max_dims=3, max_side=3))
    yhat = draw(st.one_of(tensors(shape=shape, bound=5).map(lambda p: p[0]), arrays(shape=shape, bound=5), JUNK))
    y = draw(st.one_of(arrays(shape=shape, bound=5), arrays(shape=draw(shapes(max_dims=3, max_side=3)), bound=5),
                       st.floats(0, 1), st.none(), JUNK))
    kw = draw(st.dictionaries(st.sampled_from(["agg", "dims", "eps", "delta", "gamma", "beta", "margin", "smooth",
                                               "label_smoothing", "blank", "bogus"]),
                              st.one_of(st.floats(-1, 2), st.integers(-3, 3), st.sampled_from(["mean", "sum", "x"]),
                                        JUNK), max_size=2))
    return yhat, y, kw


@given(st.sampled_from(["xlogx", "xlogy", "label_smoothing"]),
       st.one_of(arrays(max_dims=2, max_side=3, bound=5), tensors(max_dims=2, max_side=3, bound=5).map(lambda p: p[0]),
                 st.floats(-2, 2), JUNK),
       st.one_of(arrays(max_dims=2, max_side=3, bound=5), st.floats(-1, 2), JUNK))
def test_loss_helpers(name, x, y):
    f = getattr(fx.losses, name)
    ok, got = attempt(f, x) if name == "xlogx" else attempt(f, x, y)
    if ok and name == "xlogx" and isinstance(x, np.ndarray) and x.dtype.kind == "f":
        a = x.astype(np.float64)
        with np.errstate(all="ignore"):
            want = np.where(a == 0, 0.0, a * np.log(np.where(a == 0, 1.0, a)))
        np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=1e-12, equal_nan=True)


@given(st.sampled_from(LOSSES), loss_arguments())
def test_losses(name, args):
    yhat, y, kw = args
    f = getattr(fx.losses, name)
    if name == "ctc_loss" and isinstance(y, np.ndarray) and y.ndim == 1 and y.dtype.kind in "biuf":
        y = np.abs(y).astype(np.int64) % 2  # sometimes valid labels
    try:
        ok, got = attempt(f, yhat, y, **kw)
    except FloatingPointError:
        return
    if not ok:
        return
    assert isinstance(got, (fx.Tensor, float, np.ndarray)) or callable(kw.get("agg")), type(got)
    if name in ("mse", "mae") and not kw and isinstance(y, np.ndarray) and isinstance(yhat, fx.Tensor):
        a = yhat.numpy().astype(np.float64)
        b = y.astype(yhat.dtype).astype(np.float64)
        with np.errstate(all="ignore"):
            want = np.mean((a - b) ** 2 if name == "mse" else np.abs(a - b))
        assert_close(got, want, rtol=1e-4, atol=1e-5, what=name)


# ---------------------------------------------------------------- layers

@st.composite
def layer_inputs(draw, features=None, min_dims=1, max_dims=3):
    """An input for a layer: tensor or numpy array of some dtype and layout, whose last axis
    is usually `features`, or junk."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JUNK)
    lead = draw(st.lists(st.integers(0, 3), min_size=max(min_dims - 1, 0), max_size=max_dims - 1))
    last = features if features is not None and draw(st.integers(0, 4)) else draw(st.integers(0, 4))
    shape = tuple(lead) + (last,)
    assume(safe(shape))
    return draw(as_any_input(draw(arrays(shape=shape, bound=5))))


@st.composite
def as_any_input(draw, a: np.ndarray):
    """`a` as a layer may receive it: the numpy array, a nested list, a float32 tensor, or a
    strided view of a tensor."""
    kind = draw(st.sampled_from(["numpy", "list", "tensor", "view"]))
    if kind == "list":
        return a.tolist()
    if kind == "tensor" or (kind == "view" and (a.ndim == 0 or not safe(a.shape[:-1] + (2 * a.shape[-1],)))):
        return fx.tensor(a, dtype="float32")
    if kind == "view":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=np.float32)
        big[..., 1::2] = a
        return fx.tensor(big)[..., 1::2]
    return a


@given(st.integers(1, 4), st.integers(1, 4), st.sampled_from([fx.identity, fx.relu, fx.sigmoid, fx.tanh, fx.gelu]),
       st.booleans(), st.data())
def test_dense(n_in, n_out, act, bias, data):
    assume(safe((n_out, n_in), (n_in, n_out)))
    fx.seed_(0)
    d = fx.Dense(n_in, n_out, act, bias=bias)
    x = data.draw(layer_inputs(n_in), label="x")
    if hasattr(x, "shape"):
        assume(safe(tuple(x.shape)[:-1] + (n_out,)))
    ok, y = attempt(d, x)
    if not ok:
        if isinstance(y, ValueError) and "features" in str(y):
            assert f"Dense({n_in} => {n_out}" in str(y) and str(tuple(np.shape(x))) in str(y)
        return
    a = as_numpy(x).astype(np.float32).astype(np.float64)
    w = d.weight.numpy().astype(np.float64)
    z = a @ w.T + (d.bias.numpy() if bias else 0)
    with np.errstate(all="ignore"):
        want = NP_ACT[act.__name__](z)
    assert y.shape == want.shape
    fin = np.isfinite(a).all(axis=-1) if a.ndim else np.isfinite(a)
    np.testing.assert_allclose(as_numpy(y)[fin], want[fin], rtol=1e-3, atol=1e-4)


LAYERS = {
    "Chain": lambda: fx.Chain(fx.Dense(3, 4, fx.relu), fx.Dense(4, 2), fx.softmax),
    "BatchNorm": lambda: fx.BatchNorm(3), "BatchNorm-train": lambda: fx.trainmode_(fx.BatchNorm(3, fx.relu)),
    "LayerNorm": lambda: fx.LayerNorm(3), "GroupNorm": lambda: fx.GroupNorm(3, 3),
    "InstanceNorm": lambda: fx.InstanceNorm(3, affine=True),
    "InstanceNorm-train": lambda: fx.trainmode_(fx.InstanceNorm(3, track_stats=True)),
    "Dropout": lambda: fx.trainmode_(fx.Dropout(0.5)), "AlphaDropout": lambda: fx.trainmode_(fx.AlphaDropout(0.3)),
    "Scale": lambda: fx.Scale(3, fx.tanh), "Bilinear": lambda: fx.Bilinear(3, 2),
    "Embedding": lambda: fx.Embedding(3, 2), "Maxout": lambda: fx.Maxout(lambda: fx.Dense(3, 2), 2),
    "Parallel": lambda: fx.Parallel(lambda a, b: a + b, fx.Dense(3, 2), fx.Dense(3, 2)),
    "SkipConnection": lambda: fx.SkipConnection(fx.Dense(3, 3), operator.add),
    "PairwiseFusion": lambda: fx.PairwiseFusion(operator.add, fx.Dense(3, 3), fx.Dense(3, 3)),
    "RNNCell": lambda: fx.RNNCell(3, 2), "LSTMCell": lambda: fx.LSTMCell(3, 2), "GRUCell": lambda: fx.GRUCell(3, 2),
    "RNN": lambda: fx.RNN(3, 2), "LSTM": lambda: fx.LSTM(3, 2, return_state=True), "GRU": lambda: fx.GRU(3, 2),
    "Bidirectional": lambda: fx.Bidirectional(fx.LSTM(3, 2)),
    "MultiHeadAttention": lambda: fx.MultiHeadAttention(3, nheads=1),
    "Conv": lambda: fx.Conv((2,), (3, 2), fx.relu),
    "Conv2d": lambda: fx.Conv((2, 2), (3, 2), pad=1, stride=2), "CrossCor": lambda: fx.CrossCor((2,), (3, 2)),
    "ConvTranspose": lambda: fx.ConvTranspose((2,), (3, 2), stride=2),
    "DepthwiseConv": lambda: fx.DepthwiseConv((2,), (3, 3)),
    "MaxPool": lambda: fx.MaxPool((2,)), "MeanPool": lambda: fx.MeanPool((2, 2), pad=1),
    "AdaptiveMaxPool": lambda: fx.AdaptiveMaxPool((2,)), "AdaptiveMeanPool": lambda: fx.AdaptiveMeanPool((1, 1)),
    "GlobalMaxPool": lambda: fx.GlobalMaxPool(), "GlobalMeanPool": lambda: fx.GlobalMeanPool(),
    "Flatten": lambda: fx.Flatten(), "Upsample": lambda: fx.Upsample(scale=2),
    "Upsample-bilinear": lambda: fx.Upsample("bilinear", size=(3, 3)),
}

#: Layers whose input has the channels (3) on axis 1 rather than the features on the last axis.
CHANNELS_FIRST = {"BatchNorm", "BatchNorm-train", "GroupNorm", "InstanceNorm", "InstanceNorm-train", "Conv", "Conv2d",
                  "CrossCor", "ConvTranspose", "DepthwiseConv", "MaxPool", "MeanPool", "AdaptiveMaxPool",
                  "AdaptiveMeanPool", "GlobalMaxPool", "GlobalMeanPool", "Upsample", "Upsample-bilinear"}


@st.composite
def channels_first_inputs(draw):
    if draw(st.integers(0, 9)) == 0:
        return draw(JUNK)
    nd = draw(st.integers(1, 5))
    shape = [draw(st.integers(0, 4)) for _ in range(nd)]
    if nd >= 2 and draw(st.integers(0, 3)):
        shape[1] = 3
    shape = tuple(shape)
    assume(safe(shape))
    return draw(as_any_input(draw(arrays(shape=shape, bound=5))))


@given(st.sampled_from(sorted(LAYERS)), st.data())
def test_layers(name, data):
    fx.seed_(1)
    layer = LAYERS[name]()
    x = data.draw(channels_first_inputs() if name in CHANNELS_FIRST else layer_inputs(3, max_dims=4), label="x")
    if name == "Embedding" and data.draw(st.booleans(), label="indices"):
        x = data.draw(st.one_of(hnp.arrays(np.int64, shapes(max_dims=2, max_side=3), elements=st.integers(-4, 5)),
                                st.integers(-4, 5), st.just(np.array([2**63], dtype=np.uint64))), label="indices")
    try:
        shape = tuple(np.shape(x)) if hasattr(x, "shape") or isinstance(x, list) else None
    except ValueError:  # a ragged list
        shape = None
    if shape is not None:
        # a zero-length axis after the first would reach the core's intermediates in many
        # shapes; a zero-length batch (axis 0) is safe everywhere
        assume(0 not in shape[1:] or safe((2, 0)))
    ok, y = attempt(layer, x)
    if not ok:
        return
    outs = y if isinstance(y, tuple) else (y,)
    for o in outs:
        if isinstance(o, tuple):  # a recurrent state
            continue
        assert isinstance(o, fx.Tensor), type(o)
        if shape is not None and np.all(np.isfinite(as_numpy(x).astype(np.float64))) and name not in ("Dropout",):
            assert np.all(np.isfinite(o.numpy())), f"{name}: finite input, non-finite output"


@given(st.sampled_from(sorted({"Dense", "Conv", "BatchNorm", "LayerNorm", "GroupNorm", "RNN", "LSTM", "GRU",
                               "Embedding", "Bilinear", "Scale", "Dropout", "MultiHeadAttention", "MaxPool",
                               "Upsample", "Maxout", "Chain"})),
       st.lists(st.one_of(st.integers(-2, 4), st.tuples(st.integers(-1, 3), st.integers(-1, 3)), st.floats(-1, 2),
                          JUNK), max_size=3))
def test_layer_constructors(name, args):
    attempt(getattr(fx, name), *args)


# ---------------------------------------------------------------- gradient

@given(st.one_of(
    float_arrays(bound=10, max_dims=3, max_side=3).map(lambda a: ("array", a)),
    tensors(bound=10, max_dims=3, max_side=3).map(lambda p: ("tensor", p)),
    st.floats(-10, 10).map(lambda v: ("number", v)),
    st.integers(-5, 5).map(lambda v: ("number", v)),
    st.lists(st.floats(-3, 3), max_size=3).map(lambda v: ("list", v)),
    JUNK.map(lambda j: ("junk", j))))
def test_gradient_of_a_sum_of_squares(arg):
    kind, x = arg
    if kind == "tensor":
        x = x[0]

    def f(v):
        if not isinstance(v, fx.Tensor):
            v = fx.tensor(v)
        return (v * v).sum()

    ok, g = attempt(fx.gradient, f, x)
    if not ok or kind in ("junk", "list"):
        return
    (g,) = g
    if kind == "number":
        assert g == pytest.approx(2 * x)
        return
    a = as_numpy(x).astype(np.float64)
    if g is None:
        return
    assert tuple(g.shape) == a.shape
    np.testing.assert_allclose(g.numpy().astype(np.float64), 2 * a, rtol=1e-6, equal_nan=True)


@given(st.one_of(JUNK, st.integers(), st.just(fx.ones(3))), st.one_of(JUNK, tensors().map(lambda p: p[0])))
def test_gradient_with_wrong_arguments(f, x):
    for g in (fx.gradient, fx.withgradient, fx.pullback):
        attempt(g, f, x)
    ok, r = attempt(fx.pullback, lambda v: v * 2, fx.ones(3))
    assert ok
    attempt(r[1], x)


# ---------------------------------------------------------------- optimisers

RULES = ["Descent", "Momentum", "Nesterov", "Adam", "AdamW", "RMSProp", "AdaGrad", "AdaMax", "NAdam", "RAdam",
         "OAdam", "AdaDelta", "AMSGrad", "AdaBelief", "Lion", "Rprop", "ClipGrad", "ClipNorm", "WeightDecay",
         "SignDecay"]


def _snapshot(model, opt):
    return fx.state(model), [[a.numpy().copy() for a in per] for per in _opt_arrays(opt)]


def _opt_arrays(opt):
    from fluxrs.io import _opt_leaves
    out = []
    for _, leaf in _opt_leaves(opt):
        s = leaf.state
        if isinstance(s, _core.OptState):
            out.extend(s.arrays)
    return out


@given(st.sampled_from([r for r in RULES if hasattr(fx, r)]),
       st.lists(st.one_of(st.floats(-1, 1), st.floats(allow_nan=True), JUNK), max_size=2),
       st.data())
def test_update_applies_whole_steps_or_refuses_without_changes(rule_name, hyper, data):
    ok, rule = attempt(getattr(fx, rule_name), *hyper)
    if not ok:
        return
    fx.seed_(2)
    model = fx.Chain(fx.Dense(2, 3, fx.tanh), fx.Dense(3, 1))
    ok, opt = attempt(fx.setup, rule, model)
    assert ok, opt
    kind = data.draw(st.sampled_from(["good", "nan", "shape", "junk", "partial"]), label="grad")
    if kind == "junk":
        grad = data.draw(JUNK)
    else:
        (grad,) = fx.gradient(lambda m: m(np.ones((4, 2), np.float32)).sum(), model)
        if kind == "nan":
            grad.layers[0].weight.assign_(math.nan)
        elif kind == "shape":
            grad.layers[1].weight = fx.ones(2, 2)
        elif kind == "partial":
            grad.layers = (None, grad.layers[1])
    before = _snapshot(model, opt)
    try:
        ok, res = attempt(fx.update_, opt, model, grad)
    except FloatingPointError:
        ok, res = False, None
    after = _snapshot(model, opt)
    if not ok:  # refused: nothing may have changed
        for k, (a, b) in enumerate(zip(before[1], after[1])):
            for u, v in zip(a, b):
                np.testing.assert_array_equal(u, v, err_msg=f"optimiser state array {k}")
        _assert_same_state(before[0], after[0])


def _assert_same_state(a, b, path="model"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same_state(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        for i, (u, v) in enumerate(zip(a, b)):
            _assert_same_state(u, v, f"{path}[{i}]")
    elif a is not None:
        np.testing.assert_array_equal(a, b, err_msg=path)


# ---------------------------------------------------------------- data

@given(st.one_of(
    arrays(max_dims=3, max_side=4, min_dims=1),
    st.tuples(arrays(shape=(3, 2)), arrays(shape=(3,))),
    st.tuples(arrays(shape=(3, 2)), arrays(shape=(2,))),
    st.dictionaries(st.sampled_from("xyz"), arrays(shape=(2, 2)), max_size=2),
    st.lists(st.tuples(st.floats(-1, 1), st.integers(0, 3)), max_size=5),
    tensors(max_dims=3, max_side=3).map(lambda p: p[0]),
    JUNK),
    st.one_of(st.integers(-1, 5), JUNK), st.booleans(), st.booleans(), st.sampled_from([None, True]))
def test_dataloader(data, batchsize, shuffle, partial, collate):
    assume(not hasattr(data, "shape") or safe(tuple(data.shape)))
    ok, loader = attempt(fx.DataLoader, data, batchsize=batchsize, shuffle=shuffle, partial=partial, collate=collate)
    if not ok:
        return
    ok, batches = attempt(list, loader)
    assert ok, batches
    assert len(batches) == len(loader)
    seen = 0
    for b in batches:
        first = b[0] if isinstance(b, tuple) else next(iter(b.values())) if isinstance(b, dict) and b else b
        if isinstance(first, (fx.Tensor, np.ndarray)):
            n = first.shape[0]
        else:
            n = len(first) if not isinstance(b, tuple) else len(b[0])
        assert n <= loader.batchsize
        seen += n if not isinstance(b, list) else len(b)
    if partial and not (isinstance(data, list) and collate):
        assert seen == loader.nobs or isinstance(data, list)


@given(st.lists(st.one_of(st.integers(0, 4), st.sampled_from("abc"), JUNK), max_size=6),
       st.one_of(st.just(range(5)), st.just(list("abc")), st.just([0, "a", 1.5]), JUNK),
       st.one_of(st.none(), st.integers(0, 4), st.just("a")))
def test_onehot_round_trip(labels, classes, default):
    ok, y = attempt(fx.onehotbatch, labels, classes, default)
    if not ok:
        return
    cl = list(classes)
    lab = np.asarray(labels, dtype=object)  # labels of shape S (arrays inside are an axis) give S + (classes,)
    assert tuple(y.shape) == lab.shape + (len(cl),)
    assert np.all(y.numpy().sum(axis=-1) == 1)
    back = np.asarray(fx.onecold(y, cl), dtype=object).reshape(-1)
    for want, got in zip(lab.reshape(-1), back):
        assert got == want or (got == default and want not in cl)


@given(st.one_of(arrays(max_dims=3, max_side=3), tensors().map(lambda p: p[0]), JUNK),
       st.one_of(st.none(), st.just(range(3)), st.just(list("abcd")), JUNK))
def test_onecold(y, classes):
    assume(not hasattr(y, "shape") or safe(tuple(y.shape)))
    ok, got = attempt(fx.onecold, y, classes)
    if ok and classes is None:
        a = as_numpy(y)
        # no observations and no classes: nothing to choose (numpy's argmax refuses an empty axis)
        want = np.zeros(a.shape[:-1], np.int64) if a.size == 0 and a.shape[-1] == 0 else a.argmax(axis=-1)
        np.testing.assert_array_equal(np.asarray(got), want)


# ---------------------------------------------------------------- save and load

MODELS = {
    "dense": lambda: fx.Chain(fx.Dense(2, 3, fx.relu), fx.Dense(3, 1)),
    "norm": lambda: fx.Chain(fx.Dense(2, 3), fx.BatchNorm(3), fx.LayerNorm(3)),
    "rnn": lambda: fx.Chain(fx.GRU(2, 3), fx.Dense(3, 1)),
    "conv": lambda: fx.Chain(fx.Conv((2,), (1, 2)), fx.Flatten()),
    "tensor": lambda: fx.ones(3),
    "dict": lambda: {"a": fx.ones(2), "b": [fx.zeros(1, 2), fx.Dense(1, 1)]},
}


@given(st.sampled_from(sorted(MODELS)), st.sampled_from([None, "Adam", "Momentum"]),
       st.dictionaries(st.sampled_from(["step", "note", "rng", "bad"]),
                       st.one_of(st.integers(), st.text(max_size=5), st.lists(st.floats(allow_nan=False), max_size=2),
                                 JUNK), max_size=2),
       st.integers(0, 10**6), st.data())
def test_save_load_round_trip_and_damage(name, rule, meta, cut, data):
    fx.seed_(3)
    model = MODELS[name]()
    opt = fx.setup(getattr(fx, rule)(), model) if rule else None
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.safetensors")
        ok, _ = attempt(fx.save, path, model, opt, **meta)
        if not ok:
            assert not os.path.exists(path)
            return
        ck = fx.load(path)
        fx.seed_(4)
        model2 = MODELS[name]()
        opt2 = fx.setup(getattr(fx, rule)(), model2) if rule else None
        fx.loadmodel_(model2, ck, opt_state=opt2)
        _assert_same_state(fx.state(model), fx.state(model2))
        raw = pathlib.Path(path).read_bytes()
        how = data.draw(st.sampled_from(["truncate", "flip", "junk-src"]), label="damage")
        bad = os.path.join(d, "bad.safetensors")
        if how == "truncate":
            pathlib.Path(bad).write_bytes(raw[:cut % len(raw)])
        elif how == "flip":
            b = bytearray(raw)
            b[cut % len(b)] ^= 0xFF
            pathlib.Path(bad).write_bytes(bytes(b))
        if how == "junk-src":
            try:
                attempt(fx.loadmodel_, model2, data.draw(JUNK))
            except FileNotFoundError:
                pass  # a string is taken as a file name: "No such file or directory" is the honest answer
        else:
            ok, got = attempt(fx.load, bad)
            if ok:  # a flipped byte the checks cannot see: inside the JSON metadata's free text
                assert how == "flip"


# ---------------------------------------------------------------- training

@given(st.one_of(
    st.lists(st.tuples(arrays(dtype=np.float32, shape=(4, 2), bound=3), arrays(dtype=np.float32, shape=(4, 1))),
             min_size=1, max_size=3),
    st.lists(JUNK, min_size=1, max_size=2), JUNK),
    st.sampled_from(["mse", "nan", "tensor", "junk"]))
def test_train_refuses_cleanly(data, loss_kind):
    fx.seed_(5)
    model = fx.Dense(2, 1)
    opt = fx.setup(fx.Adam(0.01), model)

    def loss(m, x, y):
        out = fx.mse(m(x), y)
        if loss_kind == "nan":
            return out * math.nan
        if loss_kind == "tensor":  # never a scalar, whatever the batch (a one-row m(x) would be)
            return fx.stack([out, out])
        if loss_kind == "junk":
            return "loss"
        return out

    before = fx.state(model)
    try:
        ok, _ = attempt(fx.train_, loss, model, data, opt)
    except fx.NonFiniteLossError as e:
        # the items before were applied, the non-finite one not: as training on those alone
        fx.seed_(5)
        ref = fx.Dense(2, 1)
        fx.train_(loss, ref, list(data)[:e.index], fx.setup(fx.Adam(0.01), ref))
        _assert_same_state(fx.state(ref), fx.state(model))
        return
    if not ok and loss_kind != "mse":
        _assert_same_state(before, fx.state(model))


# ---------------------------------------------------------------- what the messages say

MESSAGES = [
    # (call, what the message must contain: the function or layer, the argument, expected and actual)
    ("fx.Dense(784, 32)(np.ones((32, 28, 28), np.float32))",
     ["Dense(784 => 32) expects input with 784 features on axis -1, got (32, 28, 28)"]),
    ("fx.Conv((3, 3), (2, 4))(np.ones((1, 3, 8, 8), np.float32))", ["Conv((3, 3), 2 => 4)", "(N, 2, H, W)",
                                                                      "(1, 3, 8, 8)"]),
    ("fx.BatchNorm(3)(np.ones((2, 4), np.float32))", ["BatchNorm(3)", "3 channels", "(2, 4)"]),
    ("fx.LSTM(3, 2)(np.ones((2, 5, 4), np.float32))", ["LSTM(3 => 2)", "(N, T, 3)", "(2, 5, 4)"]),
    ("fx.Scale(3)(np.ones((2, 4), np.float32))", ["Scale(3)", "(3,)", "(2, 4)"]),
    ("fx.MaxPool((2, 2))(np.ones((1, 1, 4), np.float32))", ["MaxPool((2, 2))", "(N, C, H, W)", "(1, 1, 4)"]),
    ("fx.Embedding(3, 2)(np.array([5]))", ["Embedding(3 => 2)", "5", "0..2"]),
    ("fx.Dense(3, 2)(np.array(['a', 'b', 'c']))", ["Dense(3 => 2)", "numeric", "<U1"]),
    ("fx.zeros(1.5)", ["zeros", "shape", "1.5"]),
    ("fx.zeros(-2, 3)", ["zeros", "negative", "(-2, 3)"]),
    ("fx.full((2, 2), 'x')", ["full", "fill value", "str"]),
    ("fx.tensor([[1.0, 2.0], [3.0]])", ["fx.tensor", "rectangular"]),
    ("fx.tensor(['a'])", ["tensor", "numbers", "<U1"]),
    ("fx.softmax(fx.ones(2, 3), 'a')", ["softmax", "axis", "'a'"]),
    ("fx.leakyrelu(fx.ones(2), 'x')", ["leakyrelu", "a must be a real number", "str"]),
    ("fx.relu('abc')", ["relu", "str"]),
    ("fx.concat([fx.ones(2), 'x'])", ["concat", "item 1", "str"]),
    ("fx.ones(3)[5]", ["index 5", "axis 0", "size 3"]),
    ("fx.ones(3)[2**70]", ["index", "axis 0", "size 3"]),
    ("fx.ones(2, 3) + fx.ones(4)", ["add", "[2, 3]", "[4]"]),
    ("fx.ones(2, 3) @ fx.ones(2, 3)", ["matmul", "[2, 3]"]),
    ("fx.ones(2, 3).sum(5)", ["sum", "axis 5", "2 dimensions"]),
    ("fx.mse(fx.ones(3), None)", ["mse", "y", "NoneType"]),
    ("fx.mse(fx.ones(3), np.ones(4))", ["mse", "(3,)", "(4,)"]),
    ("fx.crossentropy(fx.tensor(1.0), 1.0)", ["crossentropy", "class axis", "scalar"]),
    ("fx.losses.ctc_loss(np.ones((0, 3), np.float32), [])", ["ctc_loss", "time steps", "(0, 3)"]),
    ("fx.onecold(np.array(['a', 'b']))", ["onecold", "numbers", "<U1"]),
    ("fx.onehotbatch([7], range(3))", ["onehotbatch", "label 7", "[0, 1, 2]"]),
    ("fx.onehotbatch([1], None)", ["onehotbatch", "classes", "NoneType"]),
    ("fx.DataLoader(fx.tensor(1.0))", ["DataLoader", "0-d"]),
    ("fx.DataLoader(np.ones(3), batchsize=0)", ["DataLoader", "batchsize", "0"]),
    ("fx.gradient(5, 1.0)", ["gradient", "f must be a function", "int"]),
    ("fx.pullback(lambda x: x * 2, fx.ones(3))[1](np.ones(4))", ["pullback", "(3,)", "(4,)"]),
    ("fx.save(5, fx.Dense(1, 1))", ["save", "path", "int"]),
    ("fx.save('m.safetensors', None)", ["save", "model", "NoneType"]),
    ("fx.save('/no/such/dir/m.safetensors', fx.Dense(1, 1))", ["save", "/no/such/dir", "does not exist"]),
    ("fx.load(5)", ["load", "path", "int"]),
    ("fx.Dropout(0.5, dims='a')", ["Dropout", "dims", "'a'"]),
    ("fx.Bidirectional(fx.GRU(3, 2))(np.ones((2, 4, 3), np.float32), 5)", ["Bidirectional", "state", "int"]),
]


@pytest.mark.parametrize("call, parts", MESSAGES, ids=[m[0][:60] for m in MESSAGES])
def test_error_messages_name_the_function_and_the_values(call, parts):
    with pytest.raises((ValueError, TypeError, IndexError, KeyError, OSError)) as e:
        eval(call)
    for part in parts:
        assert part in str(e.value), f"{call}: {type(e.value).__name__}: {e.value}"


# ---------------------------------------------------------------- the dangerous group, in a child process

def test_core_ops_in_a_subprocess(tmp_path):
    """Raw core ops on zero-size, 0-d and non-contiguous tensors with extreme integer
    arguments, run by hypothesis in a child process (tests/_core_fuzz.py): a crash there
    fails this test (with the example that crashed) instead of killing the test run."""
    log = tmp_path / "examples.log"
    n = settings().max_examples * 8
    known = ",".join(k for k in ("zero-size-layout", "shape-overflow") if core_bug_present(k))
    env = dict(os.environ, RUST_BACKTRACE="0")
    r = subprocess.run([sys.executable, str(HERE / "_core_fuzz.py"), str(n), str(log), known],
                       capture_output=True, text=True, timeout=540, env=env)
    last = log.read_text().splitlines()[-1:] if log.exists() else []
    assert r.returncode == 0, (f"the core-op fuzzer {'crashed (signal ' + str(-r.returncode) + ')' if crashed(r) else 'failed'}"
                               f"; last example: {last}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    assert "examples run:" in r.stdout


HUGE = {
    # (code, the core bug it hits while unfixed, or None where the Python layer already refuses)
    "zeros of 2**40 floats": ("fx.zeros(2**40)", None),
    "full whose size overflows": ("fx.full((2**62, 4), 1.0)", None),
    "rand of 2**62 x 4": ("fx.rand(2**62, 4)", None),
    "Dense(2**40 => 2**40)": ("fx.Dense(2**40, 2**40)", None),
    "index beyond int64": ("fx.ones(3)[2**70]", None),
    "reshape of a zero-size tensor": ("fx.zeros(2, 0).reshape(0, 2)", "zero-size-layout"),
    "sum over an inner axis of a zero-size tensor": ("fx.zeros(2, 0, 3).sum(-1)", "zero-size-layout"),
    "Dense on an empty sequence batch": ("fx.Dense(3, 2)(np.zeros((2, 0, 3), np.float32))", "zero-size-layout"),
    "reshape whose byte size overflows, to numpy": ("fx.zeros(0).reshape(2**31, 2**31, 0).numpy()", "shape-overflow"),
    "broadcast_to an overflowing shape, to numpy": ("fx.ones(1).broadcast_to((2**62, 4)).numpy()", "shape-overflow"),
    "broadcast result of 2**40 floats": ("fx.ones(2**20, 1) + fx.ones(1, 2**20)", "allocation-abort"),
    "conv with padding 2**40": ("fx.Conv((3, 3), (1, 1), pad=2**40)(fx.ones(1, 1, 4, 4))", "allocation-abort"),
}


@pytest.mark.parametrize("case", sorted(HUGE))
def test_extreme_inputs_in_a_subprocess(case):
    """Each input that could exhaust memory or overflow a size, in its own child process: it
    must end in a Python exception (MemoryError counts here) or a result, not a signal."""
    code, bug = HUGE[case]
    child = ("import sys\ntry:\n    r = " + code + "\n    print('result', type(r).__name__)\n"
             "except (ValueError, TypeError, IndexError, KeyError, MemoryError) as e:\n"
             "    assert 'internal error' not in str(e), e\n    print('refused', type(e).__name__, e)\n")
    r = run_child(child)
    if crashed(r) and bug is not None:
        pytest.xfail(f"known core bug {bug!r} (signal {-r.returncode}): {CORE_BUGS[bug].fix}")
    assert r.returncode == 0, f"{code}: rc={r.returncode}\n{r.stdout}\n{r.stderr[-2000:]}"
    assert r.stdout.startswith(("result", "refused")), r.stdout


@pytest.mark.parametrize("bug", sorted(CORE_BUGS))
def test_known_core_bug_is_fixed(bug):
    """One test per known core crash: xfails (with the fix it needs) while the bug is there,
    passes when the core is fixed. Then its workaround in this file can go."""
    if core_bug_present(bug):
        pytest.xfail(f"{CORE_BUGS[bug].repro!r} crashes the interpreter: {CORE_BUGS[bug].fix}")


# ---------------------------------------------------------------- binding-level defects the Python layer cannot reach

@pytest.mark.parametrize("call", ["t.slice(0, -1, 2)", "t.index_select(0, [-1])", "t.slice(0, 0, 2**64)",
                                  "t.select(0, 2**63)"])
def test_tensor_methods_refuse_bad_integers_with_index_or_value_errors(call):
    t = fx.ones(3, 2)  # noqa: F841 (used by eval)
    try:
        eval(call)
    except (IndexError, ValueError, TypeError):
        return
    except OverflowError as e:
        pytest.xfail(f"binding takes usize/isize, so pyo3 raises OverflowError ({e}); validate in "
                     "rust/python/src/tensor.rs and raise IndexError naming the op, axis and size")


@pytest.mark.parametrize("v", [math.nan, math.inf, -math.inf])
def test_int_of_a_non_finite_tensor_raises_as_python_does(v):
    with pytest.raises((ValueError, OverflowError)) as e:
        int(v)
    try:
        got = int(fx.tensor(v))
    except type(e.value):
        return
    pytest.xfail(f"int(fx.tensor({v})) gives {got}: PyTensor::__int__ casts with `as i64`; it should raise "
                 f"{type(e.value).__name__} as int(float) does")

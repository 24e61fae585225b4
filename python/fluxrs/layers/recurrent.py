"""Recurrent layers, as Flux 0.15 defines them, batch-first.

Cells take one time step: ``cell(x, state) -> (out, state)`` with ``x`` of shape
``(N, in)`` (or one vector ``(in,)``); the state defaults to zeros. Sequence layers run a
cell over the time axis: ``RNN((in, out))`` applied to ``(N, T, in)`` returns
``(N, T, out)`` (a single sequence ``(T, in)`` gives ``(T, out)``); with
``return_state=True`` they return ``(outputs, final_state)``. Layers hold no state between
calls (Flux 0.15): pass the initial state as the second argument to continue a sequence.

Weights are Flux's: ``Wi`` (gates·out, in), ``Wh`` (gates·out, out) and one ``bias``
(gates·out,), gates in Flux's order (LSTM: input, forget, cell, output; GRU: reset,
update, candidate).

>>> import fluxrs as fx
>>> m = fx.GRU((3, 5))                     # Flux: GRU(3 => 5)
>>> m
GRU(3 => 5)  # 135 parameters
>>> m(fx.ones(2, 7, 3)).shape              # 2 sequences of 7 steps
(2, 7, 5)
>>> cell = fx.LSTMCell(3, 4)
>>> out, (h, c) = cell(fx.ones(2, 3))
>>> out.shape, c.shape
((2, 4), (2, 4))
"""

from __future__ import annotations

from typing import Any, Callable

from fluxrs import _core
from fluxrs._checks import size, sizes_given
from fluxrs._core import Tensor
from fluxrs.activations import identity, tanh
from fluxrs.functor import Layer, fmap, short_repr
from fluxrs.layers.basic import as_input
from fluxrs.layers.init import create_bias, create_weight, glorot_uniform
from fluxrs.tensor import concat, host_like

__all__ = ["RNNCell", "LSTMCell", "GRUCell", "Recurrence", "RNN", "LSTM", "GRU", "Bidirectional"]

def _in_out(who: str, in_: Any, out: Any, act: Any, default_act: Any) -> tuple[int, int, Any]:
    """Flux's ``in => out`` as ``(in, out)`` (activation may follow) or as ``in, out``."""
    if isinstance(in_, (tuple, list)) and sizes_given(in_):
        if out is not None:
            if act is not default_act:
                raise TypeError(f"{who}((in, out), act): too many positional arguments")
            act = out
        return size(f"{who}((in, out))", "in", in_[0]), size(f"{who}((in, out))", "out", in_[1]), act
    if not sizes_given(in_):
        raise TypeError(f"{who}: give the sizes as {who}((in, out)) or {who}(in, out), got {in_!r}, {out!r}")
    hint = f"give the sizes as {who}((in, out)) or {who}(in, out)" if out is None else ""
    return size(f"{who}(in, out)", "in", in_), size(f"{who}(in, out)", "out", out, hint=hint), act


class _Cell(Layer):
    """Shared parts of the cells: weights, input projection, state checks."""

    gates = 1
    name = ""

    def _build(self, n_in: int, n_out: int, init_kernel: Callable, init_recurrent_kernel: Callable,
               bias: Any) -> None:
        who = f"{self.name}({n_in} => {n_out})"
        k = self.gates * n_out
        self.Wi = create_weight(init_kernel, (k, n_in), who)
        self.Wh = create_weight(init_recurrent_kernel, (k, n_out), who)
        self.bias = create_bias(self.Wi, bias, (k,), who)

    @property
    def in_features(self) -> int:
        return self.Wi.shape[1]

    @property
    def out_features(self) -> int:
        return self.Wh.shape[1]

    def _project(self, x: Tensor) -> Tensor:
        """x @ Wi.T + bias, in one call."""
        return _core.dense(x, self.Wi, self.bias, "identity")

    def _input(self, x: Any) -> Tensor:
        x = as_input(x, self.Wi, self)
        if x.ndim not in (1, 2) or x.shape[-1] != self.in_features:
            raise ValueError(f"{self._repr_inner()} expects one time step (N, {self.in_features}) or "
                             f"({self.in_features},), got {tuple(x.shape)}; for whole sequences use the "
                             "sequence layer (RNN, LSTM, GRU)")
        return x

    def _zeros(self, x: Tensor) -> Tensor:
        return self._full(list(x.shape[:-1]) + [self.out_features])

    def _full(self, shape: list[int]) -> Tensor:
        """Zeros of `shape` beside the weights (their dtype, their device)."""
        return host_like(_core.full(shape, 0.0, self.Wi.dtype.name), self.Wi)

    def _check_h(self, h: Any, x: Tensor, what: str = "state") -> Tensor:
        """The state `h` for one step of input `x`, shape ``(N, out)`` for a batch. One state
        vector ``(out,)`` is broadcast over the batch, as Flux does; broadcasting here, once,
        gives the fused sequence kernels a full ``(N, out)`` state and keeps the gradient
        flowing back to the vector (summed over the batch)."""
        h = as_input(h, self.Wi, self)
        want = tuple(x.shape[:-1]) + (self.out_features,)
        if tuple(h.shape) == want:
            return h
        if tuple(h.shape) == (self.out_features,):
            return h.broadcast_to(want)
        raise ValueError(f"{self._repr_inner()}: the {what} must have shape {want} (or {(self.out_features,)}, "
                         f"shared by the batch) for input of shape {tuple(x.shape)}, got {tuple(h.shape)}")

    def initialstates(self, x: Any = None) -> Any:
        """The zero state for one time step like `x` (``(N, in)``; one vector's state, shape
        ``(out,)``, when `x` is None), as Flux's ``initialstates``."""
        if x is None:
            return self._full([self.out_features])
        return self._zeros(x if isinstance(x, Tensor) else as_input(x, self.Wi, self))

    def __call__(self, x: Any, state: Any = None) -> tuple[Tensor, Any]:
        x = self._input(x)
        state = self.initialstates(x) if state is None else self._check_state(state, x)
        return self._step(x, state, self.Wh.T)

    def _check_state(self, state: Any, x: Tensor) -> Any:
        return self._check_h(state, x)

    def _fuses(self) -> bool:
        """Whether `_sequence`, the fused kernel, runs this cell."""
        return True

    def _sequence(self, gx: Tensor, state: Any) -> tuple[Tensor, Any]:
        """The whole sequence in one Rust call, from the input projection of every step `gx`
        ``(N, T, gates·out)`` and the state for a batch (None: zeros, made inside the op, so a
        compiled step replays them): the outputs ``(N, T, out)`` and the final state, as
        `_step` run step by step gives them."""
        raise NotImplementedError

    def _sizes(self) -> str:
        s = f"{self.in_features} => {self.out_features}"
        return s if self.bias is not None else s + ", bias=False"

    def _repr_inner(self) -> str:
        return f"{self.name}({self._sizes()})"


class RNNCell(_Cell):
    """The Elman cell: ``h' = act(Wi x + Wh h + b)``; output and state are both ``h'``.

    ``RNNCell(in, out, act=tanh, *, init_kernel=glorot_uniform,
    init_recurrent_kernel=glorot_uniform, bias=True)`` (Flux: ``RNNCell(in => out, σ)``).

    >>> import fluxrs as fx
    >>> fx.RNNCell((2, 3), fx.relu)
    RNNCell(2 => 3, relu)  # 18 parameters
    """

    gates, name = 1, "RNNCell"

    def __init__(self, in_: Any, out: Any = None, act: Callable = tanh, *, init_kernel: Callable = glorot_uniform,
                 init_recurrent_kernel: Callable = glorot_uniform, bias: Any = True):
        n_in, n_out, act = _in_out("RNNCell", in_, out, act, tanh)
        if not callable(act):
            raise TypeError(f"RNNCell: the activation must be callable, got {act!r}")
        self.act = act
        self._build(n_in, n_out, init_kernel, init_recurrent_kernel, bias)

    @property
    def σ(self) -> Callable:
        return self.act

    def _step(self, x: Tensor, h: Tensor, whT: Tensor) -> tuple[Tensor, Tensor]:
        z = self._project(x) + h @ whT
        h = z if self.act is identity else self.act(z)
        return h, h

    def _fuses(self) -> bool:
        return getattr(self.act, "fused_name", None) in _core.FUSED_ACTIVATIONS

    def _sequence(self, gx: Tensor, h: Tensor | None) -> tuple[Tensor, Tensor]:
        hs = _core.rnn_sequence(gx, self.Wh, h, getattr(self.act, "fused_name"))  # there, as _fuses saw
        return hs, hs.select(1, -1)

    def _repr_inner(self) -> str:
        act = f", {short_repr(self.act)}" if self.act is not tanh else ""
        bias = ", bias=False" if self.bias is None else ""
        return f"RNNCell({self.in_features} => {self.out_features}{act}{bias})"


class LSTMCell(_Cell):
    """Long short-term memory (Hochreiter & Schmidhuber 1997), Flux's formulation:
    ``i, f, c̃, o = σ(·), σ(·), tanh(·), σ(·)`` of ``Wi x + Wh h + b``;
    ``c' = f c + i c̃``, ``h' = o tanh(c')``. The state is ``(h, c)``, the output ``h'``.

    >>> import fluxrs as fx
    >>> fx.LSTMCell(2, 3)
    LSTMCell(2 => 3)  # 72 parameters
    """

    gates, name = 4, "LSTMCell"

    def __init__(self, in_: Any, out: Any = None, *, init_kernel: Callable = glorot_uniform,
                 init_recurrent_kernel: Callable = glorot_uniform, bias: Any = True):
        n_in, n_out, _ = _in_out("LSTMCell", in_, out, None, None)
        self._build(n_in, n_out, init_kernel, init_recurrent_kernel, bias)

    def initialstates(self, x: Any = None) -> tuple[Tensor, Tensor]:
        h = super().initialstates(x)
        return h, self._full(list(h.shape))

    def _check_state(self, state: Any, x: Tensor) -> tuple[Tensor, Tensor]:
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError(f"{self._repr_inner()}: the state is a pair (h, c), got {type(state).__name__}")
        return self._check_h(state[0], x, "state h"), self._check_h(state[1], x, "state c")

    def _step(self, x: Tensor, state: tuple[Tensor, Tensor], whT: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h, c = state
        n = self.out_features
        ax = x.ndim - 1
        g = self._project(x) + h @ whT
        s = g.sigmoid()
        i, f, o = s.slice(ax, 0, n), s.slice(ax, n, 2 * n), s.slice(ax, 3 * n, 4 * n)
        cand = g.slice(ax, 2 * n, 3 * n).tanh()
        c = f * c + i * cand
        h = o * c.tanh()
        return h, (h, c)

    def _sequence(self, gx: Tensor, state: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        hc = _core.lstm_sequence(gx, self.Wh) if state is None else _core.lstm_sequence(gx, self.Wh, *state)
        hs, cs = hc.select(0, 0), hc.select(0, 1)  # (2, N, T, out): h, then c
        return hs, (hs.select(1, -1), cs.select(1, -1))


class GRUCell(_Cell):
    """Gated recurrent unit (Cho et al. 2014), Flux's formulation (reset gate applied after
    the recurrent product): ``r = σ(Wiᵣx + Whᵣh + bᵣ)``, ``z = σ(Wi_z x + Wh_z h + b_z)``,
    ``h̃ = tanh(Wiₕx + r ⊙ (Whₕh) + bₕ)``, ``h' = (1 - z) h̃ + z h``.

    >>> import fluxrs as fx
    >>> fx.GRUCell(2, 3)
    GRUCell(2 => 3)  # 54 parameters
    """

    gates, name = 3, "GRUCell"

    def __init__(self, in_: Any, out: Any = None, *, init_kernel: Callable = glorot_uniform,
                 init_recurrent_kernel: Callable = glorot_uniform, bias: Any = True):
        n_in, n_out, _ = _in_out("GRUCell", in_, out, None, None)
        self._build(n_in, n_out, init_kernel, init_recurrent_kernel, bias)

    def _step(self, x: Tensor, h: Tensor, whT: Tensor) -> tuple[Tensor, Tensor]:
        n = self.out_features
        ax = x.ndim - 1
        gx = self._project(x)
        gh = h @ whT
        rz = (gx.slice(ax, 0, 2 * n) + gh.slice(ax, 0, 2 * n)).sigmoid()
        r, z = rz.slice(ax, 0, n), rz.slice(ax, n, 2 * n)
        cand = (gx.slice(ax, 2 * n, 3 * n) + r * gh.slice(ax, 2 * n, 3 * n)).tanh()
        h = cand + z * (h - cand)  # (1 - z) h̃ + z h
        return h, h

    def _sequence(self, gx: Tensor, h: Tensor | None) -> tuple[Tensor, Tensor]:
        hs = _core.gru_sequence(gx, self.Wh, h)
        return hs, hs.select(1, -1)


class Recurrence(Layer):
    """Runs a cell over the time axis (axis 1 of ``(N, T, in)``, axis 0 of ``(T, in)``):
    ``Recurrence(cell, *, return_state=False)``, Flux 0.15's ``Recurrence``. Returns the
    outputs stacked on the time axis, and the final state too when `return_state`.

    >>> import fluxrs as fx
    >>> r = fx.Recurrence(fx.RNNCell(2, 3), return_state=True)
    >>> y, h = r(fx.ones(4, 5, 2))
    >>> y.shape, h.shape
    ((4, 5, 3), (4, 3))
    """

    def __init__(self, cell: Any, *, return_state: bool = False):
        if not isinstance(cell, _Cell):
            raise TypeError(f"Recurrence(cell): cell must be an RNNCell, LSTMCell or GRUCell, got "
                            f"{type(cell).__name__}")
        self.cell = cell
        self.return_state = bool(return_state)

    def __call__(self, x: Any, state: Any = None) -> Any:
        y, state = self._forward(x, state)
        return (y, state) if self.return_state else y

    def initialstates(self) -> Any:
        """The cell's zero state for one sequence, ``(out,)`` (a pair for LSTM), as Flux's
        ``initialstates(rnn)``; as any state ``(out,)``, it is shared by a batch."""
        return self.cell.initialstates()

    def _forward(self, x: Any, state: Any) -> tuple[Tensor, Any]:
        cell = self.cell
        x = as_input(x, cell.Wi, self)
        n_in = cell.in_features
        if x.ndim not in (2, 3) or x.shape[-1] != n_in:
            raise ValueError(f"{self._repr_inner()} expects a batch of sequences (N, T, {n_in}) or one sequence "
                             f"(T, {n_in}), got {tuple(x.shape)}")
        tax = x.ndim - 2  # time axis
        steps = x.shape[tax]
        if steps == 0:
            raise ValueError(f"{self._repr_inner()}: the sequence is empty (shape {tuple(x.shape)})")
        first = x.select(tax, 0)
        if cell._fuses() and _core.watch_depth() <= 1 and x.device == "cpu":
            return self._fused(cell, x, None if state is None else cell._check_state(state, first))
        state = cell.initialstates(first) if state is None else cell._check_state(state, first)
        whT = cell.Wh.T
        outs = []
        for t in range(steps):
            out, state = cell._step(first if t == 0 else x.select(tax, t), state, whT)
            outs.append(out)
        return _core.stack(outs, tax), state

    @staticmethod
    def _fused(cell: _Cell, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        """The whole sequence in one Rust call (one dense call for the input projection of
        every step, then the recurrence with hand-written BPTT). Its backward cannot be
        differentiated again, so nested gradients (watch depth > 1) take the step-by-step path."""
        batched = x.ndim == 3
        xb = x if batched else x.reshape(1, *x.shape)
        if state is not None and not batched:
            state = _map_state(lambda s: s.reshape(1, -1), state)
        ys, last = cell._sequence(cell._project(xb), state)
        return (ys, last) if batched else (ys.select(0, 0), _map_state(lambda s: s.select(0, 0), last))

    def _repr_inner(self) -> str:
        s = f"Recurrence({short_repr(self.cell)}"
        return s + (", return_state=True)" if self.return_state else ")")


def _map_state(f: Callable[[Tensor], Tensor], state: Any) -> Any:
    """`f` on the state's tensor, or on each of an LSTM's (h, c)."""
    return tuple(f(s) for s in state) if isinstance(state, tuple) else f(state)


class _SeqLayer(Recurrence):
    cell_type: type = _Cell

    def __init__(self, *args: Any, return_state: bool = False, **kwargs: Any):
        super().__init__(self.cell_type(*args, **kwargs), return_state=return_state)
        self._args = (args, kwargs)  # to make a fresh twin (Bidirectional)

    def _repr_inner(self) -> str:
        inner = short_repr(self.cell)
        name = type(self).__name__
        s = name + inner[len(self.cell.name):-1]
        return s + (", return_state=True)" if self.return_state else ")")


class RNN(_SeqLayer):
    """`RNNCell` over a sequence: ``RNN(in, out, act=tanh, *, return_state=False, ...)``
    (Flux: ``RNN(in => out, σ)``).

    >>> import fluxrs as fx
    >>> fx.RNN((2, 3))(fx.ones(4, 5, 2)).shape
    (4, 5, 3)
    """

    cell_type = RNNCell


class LSTM(_SeqLayer):
    """`LSTMCell` over a sequence; the state is ``(h, c)``. ``LSTM(in, out, *, return_state=False, ...)``.

    >>> import fluxrs as fx
    >>> y, (h, c) = fx.LSTM(2, 3, return_state=True)(fx.ones(4, 5, 2))
    >>> y.shape, h.shape
    ((4, 5, 3), (4, 3))
    """

    cell_type = LSTMCell


class GRU(_SeqLayer):
    """`GRUCell` over a sequence. ``GRU(in, out, *, return_state=False, ...)``."""

    cell_type = GRUCell


def _reverse_time(x: Tensor, tax: int) -> Tensor:
    return x.index_select(tax, list(range(x.shape[tax] - 1, -1, -1)))


def _concat_features(a: Tensor, b: Tensor) -> Tensor:
    return concat([a, b], axis=-1)


class Bidirectional(Layer):
    """Two recurrent layers over a sequence, one forwards and one backwards in time, their
    outputs merged step by step (by default concatenated on the feature axis, so
    ``(N, T, out_f + out_b)``). ``Bidirectional(forward, backward=None, *, merge=concat)``:
    without `backward`, a fresh layer like `forward` (same sizes, new random weights) is made.
    With ``return_state=True`` the final states come back as ``(state_f, state_b)``.

    >>> import fluxrs as fx
    >>> m = fx.Bidirectional(fx.GRU(3, 4))
    >>> m
    Bidirectional(GRU(3 => 4), GRU(3 => 4))  # 192 parameters
    >>> m(fx.ones(2, 6, 3)).shape
    (2, 6, 8)
    """

    def __init__(self, forward: Any, backward: Any = None, *, merge: Callable = _concat_features,
                 return_state: bool = False):
        if not isinstance(forward, Recurrence):
            raise TypeError(f"Bidirectional(forward, backward): forward must be a recurrent layer (RNN, LSTM, GRU, "
                            f"Recurrence), got {type(forward).__name__}")
        if backward is None:
            backward = _twin(forward)
        elif not isinstance(backward, Recurrence):
            raise TypeError(f"Bidirectional: backward must be a recurrent layer, got {type(backward).__name__}")
        if not callable(merge):
            raise TypeError(f"Bidirectional: merge must be callable, got {merge!r}")
        self.forward = forward
        self.backward = backward
        self.merge = merge
        self.return_state = bool(return_state)

    def __call__(self, x: Any, state: Any = None) -> Any:
        x = as_input(x, self.forward.cell.Wi, self)
        if x.ndim not in (2, 3):
            raise ValueError(f"{self._repr_inner()} expects (N, T, features) or (T, features), got {tuple(x.shape)}")
        tax = x.ndim - 2
        if state is not None and (not isinstance(state, (tuple, list)) or len(state) != 2):
            raise TypeError(f"{self._repr_inner()}: the state is a pair (forward state, backward state), got "
                            f"{type(state).__name__}")
        sf, sb = (None, None) if state is None else state
        yf, sf = self.forward._forward(x, sf)
        yb, sb = self.backward._forward(_reverse_time(x, tax), sb)
        y = self.merge(yf, _reverse_time(yb, tax))
        return (y, (sf, sb)) if self.return_state else y

    def _repr_inner(self) -> str:
        s = f"Bidirectional({short_repr(self.forward)}, {short_repr(self.backward)}"
        if self.merge is not _concat_features:
            s += f", merge={short_repr(self.merge)}"
        return s + (", return_state=True)" if self.return_state else ")")


def _twin(layer: Recurrence) -> Recurrence:
    """A layer like `layer` with fresh weights (same constructor arguments), or a copy of its
    weights where it was not built from sizes."""
    args = getattr(layer, "_args", None)
    if args is not None:
        new = type(layer)(*args[0], **args[1])
        new.return_state = layer.return_state
        # same dtype as the original (it may have been converted with f64)
        if new.cell.Wi.dtype != layer.cell.Wi.dtype:
            new = fmap(lambda p: p.astype(layer.cell.Wi.dtype.name).detach(), new)
        return new
    return fmap(lambda p: Tensor(p.numpy().copy(), dtype=p.dtype.name), layer)

"""Learning-rate schedules, as ParameterSchedulers.jl writes them.

A schedule is a function of the step (or epoch) ``t = 1, 2, 3, ...``: ``s(t)`` is the value
at step t, and iterating a schedule gives ``s(1), s(2), ...`` (without end, except `Poly`).
Formulas and argument order follow ParameterSchedulers.jl:

===========================================  ================================================
``Step(start, decay, step_sizes)``           ``start · decay^i``, i = step-size boundaries passed
``Exp(start, decay)``                        ``start · decay^(t-1)``
``Poly(start, degree, max_iter)``            ``start · (1 - (t-1)/max_iter)^degree``
``Inv(start, decay, degree)``                ``start / (1 + (t-1)·decay)^degree``
``CosAnneal(l0, l1, period, restart=True)``  cosine from l0 down to l1 over `period` steps
``Triangle(l0, l1, period)``                 triangle wave between l0 and l1
``Sin(l0, l1, period)``                      ``|sin|`` wave between l0 and l1
``Constant(value)``                          always `value`
``Sequence(s1 => n1, ...)``                  `s1` for n1 steps, then the next, ... (the last goes on)
``Warmup(schedule, n, start=0.0)``           linear warm-up from `start` over n steps, then `schedule`
``Loop(s, period)``, ``Shifted(s, offset)``  `s` repeated every `period`; `s` started at `offset`
``Interpolator(s, rate)``                    ``s(ceil(t / rate))``: a per-epoch schedule per batch
===========================================  ================================================

Python has no ``=>``: `Sequence` takes ``(schedule, steps)`` pairs, or two lists. Keywords
take ParameterSchedulers' names and Greek aliases (``Exp(λ=0.1, γ=0.5)``, ``CosAnneal(l0=...,
λ0=...)``); a plain number in a `Sequence` is a constant.

>>> import fluxrs as fx
>>> s = fx.Step(0.1, 0.5, 10)                 # halve every 10 steps
>>> s(1), s(10), s(11), s(25)
(0.1, 0.1, 0.05, 0.025)
>>> e = fx.Exp(1.0, 0.5)
>>> [e(t) for t in range(1, 5)]
[1.0, 0.5, 0.25, 0.125]
>>> c = fx.CosAnneal(0.1, 0.0, 4)            # restarts every 4 steps
>>> [round(c(t), 6) for t in range(1, 7)]
[0.1, 0.085355, 0.05, 0.014645, 0.1, 0.085355]
>>> w = fx.Warmup(fx.Exp(0.1, 0.5), 4)       # 0 → 0.1 in 4 steps, then the decay
>>> [round(w(t), 6) for t in range(1, 8)]
[0.0, 0.025, 0.05, 0.075, 0.1, 0.05, 0.025]
>>> seq = fx.Sequence((1.0, 1), (fx.Step(0.1, 0.5, 10), 50))   # Sequence(1 => 1, Step(...) => 50)
>>> seq(1), seq(2), seq(42), seq(52)
(1.0, 0.1, 0.00625, 0.003125)

In a training loop, set the learning rate each epoch (ParameterSchedulers' recipe):

>>> model = fx.Dense(2, 1)
>>> opt = fx.setup(fx.Momentum(), model)
>>> for epoch, eta in zip(range(1, 4), fx.Exp(0.1, 0.5)):
...     opt = fx.adjust_(opt, eta)
...     pass                                  # fx.train_(loss, model, data, opt)
>>> opt.weight.rule
Momentum(0.025, 0.9)

or every step, with a `Scheduler` rule (below), or by hand
with `Stateful`:

>>> st = fx.Stateful(fx.Step(1.0, 0.1, 2))
>>> [st.next_() for _ in range(5)]
[1.0, 1.0, 0.1, 0.1, 0.010000000000000002]
"""

from __future__ import annotations

import copy
import math
import numbers
from typing import Any, Callable, Iterator, Sequence as Seq

from fluxrs.optimise.interface import apply_all
from fluxrs.optimise.rules import OptimiserChain, Rule, _has, _real

__all__ = ["Schedule", "Step", "Exp", "Poly", "Inv", "CosAnneal", "Cos", "Triangle", "Sin", "Constant", "Sequence",
           "Warmup", "Loop", "Shifted", "Interpolator", "Stateful", "Scheduler"]


def _num(cls: str, key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or v != v or not math.isfinite(v):
        raise TypeError(f"{cls}: {key} must be a finite real number, got {v!r}")
    return float(v)


def _count(cls: str, key: str, v: Any, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
        raise ValueError(f"{cls}: {key} must be a whole number >= {low}, got {v!r}")
    return int(v)


def _step(cls: str, t: Any) -> int:
    if isinstance(t, bool) or not isinstance(t, numbers.Integral):
        raise TypeError(f"{cls}: schedules are called with the step t = 1, 2, ..., got {t!r}")
    if t < 1:
        raise ValueError(f"{cls}: the step t counts from 1, got {t}")
    return int(t)


def _pick(cls: str, given: dict[str, Any], names: tuple[str, ...], aliases: dict[str, str], defaults: dict[str, Any],
          args: tuple) -> dict[str, Any]:
    """Positional `args` and keyword `given` (with aliases) as a dict over `names`."""
    if len(args) > len(names):
        raise TypeError(f"{cls} takes at most {len(names)} arguments {names}, got {len(args)}")
    out = dict(zip(names, args))
    for k, v in given.items():
        key = aliases.get(k, k)
        if key not in names:
            raise TypeError(f"{cls} has no argument {k!r}; it takes {names}")
        if key in out:
            raise TypeError(f"{cls}: {key} given twice")
        out[key] = v
    for k in names:
        if k not in out:
            if k not in defaults:
                raise TypeError(f"{cls}: missing argument {k!r} (it takes {names})")
            out[k] = defaults[k]
    return out


_GREEK = {"λ": "start", "λ0": "l0", "λ1": "l1", "γ": "decay", "p": "degree", "range0": "l0", "range1": "l1"}


class Schedule:
    """Base class: subclasses define `value(t)` for whole t >= 1. Calling checks t;
    iterating yields s(1), s(2), ...; ``len`` is defined for finite schedules."""

    def value(self, t: int) -> float:
        raise NotImplementedError

    def __call__(self, t: int) -> float:
        return self.value(_step(type(self).__name__, t))

    def __iter__(self) -> Iterator[float]:
        t = 1
        n = getattr(self, "_length", None)
        while n is None or t <= n:
            yield self.value(t)
            t += 1

    def _args(self) -> list[str]:
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + ", ".join(self._args()) + ")"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    __hash__ = object.__hash__


class Step(Schedule):
    """``Step(start, decay, step_sizes)``: `start`, multiplied by `decay` at the end of each
    step range. With one number `n` the ranges repeat (decay every n steps); with a list the
    value keeps the last decay after the list ends (``start · decay^len(step_sizes)``).

    >>> import fluxrs as fx
    >>> s = fx.Step(1.0, 0.5, [2, 3])
    >>> [s(t) for t in range(1, 8)]
    [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]
    """

    def __init__(self, *args: Any, **kw: Any):
        a = _pick("Step", kw, ("start", "decay", "step_sizes"), _GREEK, {}, args)
        self.start = _num("Step", "start", a["start"])
        self.decay = _num("Step", "decay", a["decay"])
        sizes = a["step_sizes"]
        if isinstance(sizes, numbers.Integral) and not isinstance(sizes, bool):
            self.step_sizes: int | tuple[int, ...] = _count("Step", "step_sizes", sizes)
        else:
            try:
                sizes = tuple(sizes)
            except TypeError:
                raise TypeError(f"Step: step_sizes must be a whole number or a list of them, got {sizes!r}") from None
            if not sizes:
                raise ValueError("Step: step_sizes must not be empty")
            self.step_sizes = tuple(_count("Step", "step_sizes", n) for n in sizes)

    def value(self, t):
        if isinstance(self.step_sizes, int):
            i = (t - 1) // self.step_sizes
        else:
            i, acc = 0, 0
            for n in self.step_sizes:
                acc += n
                if t > acc:
                    i += 1
                else:
                    break
        return self.start * self.decay ** i

    def _args(self):
        return [repr(self.start), repr(self.decay), repr(list(self.step_sizes) if isinstance(self.step_sizes, tuple)
                                                        else self.step_sizes)]


class Exp(Schedule):
    """``Exp(start, decay)``: ``start · decay^(t-1)``."""

    def __init__(self, *args: Any, **kw: Any):
        a = _pick("Exp", kw, ("start", "decay"), _GREEK, {}, args)
        self.start = _num("Exp", "start", a["start"])
        self.decay = _num("Exp", "decay", a["decay"])

    def value(self, t):
        return self.start * self.decay ** (t - 1)

    def _args(self):
        return [repr(self.start), repr(self.decay)]


class Poly(Schedule):
    """``Poly(start, degree, max_iter)``: ``start · (1 - (t-1)/max_iter)^degree`` for
    t <= max_iter (a finite schedule: later t raise IndexError)."""

    def __init__(self, *args: Any, **kw: Any):
        a = _pick("Poly", kw, ("start", "degree", "max_iter"), _GREEK, {}, args)
        self.start = _num("Poly", "start", a["start"])
        self.degree = _num("Poly", "degree", a["degree"])
        self.max_iter = self._length = _count("Poly", "max_iter", a["max_iter"])

    def value(self, t):
        if t > self.max_iter:
            raise IndexError(f"Poly: the schedule has {self.max_iter} steps, asked for step {t}")
        return self.start * (1 - (t - 1) / self.max_iter) ** self.degree

    def __len__(self):
        return self.max_iter

    def _args(self):
        return [repr(self.start), repr(self.degree), repr(self.max_iter)]


class Inv(Schedule):
    """``Inv(start, decay, degree)``: ``start / (1 + (t-1)·decay)^degree``."""

    def __init__(self, *args: Any, **kw: Any):
        a = _pick("Inv", kw, ("start", "decay", "degree"), _GREEK, {}, args)
        self.start = _num("Inv", "start", a["start"])
        self.decay = _num("Inv", "decay", a["decay"])
        self.degree = _num("Inv", "degree", a["degree"])

    def value(self, t):
        return self.start / (1 + (t - 1) * self.decay) ** self.degree

    def _args(self):
        return [repr(self.start), repr(self.decay), repr(self.degree)]


def _cycle(l0: float, l1: float, g: float) -> float:
    return abs(l0 - l1) * g + min(l0, l1)


class _Cyclic(Schedule):
    _names: tuple[str, ...] = ("l0", "l1", "period")

    def __init__(self, *args: Any, **kw: Any):
        cls = type(self).__name__
        a = _pick(cls, kw, self._names, _GREEK, {"restart": True}, args)
        self.l0 = _num(cls, "l0", a["l0"])
        self.l1 = _num(cls, "l1", a["l1"])
        self.period = _count(cls, "period", a["period"])
        if "restart" in a:
            if not isinstance(a["restart"], bool):
                raise TypeError(f"{cls}: restart must be True or False, got {a['restart']!r}")
            self.restart = a["restart"]

    def _args(self):
        out = [repr(self.l0), repr(self.l1), repr(self.period)]
        if hasattr(self, "restart") and not self.restart:
            out.append("restart=False")
        return out


class CosAnneal(_Cyclic):
    """``CosAnneal(l0, l1, period, restart=True)``: cosine annealing (SGDR) from `l0` down to
    `l1` over `period` steps, ``|l0 - l1| (1 + cos(π t̂ / period)) / 2 + min(l0, l1)`` with
    ``t̂ = (t-1) mod period`` (warm restarts) or ``t - 1`` (``restart=False``: a cosine wave).
    `Cos` is the same schedule."""

    _names = ("l0", "l1", "period", "restart")

    def value(self, t):
        th = (t - 1) % self.period if self.restart else t - 1
        return _cycle(self.l0, self.l1, (1 + math.cos(math.pi * th / self.period)) / 2)


Cos = CosAnneal


class Triangle(_Cyclic):
    """``Triangle(l0, l1, period)``: a triangle wave between `l0` and `l1` (from `l0`'s side
    of the range at t = 1, ``|l0 - l1| (2/π) |asin(sin(π (t-1) / period))| + min(l0, l1)``)."""

    def value(self, t):
        return _cycle(self.l0, self.l1, (2 / math.pi) * abs(math.asin(math.sin(math.pi * (t - 1) / self.period))))


class Sin(_Cyclic):
    """``Sin(l0, l1, period)``: ``|l0 - l1| |sin(π (t-1) / period)| + min(l0, l1)``."""

    def value(self, t):
        return _cycle(self.l0, self.l1, abs(math.sin(math.pi * (t - 1) / self.period)))


class Constant(Schedule):
    """``Constant(value)``: always `value`."""

    def __init__(self, value: float):
        self.constant = _num("Constant", "value", value)

    def value(self, t):
        return self.constant

    def _args(self):
        return [repr(self.constant)]


def _as_schedule(s: Any, who: str) -> Callable[[int], float]:
    if isinstance(s, numbers.Real) and not isinstance(s, bool):
        return Constant(s)
    if callable(s):
        return s
    raise TypeError(f"{who}: expected a schedule (callable as s(t)) or a number, got {s!r}")


class Sequence(Schedule):
    """``Sequence((s1, n1), (s2, n2), ...)`` or ``Sequence([s1, s2, ...], [n1, n2, ...])``:
    `s1` for steps 1..n1, then ``s2(t - n1)`` for the next n2 steps, and so on; past the
    end, the last schedule goes on (ParameterSchedulers' ``Sequence(s1 => n1, s2 => n2)``).
    A number is a constant schedule.

    >>> import fluxrs as fx
    >>> s = fx.Sequence((0.1, 2), (fx.Exp(1.0, 0.5), 2))
    >>> [s(t) for t in range(1, 7)]
    [0.1, 0.1, 1.0, 0.5, 0.25, 0.125]
    """

    def __init__(self, *stages: Any):
        if len(stages) == 2 and all(isinstance(x, (list, tuple)) for x in stages) and \
                not all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], numbers.Integral) for x in stages):
            schedules, sizes = stages
        else:
            for st in stages:
                if not (isinstance(st, tuple) and len(st) == 2):
                    raise TypeError("Sequence: give (schedule, steps) pairs, or a list of schedules and a list of "
                                    f"step counts; got {st!r}")
            schedules, sizes = [st[0] for st in stages], [st[1] for st in stages]
        if len(schedules) != len(sizes) or not schedules:
            raise ValueError(f"Sequence: {len(schedules)} schedules and {len(sizes)} step counts; give one count "
                             "per schedule")
        self.schedules = tuple(_as_schedule(s, "Sequence") for s in schedules)
        self.step_sizes = tuple(_count("Sequence", "step_sizes", n) for n in sizes)

    def value(self, t):
        offset = 0
        for s, n in zip(self.schedules[:-1], self.step_sizes[:-1]):
            if t <= offset + n:
                return s(t - offset)
            offset += n
        return self.schedules[-1](t - offset)

    def _args(self):
        return [f"({s!r}, {n})" for s, n in zip(self.schedules, self.step_sizes)]


class Warmup(Schedule):
    """``Warmup(schedule, n, start=0.0)``: a linear warm-up from `start` to ``schedule(1)`` over
    the first `n` steps (``start + (peak - start)(t-1)/n``), then ``schedule(t - n)``. It equals
    ParameterSchedulers' ``Sequence(Triangle(start, peak, 2n) => n, schedule => ...)``.

    >>> import fluxrs as fx
    >>> s = fx.Warmup(fx.CosAnneal(1.0, 0.0, 10, restart=False), 2, start=0.5)
    >>> [round(s(t), 4) for t in range(1, 5)]
    [0.5, 0.75, 1.0, 0.9755]
    """

    def __init__(self, schedule: Any, n: int, start: float = 0.0):
        self.schedule = _as_schedule(schedule, "Warmup")
        self.n = _count("Warmup", "n", n)
        self.start = _num("Warmup", "start", start)

    def value(self, t):
        if t <= self.n:
            peak = self.schedule(1)
            return self.start + (peak - self.start) * (t - 1) / self.n
        return self.schedule(t - self.n)

    def _args(self):
        return [repr(self.schedule), repr(self.n)] + ([f"start={self.start!r}"] if self.start else [])


class Loop(Schedule):
    """``Loop(schedule, period)``: ``schedule(mod1(t, period))``, the first `period` steps
    over and over."""

    def __init__(self, schedule: Any, period: int):
        self.schedule = _as_schedule(schedule, "Loop")
        self.period = _count("Loop", "period", period)

    def value(self, t):
        return self.schedule((t - 1) % self.period + 1)

    def _args(self):
        return [repr(self.schedule), repr(self.period)]


class Shifted(Schedule):
    """``Shifted(schedule, offset)``: starts `schedule` at step `offset` (``s(t - 1 + offset)``)."""

    def __init__(self, schedule: Any, offset: int):
        self.schedule = _as_schedule(schedule, "Shifted")
        self.offset = _count("Shifted", "offset", offset)

    def value(self, t):
        return self.schedule(t - 1 + self.offset)

    def _args(self):
        return [repr(self.schedule), repr(self.offset)]


class Interpolator(Schedule):
    """``Interpolator(schedule, rate)``: ``schedule(ceil(t / rate))``; with `rate` batches per
    epoch, a per-epoch schedule read once per batch.

    >>> import fluxrs as fx
    >>> s = fx.optimise.schedules.Interpolator(fx.Exp(1.0, 0.5), 3)
    >>> [s(t) for t in range(1, 8)]
    [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]
    """

    def __init__(self, schedule: Any, rate: float):
        self.schedule = _as_schedule(schedule, "Interpolator")
        self.rate = _num("Interpolator", "rate", rate)
        if self.rate <= 0:
            raise ValueError(f"Interpolator: rate must be > 0, got {rate!r}")

    def value(self, t):
        return self.schedule(max(1, math.ceil(t / self.rate - 1e-12)))

    def _args(self):
        return [repr(self.schedule), repr(self.rate)]


class Stateful:
    """A schedule with its own step counter (ParameterSchedulers' `Stateful`): `next_()`
    returns the current value and moves on (if ``advance(t)`` says so); `reset_()` starts
    over.

    >>> import fluxrs as fx
    >>> s = fx.Stateful(fx.Exp(1.0, 0.5))
    >>> s.next_(), s.next_(), s.t
    (1.0, 0.5, 3)
    """

    def __init__(self, schedule: Any, advance: Callable[[int], bool] | None = None):
        self.schedule = _as_schedule(schedule, "Stateful")
        self.advance = advance
        self.t = 1

    def next_(self) -> float:
        v = self.schedule(self.t)
        if self.advance is None or self.advance(self.t):
            self.t += 1
        return v

    def reset_(self) -> "Stateful":
        self.t = 1
        return self

    def __repr__(self):
        return f"Stateful({self.schedule!r}, t={self.t})"


# ---------------------------------------------------------------- Scheduler: a rule that follows schedules

class Scheduler(Rule):
    """A rule whose hyperparameters follow schedules (ParameterSchedulers.jl's `Scheduler`):
    at step t it acts as ``constructor(s₁(t), s₂(t), ...; k=sₖ(t), ...)``.

    * ``Scheduler(fx.Descent, fx.CosAnneal(0.1, 0.8, 10))``: the learning rate follows the
      schedule (a class or any function returning a rule, and positional schedules);
    * ``Scheduler(fx.Momentum, fx.CosAnneal(0.1, 0.8, 10), fx.Exp(0.999, 0.8))``: eta and rho;
    * ``Scheduler(fx.AdamW(), lambd=fx.Exp(1e-3, 0.7))``: a rule with some fields scheduled
      by keyword (a rule, not a class: its other hyperparameters are kept);
    * ``Scheduler(lambda eta: fx.OptimiserChain(fx.ClipNorm(), fx.Adam(eta)), sched)``: a chain.

    A plain number in place of a schedule is a constant. The step counter `t` (from 1) is
    the rule's own and advances once per `update_` (or `train_` step) that reaches it, however
    many parameters it updates; the update itself is the scheduled rule's, through the fused
    kernel. Its state is the scheduled rule's, so the rule must keep the same kind at every t.
    ``adjust_(state, t=...)`` moves the schedule; a saved checkpoint keeps `t`.

    `eta_scale` multiplies the learning rate of the scheduled rule (of each rule of a chain
    that has one) at every step: the schedule keeps its shape, scaled. It is how
    ``fx.callbacks.set_lr`` and ``ReduceLROnPlateau`` lower the rate of a scheduled
    optimiser (as PyTorch's plateau reduction multiplies a scheduled rate);
    ``adjust_(state, eta_scale=...)`` sets it, and a checkpoint keeps it.

    >>> import fluxrs as fx
    >>> x = fx.tensor([0.0, 0.0], dtype="float64")
    >>> opt = fx.Scheduler(fx.Descent, fx.Step(1.0, 0.5, 2))
    >>> st = fx.setup(opt, x)
    >>> for _ in range(4):
    ...     _ = fx.update_(st, x, fx.tensor([1.0, 1.0], dtype="float64"))
    >>> x.tolist()                               # η = 1, 1, 0.5, 0.5
    [-3.0, -3.0]
    >>> st.rule.t, st.rule.current()
    (5, Descent(0.25))
    >>> _ = fx.adjust_(st, eta_scale=0.1); st.rule.current()
    Descent(0.025)
    """

    fields, defaults = ("t", "eta_scale"), (1, 1.0)
    chainable = False

    def __init__(self, constructor: Any, *schedules: Any, t: int = 1, eta_scale: float = 1.0, **kw_schedules: Any):
        if isinstance(constructor, Scheduler):
            raise TypeError("Scheduler: cannot schedule a Scheduler")
        if isinstance(constructor, Rule):
            if len(schedules) > 1:
                raise TypeError("Scheduler(rule, ...): give one positional schedule (the learning rate) or name the "
                                "fields by keyword, e.g. Scheduler(fx.AdamW(), eta=s1, lambd=s2)")
            if schedules:
                kw_schedules = {"eta": schedules[0], **kw_schedules}
                schedules = ()
            for k in kw_schedules:
                if not _has(constructor, k):
                    raise TypeError(f"Scheduler: {constructor!r} has no hyperparameter {k!r}")
        elif not callable(constructor):
            raise TypeError(f"Scheduler: the first argument must be a rule or a function making one (such as "
                            f"fx.Adam), got {type(constructor).__name__}")
        if not schedules and not kw_schedules:
            raise TypeError("Scheduler: give at least one schedule")
        for s in (*schedules, *kw_schedules.values()):
            if not (callable(s) or isinstance(s, numbers.Real)):
                raise TypeError(f"Scheduler: a schedule must be callable as s(t) or a number, got {s!r}")
        self.constructor = constructor
        self.schedules = tuple(schedules)
        self.kw_schedules = dict(kw_schedules)
        self.t = self._check("t", t)
        self.eta_scale = self._check("eta_scale", eta_scale)
        self.params = None
        self._implicit = {}
        first = self.rule_at(1)
        if not isinstance(first, Rule):
            raise TypeError(f"Scheduler: the constructor must return a rule, got {type(first).__name__}")
        if isinstance(first, Scheduler):
            raise TypeError("Scheduler: cannot schedule a Scheduler")

    def _check(self, key, value):
        if key == "eta_scale":
            value = _real("Scheduler", key, value)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"Scheduler: eta_scale (the factor on the scheduled learning rate) must be > 0, "
                                 f"got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"Scheduler: the step t must be a whole number >= 1, got {value!r}")
        return int(value)

    @staticmethod
    def _value(s: Any, t: int) -> Any:
        return s if isinstance(s, numbers.Real) else s(t)

    def rule_at(self, t: int) -> Rule:
        """The rule used at step `t` (its learning rate times `eta_scale`)."""
        pos = [self._value(s, t) for s in self.schedules]
        kws = {k: self._value(s, t) for k, s in self.kw_schedules.items()}
        if isinstance(self.constructor, Rule):
            rule = self.constructor.adjust(**kws)
        else:
            rule = self.constructor(*pos, **kws)
        return rule if self.eta_scale == 1.0 else _scale_eta(rule, self.eta_scale)

    def current(self) -> Rule:
        """The rule the next update will use."""
        return self.rule_at(self.t)

    def chain(self):
        return None

    def init(self, x):
        return self.current().init(x)

    def apply(self, state, x, dx):
        """One parameter's update with the current rule (the step counter does not move;
        `update_` and `train_` advance it once per step)."""
        return self.current().apply(state, x, dx)

    def apply_batch(self, xs, dxs, states):
        out = apply_all(self.current(), xs, dxs, states)
        self.t += 1
        return out

    def __repr__(self):
        c = self.constructor
        name = repr(c) if isinstance(c, Rule) else getattr(c, "__name__", repr(c))
        parts = [name] + [repr(s) for s in self.schedules] + [f"{k}={s!r}" for k, s in self.kw_schedules.items()]
        if self.eta_scale != 1.0:
            parts.append(f"eta_scale={self.eta_scale:g}")
        return "Scheduler(" + ", ".join(parts) + ")"

    def __eq__(self, other):  # it holds a step count: two schedulers are equal only when they are one
        return self is other

    __hash__ = object.__hash__


def _scale_eta(rule: Rule, scale: float) -> Rule:
    """`rule` with its learning rate (each rule's of a chain) multiplied by `scale`."""
    if isinstance(rule, OptimiserChain):
        new = copy.copy(rule)
        new._implicit = {}
        new.rules = tuple(_scale_eta(r, scale) for r in rule.rules)
        return new
    return rule.adjust(eta=rule.eta * scale) if "eta" in rule.fields else rule

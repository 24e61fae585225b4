"""Optimisation rules, as Optimisers.jl writes them.

A rule is a small object holding hyperparameters, with two methods:

* ``init(x) -> state``: fresh state for a parameter like `x`;
* ``apply(state, x, dx) -> (state, step)``: the step to subtract from `x` (``x -= step``);
  a step of ``None`` means "no update this time" (`AccumGrad` while it accumulates).

The built-in rules keep their per-parameter state in a Rust `OptState` (the arrays and
scalars of Optimisers.jl's state tuples), so that `apply_all` can update every parameter of
a model in one call into the fused Rust kernel. Each names its Rust rule (``native = "Adam"``:
the class ``_core.Adam``, one per rule of the Rust registry in ``rust/core/src/optim/rules``),
which it builds once from its hyperparameters by keyword. Their `apply` here is the same math
in tensor ops: the reference the kernel is tested against, and the path custom rules take.

Every rule of Optimisers.jl v0.4 is here, with its defaults and its update formula (see each
class): Descent, Momentum, Nesterov, RMSProp, Rprop, Adam, Lion, RAdam, AdaMax, OAdam, AdaGrad,
AdaDelta, AMSGrad, NAdam, AdamW, AdaBelief, WeightDecay, SignDecay, ClipGrad, ClipNorm,
AccumGrad and OptimiserChain; Flux's old names too (ADAM, RADAM, NADAM, ADAMW, OADAM, ADAGrad,
ADADelta, Optimiser, ClipValue, ExpDecay, InvDecay).

Hyperparameters are taken positionally in Optimisers.jl's order or by keyword, ASCII or Greek
(``Adam(0.01)``, ``Adam(eta=0.01)``, ``Adam(η=0.01)``); switches that are keywords in Julia
(``centred``, ``couple``, ``throw``) are keyword-only here too. Values are checked when the rule
is made and when it is adjusted: a negative learning rate, ``epsilon <= 0``, a β outside
``[0, 1)`` raise ``ValueError`` naming the rule and the argument.

>>> import fluxrs as fx
>>> fx.Adam()
Adam(0.001, (0.9, 0.999), 1e-08)
>>> fx.RMSProp(centred=True)
RMSProp(0.001, 0.9, 1e-08, centred=True)
>>> fx.AdamW(lambd=0.01)
AdamW(0.001, (0.9, 0.999), 0.01, 1e-08, couple=True)
>>> x = fx.tensor([1.0, 2.0])
>>> rule = fx.Momentum(0.1, 0.9)
>>> state = rule.init(x)
>>> state, step = rule.apply(state, x, fx.tensor([1.0, -1.0]))
>>> [round(v, 6) for v in step.tolist()]           # v = ρ v + η dx
[0.1, -0.1]
>>> fx.Adam(-0.1)
Traceback (most recent call last):
...
ValueError: Adam: the learning rate eta must be >= 0 (Optimisers.jl: "the learning rate cannot be negative"), got -0.1

A custom rule subclasses `Rule` and defines `init` and `apply`; it then works everywhere a
built-in one does (setup, update_, train_), on the per-parameter Python path:

>>> class SignDescent(fx.optimise.Rule):
...     fields, defaults = ("eta",), (0.01,)
...     def apply(self, state, x, dx):
...         return state, dx.sign() * self.eta
>>> m = fx.Dense(2, 1)
>>> before = m.bias.tolist()
>>> _ = fx.update_(fx.setup(SignDescent(0.5), m), m, fx.gradient(lambda m: m(fx.ones(2)).sum(), m)[0])
>>> m.bias.tolist()
[-0.5]
"""

from __future__ import annotations

import copy
import math
import numbers
from typing import Any, Callable, ClassVar

import numpy as np

from fluxrs import _core
from fluxrs._core import Tensor
from fluxrs.autodiff import Params
from fluxrs.tensor import where as _where

__all__ = ["Rule", "Descent", "Momentum", "Nesterov", "RMSProp", "Rprop", "Adam", "Lion", "RAdam", "AdaMax",
           "OAdam", "AdaGrad", "AdaDelta", "AMSGrad", "NAdam", "AdamW", "AdaBelief", "WeightDecay", "SignDecay",
           "ClipGrad", "ClipNorm", "AccumGrad", "OptimiserChain", "ExpDecay", "InvDecay",
           "Optimiser", "ADAM", "RADAM", "NADAM", "ADAMW", "OADAM", "ADAGrad", "ADADelta", "ClipValue"]

# Greek and Julia spellings of hyperparameter names, so Flux code reads the same.
_ALIASES = {"η": "eta", "ρ": "rho", "β": "beta", "ϵ": "epsilon", "ε": "epsilon", "eps": "epsilon", "λ": "lambd",
            "lambda_": "lambd", "lambda": "lambd", "lr": "eta", "δ": "delta", "ω": "omega", "ℓ": "ell",
            "Γ": "gamma", "centered": "centred", "γ": "gamma",
            "l": "ell"}  # Python reads the keyword ℓ= as l= (identifiers are NFKC-normalised; ϵ= arrives as ε=)

_REQUIRED = object()  # a hyperparameter without a default (AccumGrad's n)


class _Hyper:
    """A built-in rule's hyperparameter: read from the instance as any attribute; setting it,
    even with ``object.__setattr__``, also drops the rule's cached Rust rule (see `chain`)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __set__(self, obj: Any, value: Any) -> None:
        d = obj.__dict__
        d[self.name] = value
        d.pop("_native_chain", None)


def _real(rule: str, key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or v != v:
        raise TypeError(f"{rule}: {key} must be a real number, got {v!r}")
    return float(v)


class Rule:
    """Base class of optimisation rules.

    Subclasses list their hyperparameters in `fields` with `defaults`; the constructor takes
    them positionally or by keyword (Greek names too: ``Adam(η=0.01)``), except those named in
    `keyword_only`. A `Params` given anywhere among the positional arguments, or as
    ``params=``, binds the rule to those parameters, Flux's oldest style
    (``Descent(0.1, params(m))``, ``SGD(params(m), 0.1)``), which `train_(loss, data, opt)`
    then updates.

    A rule used in the implicit style (``update_(opt, ps, gs)``) keeps its state inside
    itself, keyed by parameter identity, as Flux 0.13's optimisers did.
    """

    fields: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[tuple[Any, ...]] = ()
    #: Fields that can only be given by keyword (Julia's keyword arguments).
    keyword_only: ClassVar[tuple[str, ...]] = ()
    #: Name of this rule in the fused Rust kernel (its class in `_core`, which takes the
    #: hyperparameters by keyword); None for a rule implemented only in Python.
    native: ClassVar[str | None] = None
    #: False for a rule that cannot be one step of an OptimiserChain (a Scheduler, which counts whole updates).
    chainable: ClassVar[bool] = True
    _native_type: ClassVar[type | None] = None

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if cls.native is not None:
            cls._native_type = getattr(_core, cls.native)
            for k in cls.fields:
                if not isinstance(cls.__dict__.get(k), _Hyper):
                    setattr(cls, k, _Hyper(k))

    def __init__(self, *args: Any, params: Params | None = None, **kwargs: Any):
        positional = []
        for a in args:
            if isinstance(a, Params):
                if params is not None:
                    raise TypeError(f"{type(self).__name__}: parameters given twice")
                params = a
            else:
                positional.append(a)
        name = type(self).__name__
        npos = len(self.fields) - len(self.keyword_only)
        if len(positional) > npos:
            kw = f"; {', '.join(self.keyword_only)} by keyword only" if self.keyword_only else ""
            raise TypeError(f"{name} takes at most {npos} hyperparameters {self.fields[:npos]} positionally{kw}, "
                            f"got {len(positional)}: {tuple(positional)}")
        values = dict(zip(self.fields, self.defaults))
        values.update(zip(self.fields, positional))
        for k, v in kwargs.items():
            key = _ALIASES.get(k, k)
            if key not in self.fields:
                raise TypeError(f"{name} has no hyperparameter {k!r}; it has {self.fields}")
            if self.fields.index(key) < len(positional):
                raise TypeError(f"{name}: {key} given both positionally and by keyword")
            values[key] = v
        for k in self.fields:
            if values[k] is _REQUIRED:
                raise TypeError(f"{name}: the hyperparameter {k} has no default and must be given")
            object.__setattr__(self, k, self._check(k, values[k]))
        self.params = params
        self._implicit: dict[int, tuple[Tensor, Any]] = {}

    # ---------------------------------------------------------------- validation

    def _check(self, key: str, value: Any) -> Any:
        """Validate one hyperparameter: numbers must be real (tuples of them too), and the
        usual names are range-checked (eta >= 0, epsilon > 0, each β in [0, 1), ...)."""
        name = type(self).__name__
        default = dict(zip(self.fields, self.defaults)).get(key)
        if isinstance(default, bool):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name}: {key} must be True or False, got {value!r}")
            return bool(value)
        if isinstance(value, (tuple, list)):
            value = tuple(_real(name, key, v) for v in value)
        else:
            value = _real(name, key, value)
        return self._range(key, value)

    def _range(self, key: str, value: Any) -> Any:
        name = type(self).__name__
        if key == "eta":
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name}: the learning rate eta must be >= 0 (Optimisers.jl: \"the learning rate "
                                 f"cannot be negative\"), got {value!r}")
        elif key == "epsilon":
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name}: epsilon must be > 0 (it keeps the update's denominator away from zero), "
                                 f"got {value!r}")
        elif key == "beta":
            if not isinstance(value, tuple) or len(value) != 2:
                raise TypeError(f"{name}: beta must be a pair (β₁, β₂), got {value!r}")
            for i, b in enumerate(value):
                if not 0 <= b < 1:
                    raise ValueError(f"{name}: beta[{i}] (β{'₁₂'[i]}) must be in [0, 1), got {b!r} in beta={value!r}")
        elif key == "rho":
            if not 0 <= value < 1:
                raise ValueError(f"{name}: rho must be in [0, 1), got {value!r}")
        elif key == "lambd":
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name}: the decay strength lambd (λ) must be >= 0, got {value!r}")
        elif key == "delta":
            if not value >= 0:
                raise ValueError(f"{name}: the clipping threshold delta must be >= 0, got {value!r}")
        return value

    # ---------------------------------------------------------------- the rule's math

    def chain(self) -> tuple[Any, ...] | None:
        """This rule as the fused kernel's chain of Rust rules (``(_core.Adam(...),)``), or None
        when some part exists only in Python. Built once, and again after a hyperparameter
        changes, so an update hands Rust the rule as it is, with nothing to parse."""
        native = self._native_type
        if native is None:
            return None
        ch = self.__dict__.get("_native_chain")
        if ch is None:
            ch = (native(**{k: getattr(self, k) for k in native.fields}),)
            self.__dict__["_native_chain"] = ch
        return ch

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_native_chain", None)  # rebuilt on demand; Rust objects do not pickle
        return state

    def init(self, x: Tensor) -> Any:
        """Fresh state for a parameter like `x` (Optimisers.jl's `init`)."""
        ch = self.chain()
        return _core.OptState(ch, x) if ch is not None else None

    def apply(self, state: Any, x: Tensor, dx: Tensor) -> tuple[Any, Tensor | None]:
        """``(new_state, step)``: the step to subtract from `x` (Optimisers.jl's `apply!`), or
        None for no update.

        Native rules read and advance their slot of the `OptState` (arrays updated in
        place, scalars replaced), by way of `step`."""
        if self.native is None:
            raise NotImplementedError(f"{type(self).__name__} must define apply(state, x, dx)")
        arrays, scalars = state.arrays, state.scalars
        scalars[0], out = self.step(arrays[0], list(scalars[0]), x, dx)
        state.scalars = scalars
        return state, out

    def step(self, arrays: list[Tensor], scalars: list[float], x: Tensor,
             dx: Tensor) -> tuple[list[float], Tensor | None]:
        """One parameter's update in tensor ops: `arrays` (this rule's state arrays) are
        updated in place, the new `scalars` and the step (None: no update) are returned."""
        raise NotImplementedError

    def apply_batch(self, xs: list[Tensor], dxs: list[Tensor], states: list[Any]) -> list[Any] | None:
        """Update all of `xs` at once, returning the new states; None (the default) lets
        `apply_all` choose between the fused kernel and per-parameter `apply`."""
        return None

    # ---------------------------------------------------------------- conveniences

    def adjust(self, eta: float | None = None, **changes: Any) -> "Rule":
        """A copy with some hyperparameters changed: ``rule.adjust(0.01)`` (the learning
        rate), ``rule.adjust(beta=(0.8, 0.99))``. Unknown names raise TypeError."""
        if eta is not None:
            changes["eta"] = eta
        new = copy.copy(self)
        new._implicit = {}
        for k, v in changes.items():
            key = _ALIASES.get(k, k)
            if key not in self.fields:
                raise TypeError(f"{type(self).__name__} has no hyperparameter {k!r}; it has {self.fields}")
            object.__setattr__(new, key, self._check(key, v))
        return new

    def __call__(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} is an optimisation rule, not a function: use fx.update_(opt, ...) "
                        f"or fx.train_(...)")

    def __repr__(self) -> str:
        def fmt(v):
            if isinstance(v, tuple):
                return "(" + ", ".join(fmt(u) for u in v) + ")"
            if isinstance(v, (bool, int)):
                return repr(v)
            return f"{v:g}" if abs(v) < 1e-4 and v != 0 else repr(v)
        pos = [fmt(getattr(self, k)) for k in self.fields if k not in self.keyword_only]
        kw = [f"{k}={fmt(getattr(self, k))}" for k in self.keyword_only]
        return f"{type(self).__name__}(" + ", ".join(pos + kw) + ")"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and all(getattr(self, k) == getattr(other, k) for k in self.fields)

    __hash__ = object.__hash__


class _AdamLike(Rule):
    """Rules with Optimisers.jl's ``(eta, beta, epsilon)`` and bias-correction scalars β^t."""

    fields, defaults = ("eta", "beta", "epsilon"), (0.001, (0.9, 0.999), 1e-8)


# ---------------------------------------------------------------- plain descent and momentum

class Descent(Rule):
    """Gradient descent: ``x -= η dx``. ``Descent(eta=0.1)``.

    >>> import fluxrs as fx
    >>> x = fx.tensor([1.0]); _ = fx.update_(fx.Descent(0.5), x, fx.tensor([2.0])); x.tolist()
    [0.0]
    """

    fields, defaults, native = ("eta",), (0.1,), "Descent"

    def step(self, arrays, scalars, x, dx):
        return scalars, dx * self.eta


class Momentum(Rule):
    """Gradient descent with momentum: ``v = ρ v + η dx; x -= v``. ``Momentum(eta=0.01, rho=0.9)``."""

    fields, defaults, native = ("eta", "rho"), (0.01, 0.9), "Momentum"

    def step(self, arrays, scalars, x, dx):
        (v,) = arrays
        v.assign_(self.rho * v + self.eta * dx)
        return scalars, v  # the step is the velocity itself, as in Optimisers.jl


class Nesterov(Rule):
    """Nesterov momentum. ``Nesterov(eta=0.001, rho=0.9)``:
    ``step = -ρ² v + (1 + ρ) η dx; v = ρ v - η dx``."""

    fields, defaults, native = ("eta", "rho"), (0.001, 0.9), "Nesterov"

    def step(self, arrays, scalars, x, dx):
        (v,) = arrays
        eta, rho = self.eta, self.rho
        out = -(rho * rho) * v + ((1 + rho) * eta) * dx  # needs the old velocity
        v.assign_(rho * v - eta * dx)
        return scalars, out


class RMSProp(Rule):
    """RMSProp. ``RMSProp(eta=0.001, rho=0.9, epsilon=1e-8, centred=False)`` (``centered=``
    too): ``q = ρ q + (1-ρ) dx²; step = η dx / (√q + ϵ)``. Centred RMSProp also keeps the
    mean ``l = ρ l + (1-ρ) dx`` and divides by ``√(q - l²) + ϵ``. `centred` cannot be changed
    by `adjust` (the two variants keep different state), as in Optimisers.jl.

    >>> import fluxrs as fx
    >>> x = fx.tensor([0.0], dtype="float64")
    >>> _ = fx.update_(fx.setup(fx.RMSProp(0.01), x), x, fx.tensor([2.0], dtype="float64"))
    >>> round(x.item(), 10)     # -η·2/(√(0.1·4) + ϵ)
    -0.0316227761
    """

    fields, defaults, native = ("eta", "rho", "epsilon", "centred"), (0.001, 0.9, 1e-8, False), "RMSProp"
    keyword_only = ("centred",)

    def adjust(self, eta=None, **changes):
        for k, v in changes.items():
            if _ALIASES.get(k, k) == "centred" and bool(v) != self.centred:
                raise ValueError("RMSProp: adjust(centred=...) is not allowed, as the variants store different "
                                 "states; set up a new optimiser state instead")
        return super().adjust(eta, **changes)

    def step(self, arrays, scalars, x, dx):
        rho = self.rho
        quad = arrays[0]
        quad.assign_(rho * quad + (1 - rho) * (dx * dx))
        if self.centred:
            lin = arrays[1]
            lin.assign_(rho * lin + (1 - rho) * dx)
            denom = (quad - lin * lin).sqrt() + self.epsilon
        else:
            denom = quad.sqrt() + self.epsilon
        return scalars, dx * self.eta / denom


class Rprop(Rule):
    """Rprop, full-batch and sign-based. ``Rprop(eta=1e-3, ell=(0.5, 1.2), gamma=(1e-6, 50.0))``
    (``ℓ=``, ``Γ=`` too): each element keeps its own step size, starting at η, multiplied by
    ``ell[1]`` (up to ``gamma[1]``) while the gradient keeps its sign and by ``ell[0]`` (down
    to ``gamma[0]``) when it flips; the step is that size times the sign of the gradient, and a
    flip skips one step. η is read once, at `setup` (adjusting it later changes nothing, as in
    Optimisers.jl)."""

    fields, defaults, native = ("eta", "ell", "gamma"), (1e-3, (0.5, 1.2), (1e-6, 50.0)), "Rprop"

    def _range(self, key, value):
        name = type(self).__name__
        if key in ("ell", "gamma"):
            if not isinstance(value, tuple) or len(value) != 2:
                raise TypeError(f"{name}: {key} must be a pair, got {value!r}")
            if key == "ell" and not (value[0] > 0 and value[1] > 0):
                raise ValueError(f"{name}: ell (ℓ, the decrease and increase factors) must both be > 0, got {value!r}")
            if key == "gamma" and not 0 <= value[0] <= value[1]:
                raise ValueError(f"{name}: gamma (Γ, the smallest and largest step sizes) must satisfy "
                                 f"0 <= gamma[0] <= gamma[1], got {value!r}")
            return value
        return super()._range(key, value)

    def step(self, arrays, scalars, x, dx):
        (l0, l1), (g0, g1) = self.ell, self.gamma
        g, etas = arrays
        s = g * dx
        grow = (etas * l1).minimum(g1)
        shrink = (etas * l0).maximum(g0)
        new_etas = _where(s > 0, grow, _where(s < 0, shrink, etas))
        new_g = _where(s < 0, 0.0, dx)
        etas.assign_(new_etas)
        g.assign_(new_g)
        return scalars, etas * g.sign()


# ---------------------------------------------------------------- the Adam family

class Adam(_AdamLike):
    """Adam (Kingma & Ba). ``Adam(eta=0.001, beta=(0.9, 0.999), epsilon=1e-8)``:
    ``m = β₁ m + (1-β₁) dx; v = β₂ v + (1-β₂) dx²;
    step = m / (1-β₁ᵗ) / (√(v / (1-β₂ᵗ)) + ϵ) η``."""

    native = "Adam"

    def step(self, arrays, scalars, x, dx):
        mt, vt = arrays
        (b1, b2), (bt1, bt2) = self.beta, scalars
        mt.assign_(b1 * mt + (1 - b1) * dx)
        vt.assign_(b2 * vt + (1 - b2) * (dx * dx))
        out = mt / (1 - bt1) / ((vt / (1 - bt2)).sqrt() + self.epsilon) * self.eta
        return [bt1 * b1, bt2 * b2], out


class Lion(Rule):
    """Lion (Chen et al. 2023). ``Lion(eta=0.001, beta=(0.9, 0.999))``, in Optimisers.jl's
    form: ``s = β₂ dx + (1-β₂) s; step = η sign((β₂-β₁) dx + β₁ s)``."""

    fields, defaults, native = ("eta", "beta"), (0.001, (0.9, 0.999)), "Lion"

    def step(self, arrays, scalars, x, dx):
        (s,) = arrays
        b1, b2 = self.beta
        s.assign_(b2 * dx + (1 - b2) * s)
        return scalars, ((b2 - b1) * dx + b1 * s).sign() * self.eta


class RAdam(_AdamLike):
    """Rectified Adam. ``RAdam(eta=0.001, beta=(0.9, 0.999), epsilon=1e-8)``: Adam's step
    times the rectification ``r(ρₜ)`` once ``ρₜ = ρ∞ - 2t β₂ᵗ/(1-β₂ᵗ) > 4``
    (``ρ∞ = 2/(1-β₂) - 1``); before that, momentum alone: ``step = m / (1-β₁ᵗ) η``."""

    native = "RAdam"

    def step(self, arrays, scalars, x, dx):
        mt, vt = arrays
        (b1, b2), (bt1, bt2, t) = self.beta, scalars
        rho_inf = 2 / (1 - b2) - 1
        mt.assign_(b1 * mt + (1 - b1) * dx)
        vt.assign_(b2 * vt + (1 - b2) * (dx * dx))
        rho = rho_inf - 2 * t * bt2 / (1 - bt2)
        if rho > 4:
            r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            out = mt / (1 - bt1) / ((vt / (1 - bt2)).sqrt() + self.epsilon) * self.eta * r
        else:
            out = mt / (1 - bt1) * self.eta
        return [bt1 * b1, bt2 * b2, t + 1], out


class AdaMax(_AdamLike):
    """AdaMax, Adam with the ∞-norm. ``AdaMax(eta=0.001, beta=(0.9, 0.999), epsilon=1e-8)``:
    ``m = β₁ m + (1-β₁) dx; u = max(β₂ u, |dx|); step = η/(1-β₁ᵗ) · m/(u + ϵ)``."""

    native = "AdaMax"

    def step(self, arrays, scalars, x, dx):
        mt, ut = arrays
        (b1, b2), (bt1, bt2) = self.beta, scalars
        mt.assign_(b1 * mt + (1 - b1) * dx)
        ut.assign_((b2 * ut).maximum(dx.abs()))
        return [bt1 * b1, bt2 * b2], (self.eta / (1 - bt1)) * mt / (ut + self.epsilon)


class OAdam(_AdamLike):
    """Optimistic Adam. ``OAdam(eta=0.001, beta=(0.5, 0.9), epsilon=1e-8)``: with Adam's
    step ``a`` (learning rate included), ``step = 2a - a_prev``."""

    defaults, native = (0.001, (0.5, 0.9), 1e-8), "OAdam"

    def step(self, arrays, scalars, x, dx):
        mt, vt, term = arrays
        (b1, b2), (bt1, bt2) = self.beta, scalars
        mt.assign_(b1 * mt + (1 - b1) * dx)
        vt.assign_(b2 * vt + (1 - b2) * (dx * dx))
        new = self.eta * mt / (1 - bt1) / ((vt / (1 - bt2)).sqrt() + self.epsilon)
        out = 2.0 * new - term  # needs the previous term
        term.assign_(new)
        return [bt1 * b1, bt2 * b2], out


class AdaGrad(Rule):
    """AdaGrad. ``AdaGrad(eta=0.1, epsilon=1e-8)``: ``acc += dx²; step = η dx / (√acc + ϵ)``,
    with `acc` starting at ϵ."""

    fields, defaults, native = ("eta", "epsilon"), (0.1, 1e-8), "AdaGrad"

    def step(self, arrays, scalars, x, dx):
        (acc,) = arrays
        acc.assign_(acc + dx * dx)
        return scalars, dx * self.eta / (acc.sqrt() + self.epsilon)


class AdaDelta(Rule):
    """AdaDelta: no learning rate. ``AdaDelta(rho=0.9, epsilon=1e-8)``:
    ``acc = ρ acc + (1-ρ) dx²; step = dx √(Δacc + ϵ) / √(acc + ϵ);
    Δacc = ρ Δacc + (1-ρ) step²``."""

    fields, defaults, native = ("rho", "epsilon"), (0.9, 1e-8), "AdaDelta"

    def step(self, arrays, scalars, x, dx):
        acc, dacc = arrays
        rho, eps = self.rho, self.epsilon
        acc.assign_(rho * acc + (1 - rho) * (dx * dx))
        out = dx * (dacc + eps).sqrt() / (acc + eps).sqrt()  # needs the old Δacc
        dacc.assign_(rho * dacc + (1 - rho) * (out * out))
        return scalars, out


class AMSGrad(_AdamLike):
    """AMSGrad. ``AMSGrad(eta=0.001, beta=(0.9, 0.999), epsilon=1e-8)``: Adam's moments
    (no bias correction, all three state arrays starting at ϵ) with
    ``v̂ = max(v̂, v); step = η m / (√v̂ + ϵ)``."""

    native = "AMSGrad"

    def step(self, arrays, scalars, x, dx):
        mt, vt, vhat = arrays
        b1, b2 = self.beta
        mt.assign_(b1 * mt + (1 - b1) * dx)
        vt.assign_(b2 * vt + (1 - b2) * (dx * dx))
        vhat.assign_(vhat.maximum(vt))
        return scalars, self.eta * mt / (vhat.sqrt() + self.epsilon)


class NAdam(_AdamLike):
    """NAdam, Nesterov's Adam. ``NAdam(eta=0.001, beta=(0.9, 0.999), epsilon=1e-8)``:
    ``step = (β₁ m/(1-β₁β₁ᵗ) + (1-β₁) dx/(1-β₁ᵗ)) / (√(β₂ v/(1-β₂ᵗ)) + ϵ) η``."""

    native = "NAdam"

    def step(self, arrays, scalars, x, dx):
        mt, vt = arrays
        (b1, b2), (bt1, bt2) = self.beta, scalars
        mt.assign_(b1 * mt + (1 - b1) * dx)
        vt.assign_(b2 * vt + (1 - b2) * (dx * dx))
        num = b1 * mt / (1 - b1 * bt1) + (1 - b1) * dx / (1 - bt1)
        out = num / ((vt * b2 / (1 - bt2)).sqrt() + self.epsilon) * self.eta
        return [bt1 * b1, bt2 * b2], out


class AdamW(Rule):
    """AdamW, Adam with decoupled weight decay, as Optimisers.jl v0.4 (and PyTorch) do it.
    ``AdamW(eta=0.001, beta=(0.9, 0.999), lambd=0.0, epsilon=1e-8, couple=True)`` (``λ=`` too):
    with ``a`` Adam's step at η = 1, ``step = η (a + λ x)``; ``couple=False`` gives the
    original paper's ``step = η a + λ x`` (Optimisers.jl before v0.4)."""

    fields = ("eta", "beta", "lambd", "epsilon", "couple")
    defaults, native = (0.001, (0.9, 0.999), 0.0, 1e-8, True), "AdamW"
    keyword_only = ("couple",)

    def step(self, arrays, scalars, x, dx):
        mt, vt = arrays
        (b1, b2), (bt1, bt2) = self.beta, scalars
        mt.assign_(b1 * mt + (1 - b1) * dx)
        vt.assign_(b2 * vt + (1 - b2) * (dx * dx))
        a = mt / (1 - bt1) / ((vt / (1 - bt2)).sqrt() + self.epsilon)
        if self.couple:
            out = self.eta * (a + self.lambd * x)
        else:
            out = self.eta * a + self.lambd * x
        return [bt1 * b1, bt2 * b2], out


class AdaBelief(_AdamLike):
    """AdaBelief. ``AdaBelief(eta=0.001, beta=(0.9, 0.999), epsilon=1e-16)``:
    ``m = β₁ m + (1-β₁) dx; s = β₂ s + (1-β₂)(dx - m)² + ϵ;
    step = η m/(1-β₁ᵗ) / (√(s/(1-β₂ᵗ)) + ϵ)``."""

    defaults, native = (0.001, (0.9, 0.999), 1e-16), "AdaBelief"

    def step(self, arrays, scalars, x, dx):
        mt, st = arrays
        (b1, b2), (bt1, bt2) = self.beta, scalars
        mt.assign_(b1 * mt + (1 - b1) * dx)
        dev = dx - mt
        st.assign_(b2 * st + (1 - b2) * (dev * dev) + self.epsilon)
        out = self.eta * mt / (1 - bt1) / ((st / (1 - bt2)).sqrt() + self.epsilon)
        return [bt1 * b1, bt2 * b2], out


# ---------------------------------------------------------------- gradient transformations

class WeightDecay(Rule):
    """Adds ``λ x`` to the gradient (L2 regularisation), for use in an `OptimiserChain`.
    ``WeightDecay(lambd=5e-4)`` (``λ=`` also accepted)."""

    fields, defaults, native = ("lambd",), (5e-4,), "WeightDecay"

    def step(self, arrays, scalars, x, dx):
        return scalars, dx + self.lambd * x


class SignDecay(Rule):
    """Adds ``λ sign(x)`` to the gradient (L1 regularisation), for use in an `OptimiserChain`.
    ``SignDecay(lambd=1e-3)``.

    >>> import fluxrs as fx
    >>> x = fx.tensor([1.0, -10.0, 100.0], dtype="float64")
    >>> _ = fx.update_(fx.setup(fx.SignDecay(0.1), x), x, fx.tensor([3.0, 2.0, -1.0], dtype="float64"))
    >>> [round(v, 10) for v in x.tolist()]             # Optimisers.jl's test: [1-0.1-3, -10+0.1-2, 100-0.1+1]
    [-2.1, -11.9, 100.9]
    """

    fields, defaults, native = ("lambd",), (1e-3,), "SignDecay"

    def step(self, arrays, scalars, x, dx):
        return scalars, dx + self.lambd * x.sign()


class ClipGrad(Rule):
    """Clips every gradient component to ``[-δ, δ]``. ``ClipGrad(delta=10)``."""

    fields, defaults, native = ("delta",), (10.0,), "ClipGrad"

    def step(self, arrays, scalars, x, dx):
        return scalars, dx.clamp(-self.delta, self.delta)


class ClipNorm(Rule):
    """Scales each gradient array whose `p`-norm exceeds ω down to ω.
    ``ClipNorm(omega=10, p=2, throw=True)`` (``ω=`` too); with `throw`, a gradient whose norm
    is infinite or NaN raises ValueError (Optimisers.jl's DomainError) and nothing is updated.

    >>> import fluxrs as fx
    >>> x = fx.zeros(3, dtype="float64")
    >>> _ = fx.update_(fx.setup(fx.ClipNorm(10), x), x, fx.tensor([1.0, 10.0, 100.0], dtype="float64"))
    >>> round(float((x * x).sum().sqrt()), 10)
    10.0
    """

    fields, defaults, native = ("omega", "p", "throw"), (10.0, 2.0, True), "ClipNorm"
    keyword_only = ("throw",)

    def _range(self, key, value):
        if key == "omega" and not value > 0:
            raise ValueError(f"ClipNorm: the largest norm omega (ω) must be > 0, got {value!r}")
        return super()._range(key, value)

    def step(self, arrays, scalars, x, dx):
        nrm = _norm(dx.numpy().astype(np.float64, copy=False).ravel(), self.p)
        if self.throw and not math.isfinite(nrm):
            raise ValueError(f"ClipNorm: gradient has {self.p}-norm {nrm}, for an array of {dx.size} elements")
        lam = min(self.omega / nrm, 1.0) if nrm != 0 else 1.0
        return scalars, dx * lam


def _norm(a: np.ndarray, p: float) -> float:
    """Julia's ``norm(a, p)``, as the Rust kernel computes it (in float64)."""
    a = np.abs(a)
    if p == 2:
        return float(np.sqrt(np.sum(a * a)))
    if p == 1:
        return float(np.sum(a))
    if p == math.inf:
        return float(np.max(a, initial=0.0))
    if p == 0:
        return float(np.count_nonzero(a))
    if p == -math.inf:
        return float(np.min(a, initial=math.inf))
    return float(np.sum(a ** p) ** (1 / p))


class AccumGrad(Rule):
    """Accumulates `n` gradients and applies the rest of the chain to their mean once every
    `n` steps: ``OptimiserChain(AccumGrad(n), Rule())`` trains with an effective batch `n`
    times larger. ``AccumGrad(n)``, `n` a whole number >= 1 (no default).

    Optimisers.jl's example:

    >>> import fluxrs as fx
    >>> m = fx.Struct(x=fx.tensor([1.0]), y=fx.tensor([2.0]))
    >>> r = fx.OptimiserChain(fx.AccumGrad(2), fx.WeightDecay(0.01), fx.Descent(0.1))
    >>> s = fx.setup(r, m)
    >>> _ = fx.update_(s, m, fx.Struct(x=[33.0], y=[0.0]))
    >>> m.x.tolist(), m.y.tolist()          # model not yet changed
    ([1.0], [2.0])
    >>> _ = fx.update_(s, m, fx.Struct(x=[0.0], y=[444.0]))
    >>> [round(v, 5) for v in m.x.tolist() + m.y.tolist()]  # n=2 gradients applied at once
    [-0.651, -20.202]
    """

    fields, defaults, native = ("n",), (_REQUIRED,), "AccumGrad"

    def _check(self, key, value):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
                value = int(value)
            else:
                raise TypeError(f"AccumGrad: n must be a whole number of gradients, got {value!r}")
        if value < 1:
            raise ValueError(f"AccumGrad: n must be >= 1 (AccumGrad must accumulate at least one gradient), "
                             f"got {value!r}")
        return int(value)

    def step(self, arrays, scalars, x, dx):
        (acc,) = arrays
        (counter,) = scalars
        part = dx * (1.0 / self.n)
        acc.assign_(part if counter == 1 else acc + part)
        if counter >= self.n:
            return [1.0], acc
        return [counter + 1.0], None


# ---------------------------------------------------------------- composition

class OptimiserChain(Rule):
    """Rules applied in sequence, each to the previous one's output:
    ``OptimiserChain(WeightDecay(1e-4), Adam(1e-3))`` (old name: ``Optimiser``). An empty
    chain subtracts the gradient itself (``Descent(1)``). `adjust` changes every rule of the
    chain that has the hyperparameter.

    Optimisers.jl's example (clips before discounting):

    >>> import fluxrs as fx
    >>> o = fx.OptimiserChain(fx.ClipGrad(1.0), fx.Descent(0.1)); o
    OptimiserChain(ClipGrad(1.0), Descent(0.1))
    >>> m = (fx.zeros(3, dtype="float64"),)
    >>> s = fx.setup(o, m)
    >>> _ = fx.update_(s, m, ([0.3, 1, 7],))
    >>> [round(v, 12) for v in m[0].tolist()]
    [-0.03, -0.1, -0.1]
    """

    def __init__(self, *rules: Any, params: Params | None = None):
        flat: list[Rule] = []
        for r in rules:
            if isinstance(r, Params):
                if params is not None:
                    raise TypeError("OptimiserChain: parameters given twice")
                params = r
            elif isinstance(r, OptimiserChain):
                flat.extend(r.rules)
            elif isinstance(r, Rule) and not r.chainable:
                raise TypeError(f"OptimiserChain: a {type(r).__name__} cannot go inside a chain; schedule the whole "
                                "chain instead: Scheduler(lambda eta: OptimiserChain(..., Adam(eta)), schedule)")
            elif isinstance(r, Rule):
                flat.append(r)
            else:
                raise TypeError(f"OptimiserChain takes rules, got {type(r).__name__}")
        self.rules = tuple(flat)
        self.params = params
        self._implicit = {}

    def chain(self):
        parts = [r.chain() for r in self.rules]
        if any(p is None or len(p) != 1 for p in parts):
            return None
        return tuple(p[0] for p in parts)

    def init(self, x):
        ch = self.chain()
        if ch is not None:
            return _core.OptState(ch, x) if ch else None
        return tuple(r.init(x) for r in self.rules)

    def apply(self, state, x, dx):
        if isinstance(state, _core.OptState):
            # every rule native: rule i owns slot i of the shared state
            arrays, scalars = state.arrays, state.scalars
            for i, r in enumerate(self.rules):
                scalars[i], dx = r.step(arrays[i], list(scalars[i]), x, dx)
                if dx is None:  # AccumGrad holding: the rest of the chain waits
                    break
            state.scalars = scalars
            return state, dx
        if state is None:  # an empty chain
            return state, dx
        new = list(state)
        for i, r in enumerate(self.rules):
            new[i], dx = r.apply(state[i], x, dx)
            if dx is None:
                break
        return tuple(new), dx

    def adjust(self, eta=None, **changes):
        """Adjust every rule of the chain that has the hyperparameter (as Optimisers.jl)."""
        if eta is not None:
            changes["eta"] = eta
        new = copy.copy(self)
        new._implicit = {}
        new.rules = tuple(r.adjust(**_for_rule(r, changes)) for r in self.rules)
        return new

    def has(self, key: str) -> bool:
        return any(_has(r, key) for r in self.rules)

    def __repr__(self):
        return "OptimiserChain(" + ", ".join(repr(r) for r in self.rules) + ")"

    def __eq__(self, other):
        return type(self) is type(other) and self.rules == other.rules

    __hash__ = object.__hash__


def _has(rule: Rule, key: str) -> bool:
    """Whether `rule` (or some rule of a chain) has the hyperparameter `key`."""
    key = _ALIASES.get(key, key)
    if isinstance(rule, OptimiserChain):
        return rule.has(key)
    return key in rule.fields


def _for_rule(rule: Rule, changes: dict[str, Any]) -> dict[str, Any]:
    """The part of `changes` that `rule` has hyperparameters for."""
    return {k: v for k, v in changes.items() if _has(rule, k)}


# ---------------------------------------------------------------- Flux's schedule rules

class ExpDecay(Rule):
    """Flux's ExpDecay: scales the gradient by a learning rate that starts at η and is
    multiplied by `decay` every `decay_step` steps (after step `start`), down to `clip`.
    ``ExpDecay(eta=0.001, decay=0.1, decay_step=1000, clip=1e-4, start=0)``; typically last in
    a chain: ``Optimiser(Adam(), ExpDecay(1.0))``.

    The step count is kept per parameter in its state, so the rule itself never changes (Flux
    mutated ``o.eta``); `eta_at(n)` is the rate used at step n.

    >>> import fluxrs as fx
    >>> o = fx.ExpDecay(0.2, 0.5, 1, 1e-3)
    >>> [o.eta_at(n) for n in range(1, 5)]
    [0.1, 0.05, 0.025, 0.0125]
    """

    fields = ("eta", "decay", "decay_step", "clip", "start")
    defaults = (0.001, 0.1, 1000, 1e-4, 0)

    def _check(self, key, value):
        if key in ("decay_step", "start"):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"ExpDecay: {key} must be a whole number, got {value!r}")
            low = 1 if key == "decay_step" else 0
            if value < low:
                raise ValueError(f"ExpDecay: {key} must be >= {low}, got {value!r}")
            return int(value)
        value = super()._check(key, value)
        if key == "decay" and not 0 < value <= 1:
            raise ValueError(f"ExpDecay: decay must be in (0, 1], got {value!r}")
        if key == "clip" and not value >= 0:
            raise ValueError(f"ExpDecay: clip must be >= 0, got {value!r}")
        return value

    def eta_at(self, n: int) -> float:
        """The learning rate at step `n` (1-based)."""
        s, start = self.decay_step, self.start
        k = (n // s - start // s) if n > start else 0
        return self.eta if k <= 0 else max(self.eta * self.decay ** k, self.clip)

    def init(self, x):
        return 0

    def apply(self, state, x, dx):
        n = state + 1
        return n, dx * self.eta_at(n)


class InvDecay(Rule):
    """Flux's InvDecay: scales the gradient by ``1 / (1 + γ n)`` at the n-th step.
    ``InvDecay(gamma=0.001)``; the count is kept per parameter in its state.

    >>> import fluxrs as fx
    >>> x = fx.tensor([0.0], dtype="float64"); st = fx.setup(fx.InvDecay(0.5), x)
    >>> for _ in range(2):
    ...     _ = fx.update_(st, x, fx.tensor([1.0], dtype="float64"))
    >>> round(x.item(), 12)                      # -(1/1.5 + 1/2)
    -1.166666666667
    """

    fields, defaults = ("gamma",), (0.001,)

    def _range(self, key, value):
        if key == "gamma" and not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"InvDecay: gamma must be >= 0, got {value!r}")
        return value

    def init(self, x):
        return 1

    def apply(self, state, x, dx):
        return state + 1, dx * (1.0 / (1.0 + self.gamma * state))


# ---------------------------------------------------------------- Flux's names

Optimiser = OptimiserChain
ADAM = Adam
RADAM = RAdam
NADAM = NAdam
ADAMW = AdamW
OADAM = OAdam
ADAGrad = AdaGrad
ADADelta = AdaDelta
ClipValue = ClipGrad

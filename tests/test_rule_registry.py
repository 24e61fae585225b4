"""The built-in rules are declared twice, once per language: each rule of the Rust registry
(`rust/core/src/optim/rules/mod.rs`) has its Python declaration in `fluxrs.optimise.rules`
(names, defaults, checks, docstring, tensor-op reference), and back. These tests keep the two
from drifting apart, and check how a Python rule hands its Rust rule to the fused kernel."""

import copy
import pickle

import pytest

import fluxrs as fx
from fluxrs import _core
from fluxrs.callbacks import set_lr
from fluxrs.optimise.rules import Rule


def _declared() -> dict[str, type]:
    """The built-in Python rule classes that name a Rust rule, by that name."""
    out: dict[str, type] = {}
    todo = [Rule]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__module__.startswith("fluxrs.") and cls.__dict__.get("native") is not None:
            out[cls.native] = cls
    return out


def test_every_rust_rule_has_one_python_declaration_and_back():
    declared = _declared()
    assert sorted(declared) == sorted(_core.RULES)
    for name in _core.RULES:
        cls, native = declared[name], getattr(_core, name)
        assert cls.__name__ == name and issubclass(native, _core.NativeRule)
        # the same hyperparameters, in the same order, under the same names
        assert tuple(native.fields) == cls.fields, name


def test_each_rule_builds_its_rust_rule_from_its_defaults():
    for name, cls in _declared().items():
        rule = cls(2) if name == "AccumGrad" else cls()
        (native,) = rule.chain()
        assert type(native) is getattr(_core, name) and native.name == name
        assert native.hyper() == {k: getattr(rule, k) for k in cls.fields}, name
        arrays, scalars = native.state_names
        st = rule.init(fx.zeros(3))
        assert (len(st.arrays[0]), len(st.scalars[0])) == (len(arrays), len(scalars)), name


def test_the_rust_rule_is_built_once_and_again_after_a_change():
    rule = fx.Adam(0.1)
    ch = rule.chain()
    assert rule.chain() is ch
    assert rule.adjust(0.2).chain()[0].hyper()["eta"] == 0.2 and rule.chain() is ch
    set_lr(rule, 0.3)  # in place, through object.__setattr__
    assert rule.chain() is not ch and rule.chain()[0].hyper()["eta"] == 0.3
    chain = fx.OptimiserChain(fx.ClipGrad(1.0), rule)
    assert [r.name for r in chain.chain()] == ["ClipGrad", "Adam"]
    for other in (copy.copy(rule), copy.deepcopy(rule), pickle.loads(pickle.dumps(rule))):
        assert other == rule and other.chain()[0] == rule.chain()[0]


def test_rust_rules_take_their_hyperparameters_by_keyword_and_check_them():
    assert repr(_core.Momentum(eta=0.1, rho=0.9)) == "Momentum(eta=0.1, rho=0.9)"
    with pytest.raises(TypeError, match="missing hyperparameter rho"):
        _core.Momentum(eta=0.1)
    with pytest.raises(TypeError, match="no hyperparameter gamma"):
        _core.Momentum(eta=0.1, rho=0.9, gamma=1.0)
    with pytest.raises(TypeError, match="beta"):
        _core.Adam(eta=0.1, beta=0.9, epsilon=1e-8)
    with pytest.raises(ValueError, match="AccumGrad"):
        _core.AccumGrad(n=0)
    with pytest.raises(TypeError):
        _core.optim_update([("Adam", [0.1, 0.9, 0.999, 1e-8])], [], [], [])

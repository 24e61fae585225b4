"""Optimisers: Optimisers.jl's rules, the functions that apply them to models, and
ParameterSchedulers.jl's learning-rate schedules.

>>> import fluxrs as fx
>>> m = fx.Dense(3, 1)
>>> opt = fx.setup(fx.Descent(0.1), m)
>>> g = fx.gradient(lambda m: m(fx.ones(3)).sum(), m)[0]
>>> _ = fx.update_(opt, m, g)
>>> m.bias.tolist()
[-0.10000000149011612]
"""

from fluxrs.optimise.interface import (Leaf, StateMismatchError, adjust, adjust_, apply_all, freeze_, setup, thaw_,
                                       update_)
from fluxrs.optimise.rules import (ADADelta, ADAGrad, ADAM, ADAMW, AMSGrad, NADAM, OADAM, RADAM, AccumGrad, AdaBelief,
                                   AdaDelta, AdaGrad, AdaMax, Adam, AdamW, ClipGrad, ClipNorm, ClipValue, Descent,
                                   ExpDecay, InvDecay, Lion, Momentum, NAdam, Nesterov, OAdam, Optimiser,
                                   OptimiserChain, RAdam, RMSProp, Rprop, Rule, SignDecay, WeightDecay)
from fluxrs.optimise import schedules
from fluxrs.optimise.schedules import (Constant, Cos, CosAnneal, Exp, Interpolator, Inv, Loop, Poly, Schedule,
                                       Scheduler, Sequence, Shifted, Sin, Stateful, Step, Triangle, Warmup)

__all__ = ["Rule", "Descent", "Momentum", "Nesterov", "RMSProp", "Rprop", "Adam", "Lion", "RAdam", "AdaMax", "OAdam",
           "AdaGrad", "AdaDelta", "AMSGrad", "NAdam", "AdamW", "AdaBelief", "WeightDecay", "SignDecay", "ClipGrad",
           "ClipNorm", "AccumGrad", "OptimiserChain", "ExpDecay", "InvDecay", "Scheduler",
           "Optimiser", "ADAM", "RADAM", "NADAM", "ADAMW", "OADAM", "ADAGrad", "ADADelta", "ClipValue",
           "Leaf", "setup", "update_", "apply_all", "freeze_", "thaw_", "adjust_", "adjust", "StateMismatchError",
           "schedules", "Schedule", "Step", "Exp", "Poly", "Inv", "CosAnneal", "Cos", "Triangle", "Sin", "Constant",
           "Sequence", "Warmup", "Loop", "Shifted", "Interpolator", "Stateful"]

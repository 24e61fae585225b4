"""fluxrs: Flux.jl's training model for Python, on a Rust core.

>>> import fluxrs as fx
>>> fx.gradient(lambda x: x ** 2, 3.0)
(6.0,)
"""

import importlib as _importlib

from fluxrs._core import Tensor
from fluxrs.autodiff import (Grads, Params, ValGrad, gradient, in_gradient, no_grad, params, pullback, trainables,
                             withgradient)
from fluxrs.functor import Layer, Struct, fmap, layer, modules
from fluxrs.device import cpu, gpu, gpu_available, gpu_info, to_device
from fluxrs.random import default_rng, seed_
from fluxrs.tensor import (concat, float32, float64, from_dlpack, full, ones, ones_like, rand, randn, stack, tensor, where,
                           zeros, zeros_like)
from fluxrs import activations, layers, ops, optimise
from fluxrs.ops import (abs, clamp, clip, cos, exp, expm1, log, log1p, matmul, max, maximum, mean, min, minimum, pow,
                        prod, reshape, sign, sin, sqrt, square, sum, tan, transpose)
from fluxrs.activations import (celu, elu, gelu, hardshrink, hardsigmoid, hardswish, hardtanh, identity, leakyrelu,
                                lisht, logcosh, logsigmoid, logsoftmax, mish, relu, relu6, rrelu, selu, sigmoid,
                                softmax, softplus, softshrink, softsign, swish, tanh, tanhshrink, trelu, σ)
from fluxrs.layers import (Chain, Dense, f32, f64, glorot_normal, glorot_uniform, identity_init, kaiming_normal,
                           kaiming_uniform, lecun_normal, nfan, ones32, orthogonal, sparse_init, truncated_normal,
                           zeros32)
from fluxrs.layers import (GRU, LSTM, RNN, AlphaDropout, BatchNorm, Bidirectional, Bilinear, Dropout, Embedding,
                           EmbeddingBag, GroupNorm, GRUCell, InstanceNorm, LayerNorm, LSTMCell, Maxout,
                           MultiHeadAttention, PairwiseFusion, Parallel, Recurrence, RNNCell, Scale, SkipConnection,
                           make_causal_mask, normalise, testmode_, trainmode_)
from fluxrs.layers import (AdaptiveMaxPool, AdaptiveMeanPool, Conv, ConvTranspose, CrossCor, DepthwiseConv, Flatten,
                           GlobalMaxPool, GlobalMeanPool, MaxPool, MeanPool, PixelShuffle, SamePad, Upsample, flatten,
                           lpnormpool, pixel_shuffle)
from fluxrs.optimise import (ADAM, Adam, ClipGrad, Descent, Leaf, Momentum, Nesterov, Optimiser, OptimiserChain,
                             WeightDecay, adjust_, freeze_, setup, thaw_, update_)
from fluxrs.optimise import (ADADelta, ADAGrad, ADAMW, AMSGrad, NADAM, OADAM, RADAM, AccumGrad, AdaBelief, AdaDelta,
                             AdaGrad, AdaMax, AdamW, ClipNorm, ClipValue, ExpDecay, InvDecay, Lion, NAdam, OAdam,
                             RAdam, RMSProp, Rprop, Scheduler, SignDecay)
from fluxrs.optimise import Constant, CosAnneal, Exp, Inv, Poly, Sequence, Stateful, Step, Triangle, Warmup
from fluxrs.train import NonFiniteLossError, epochs, ncycle, skip, stop, throttle, train_
from fluxrs import train as _train
from fluxrs.compile import jit
from fluxrs.data import DataLoader, batch, onecold, onehot, onehotbatch, unbatch
from fluxrs.utils import Restructure, destructure, outputsize
from fluxrs.io import Checkpoint, CheckpointError, load, load_checkpoint, loadmodel_, save, state

from fluxrs import losses
from fluxrs.losses import crossentropy, logitcrossentropy, mse
Losses = losses

from fluxrs._version import __version__


def _plugin_hooks():
    # Training calls the plugin hooks through this (fluxrs.train sits below fluxrs.plugins): the
    # first train_ call or fx.epochs loop imports them, so `import fluxrs` loads neither the
    # plugins nor pluggy.
    from fluxrs.plugins import _run
    return _run


_train.use_plugins(_plugin_hooks)

_LAZY_MODULES = ("plugins", "callbacks", "distributed")
_LAZY_PLUGIN_NAMES = ("hookimpl", "hookspec", "PluginError")


def __getattr__(name):
    # Plugins load on first use: `import fluxrs` imports neither pluggy nor any installed plugin;
    # nor mpi4py: fx.distributed loads on first use too.
    if name in _LAZY_MODULES:
        return _importlib.import_module(f"fluxrs.{name}")
    if name in _LAZY_PLUGIN_NAMES:
        from fluxrs import plugins
        return getattr(plugins, name)
    raise AttributeError(f"module 'fluxrs' has no attribute {name!r}")


def __dir__():
    # the lazy names too, so that dir(fx) and tab completion show fx.hookimpl before first use
    return sorted(set(globals()) | set(_LAZY_MODULES) | set(_LAZY_PLUGIN_NAMES))

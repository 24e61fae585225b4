"""Layers: building blocks of models, each a `fx.Layer` whose children are its parameters.

>>> import fluxrs as fx
>>> fx.layers.Chain(fx.layers.Dense(2, 2), fx.relu)
Chain(Dense(2 => 2), relu)  # 6 parameters
"""

from fluxrs.layers import init
from fluxrs.layers.basic import Chain, Dense
from fluxrs.layers.init import (glorot_normal, glorot_uniform, identity_init, kaiming_normal, kaiming_uniform,
                                lecun_normal, nfan, ones32, orthogonal, sparse_init, truncated_normal, zeros32)
from fluxrs.layers.precision import f32, f64
from fluxrs.functor import param_count, show

__all__ = ["Dense", "Chain", "init", "glorot_uniform", "glorot_normal", "kaiming_uniform", "kaiming_normal",
           "zeros32", "ones32", "orthogonal", "sparse_init", "truncated_normal", "lecun_normal", "identity_init",
           "f32", "f64", "param_count", "show"]

from fluxrs.layers.mode import ModalLayer, is_active, testmode_, trainmode_  # noqa: E402
from fluxrs.layers.normalise import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, normalise  # noqa: E402
from fluxrs.layers.dropout import AlphaDropout, Dropout  # noqa: E402
from fluxrs.layers.affine import Bilinear, Embedding, EmbeddingBag, Scale  # noqa: E402
from fluxrs.layers.structure import Maxout, PairwiseFusion, Parallel, SkipConnection  # noqa: E402
from fluxrs.layers.recurrent import (GRU, LSTM, RNN, Bidirectional, GRUCell, LSTMCell, Recurrence,  # noqa: E402
                                     RNNCell)
from fluxrs.layers.attention import MultiHeadAttention, dot_product_attention, make_causal_mask  # noqa: E402

__all__ += ["ModalLayer", "is_active", "trainmode_", "testmode_", "BatchNorm", "LayerNorm", "GroupNorm",
            "InstanceNorm", "normalise", "Dropout", "AlphaDropout", "Scale", "Bilinear", "Embedding", "EmbeddingBag",
            "Parallel", "SkipConnection", "PairwiseFusion", "Maxout", "RNNCell", "LSTMCell", "GRUCell", "Recurrence", "RNN",
            "LSTM", "GRU", "Bidirectional", "MultiHeadAttention", "dot_product_attention", "make_causal_mask"]
from fluxrs.layers.conv import (AdaptiveMaxPool, AdaptiveMeanPool, Conv, ConvTranspose, CrossCor,  # noqa: E402
                                DepthwiseConv, Flatten, GlobalMaxPool, GlobalMeanPool, MaxPool, MeanPool, PixelShuffle,
                                SamePad, Upsample, flatten, lpnormpool, pixel_shuffle)

__all__ += ["SamePad", "Conv", "ConvTranspose", "CrossCor", "DepthwiseConv", "MaxPool", "MeanPool",
            "AdaptiveMaxPool", "AdaptiveMeanPool", "GlobalMaxPool", "GlobalMeanPool", "Flatten", "flatten", "Upsample",
            "PixelShuffle", "pixel_shuffle", "lpnormpool"]

"""Multi-head dot-product attention (Vaswani et al. 2017), as Flux's `MultiHeadAttention`,
batch-first: sequences are ``(N, L, dim)`` (or one sequence ``(L, dim)``), attention
scores ``(N, nheads, Lq, Lk)``.

>>> import fluxrs as fx
>>> mha = fx.MultiHeadAttention(16, nheads=4)
>>> mha
MultiHeadAttention(16, nheads=4)  # 1_024 parameters
>>> y, scores = mha(fx.ones(2, 5, 16))                     # self-attention
>>> y.shape, scores.shape
((2, 5, 16), (2, 4, 5, 5))
>>> y, _ = mha(fx.ones(2, 5, 16), mask=fx.make_causal_mask(5))
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from fluxrs._checks import size
from fluxrs._core import Tensor
from fluxrs.functor import Layer
from fluxrs.layers.basic import Dense, as_input
from fluxrs.layers.dropout import Dropout
from fluxrs.layers.init import glorot_uniform
from fluxrs.tensor import host_like

__all__ = ["MultiHeadAttention", "make_causal_mask", "dot_product_attention"]


def make_causal_mask(n: int) -> np.ndarray:
    """A ``(n, n)`` boolean mask letting query i attend to keys 0..i only (True = attend)."""
    return np.tril(np.ones((int(n), int(n)), dtype=bool))


def _additive_mask(mask: Any, like: Tensor) -> Tensor:
    """A 0 / -inf tensor from a boolean (or 0/1) mask, True meaning "attend", with `like`'s
    dtype and device."""
    m = np.asarray(mask)
    if m.dtype != bool:
        m = m != 0
    return host_like(np.where(m, 0.0, -np.inf), like)


def dot_product_attention(q: Tensor, k: Tensor, v: Tensor, *, bias: Any = None, mask: Any = None,
                          fdrop: Callable | None = None) -> tuple[Tensor, Tensor]:
    """``softmax(q kᵀ / √d + bias) v`` over heads: `q` ``(..., Lq, d)``, `k` ``(..., Lk, d)``,
    `v` ``(..., Lk, dv)``; returns ``(output, scores)``. `mask` (True = attend) and `bias`
    broadcast against the scores ``(..., Lq, Lk)``; `fdrop` is applied to the scores."""
    d = q.shape[-1]
    logits = (q * (1.0 / math.sqrt(d))) @ k.swapaxes(-1, -2)
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        logits = logits + _additive_mask(mask, logits)
    scores = logits.softmax(-1)
    if fdrop is not None:
        scores = fdrop(scores)
    return scores @ v, scores


class MultiHeadAttention(Layer):
    """``MultiHeadAttention(dim, nheads=8, *, bias=False, init=glorot_uniform,
    dropout_prob=0.0, qk_dim=dim, v_dim=dim, out_dim=dim, kv_dim=dim)``.

    ``mha(q, k=q, v=k, *, bias=None, mask=None)`` returns ``(y, scores)``: `q` is
    ``(N, Lq, dim)``, `k` ``(N, Lk, kv_dim)``, `v` ``(N, Lk, kv_dim)``; `y` is
    ``(N, Lq, out_dim)`` and `scores` ``(N, nheads, Lq, Lk)``. `mask` (True = attend, e.g.
    `make_causal_mask`) and `bias` broadcast against the scores. The fields are Flux's:
    ``q_proj``, ``k_proj``, ``v_proj``, ``attn_drop``, ``out_proj``.
    """

    def __init__(self, dim: int, nheads: int = 8, *, bias: bool = False, init: Callable = glorot_uniform,
                 dropout_prob: float = 0.0, qk_dim: int | None = None, v_dim: int | None = None,
                 out_dim: int | None = None, kv_dim: int | None = None):
        dim = size("MultiHeadAttention", "dim", dim)
        nheads = size("MultiHeadAttention", "nheads", nheads)
        qk = size("MultiHeadAttention", "qk_dim", qk_dim if qk_dim is not None else dim)
        vd = size("MultiHeadAttention", "v_dim", v_dim if v_dim is not None else dim)
        od = size("MultiHeadAttention", "out_dim", out_dim if out_dim is not None else dim)
        kv = size("MultiHeadAttention", "kv_dim", kv_dim if kv_dim is not None else dim)
        if qk % nheads or vd % nheads:
            raise ValueError(f"MultiHeadAttention({dim}, nheads={nheads}): qk_dim ({qk}) and v_dim ({vd}) must be "
                             "divisible by nheads")
        self.nheads = nheads
        self.q_proj = Dense(dim, qk, bias=bias, init=init)
        self.k_proj = Dense(kv, qk, bias=bias, init=init)
        self.v_proj = Dense(kv, vd, bias=bias, init=init)
        self.attn_drop = Dropout(dropout_prob)
        self.out_proj = Dense(vd, od, bias=bias, init=init)

    def _heads(self, x: Tensor) -> Tensor:
        # (N, L, H·d) -> (N, H, L, d)
        n, l, hd = x.shape
        return x.reshape(n, l, self.nheads, hd // self.nheads).transpose(0, 2, 1, 3)

    def __call__(self, q: Any, k: Any = None, v: Any = None, *, bias: Any = None,
                 mask: Any = None) -> tuple[Tensor, Tensor]:
        w = self.q_proj.weight
        q = as_input(q, w, self)
        k = q if k is None else as_input(k, w, self)
        v = k if v is None else as_input(v, w, self)
        unbatched = q.ndim == 2
        if unbatched:
            q, k, v = (t.reshape([1] + list(t.shape)) if t.ndim == 2 else t for t in (q, k, v))
        for name, t, want in (("q", q, self.q_proj.in_features), ("k", k, self.k_proj.in_features),
                              ("v", v, self.v_proj.in_features)):
            if t.ndim != 3 or t.shape[-1] != want:
                raise ValueError(f"{self._repr_inner()}: {name} must be (N, L, {want}) or (L, {want}), got "
                                 f"{tuple(t.shape)}")
        if k.shape[:2] != v.shape[:2] or q.shape[0] != k.shape[0]:
            raise ValueError(f"{self._repr_inner()}: q, k, v must share the batch size and k, v the length, got "
                             f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
        qh, kh, vh = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        fdrop = self.attn_drop if self.attn_drop.p > 0 else None
        y, scores = dot_product_attention(qh, kh, vh, bias=bias, mask=mask, fdrop=fdrop)
        n, h, lq, dv = y.shape
        y = self.out_proj(y.transpose(0, 2, 1, 3).reshape(n, lq, h * dv))
        if unbatched:
            y, scores = y.reshape(list(y.shape[1:])), scores.reshape(list(scores.shape[1:]))
        return y, scores

    def _repr_inner(self) -> str:
        dim = self.q_proj.in_features
        s = f"MultiHeadAttention({dim}, nheads={self.nheads}"
        extra = {"qk_dim": self.q_proj.out_features, "v_dim": self.v_proj.out_features,
                 "out_dim": self.out_proj.out_features, "kv_dim": self.k_proj.in_features}
        for key, val in extra.items():
            if val != dim:
                s += f", {key}={val}"
        if self.q_proj.bias is not None:
            s += ", bias=True"
        if self.attn_drop.p:
            s += f", dropout_prob={self.attn_drop.p:g}"
        return s + ")"

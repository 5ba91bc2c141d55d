"""HF <-> our parameter mapping for Qwen2 (one entry per tensor kind; layers are stacked on ours).

Each rule: (our path, HF name pattern with {i} for the layer, to_ours(hf_array, cfg), to_hf(ours, cfg)).
HF linear weights are [out, in]; ours are [in, ...out split into heads].
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from masksearch_jax.model.config import Qwen2Config


class Rule(NamedTuple):
  path: tuple[str, ...]
  hf: str
  to_ours: Callable[[np.ndarray, Qwen2Config], np.ndarray]
  to_hf: Callable[[np.ndarray, Qwen2Config], np.ndarray]

  @property
  def stacked(self) -> bool:
    return "{i}" in self.hf


def _heads_in(n_heads):      # HF [N*Dh, D] -> ours [D, N, Dh]
  return (lambda w, c: w.T.reshape(c.hidden_size, n_heads(c), c.dim_per_head),
          lambda w, c: w.reshape(c.hidden_size, -1).T)


def _bias(n_heads):          # HF [N*Dh] -> ours [N, Dh]
  return (lambda w, c: w.reshape(n_heads(c), c.dim_per_head), lambda w, c: w.reshape(-1))


_T = (lambda w, c: w.T, lambda w, c: w.T)
_ID = (lambda w, c: w, lambda w, c: w)
_H = lambda c: c.num_heads
_K = lambda c: c.num_kv_heads
_P = "model.layers.{i}."

RULES: tuple[Rule, ...] = (
    Rule(("embed",), "model.embed_tokens.weight", *_ID),
    Rule(("final_norm",), "model.norm.weight", *_ID),
    Rule(("lm_head",), "lm_head.weight", *_T),
    Rule(("layers", "input_norm"), _P + "input_layernorm.weight", *_ID),
    Rule(("layers", "post_norm"), _P + "post_attention_layernorm.weight", *_ID),
    Rule(("layers", "q"), _P + "self_attn.q_proj.weight", *_heads_in(_H)),
    Rule(("layers", "k"), _P + "self_attn.k_proj.weight", *_heads_in(_K)),
    Rule(("layers", "v"), _P + "self_attn.v_proj.weight", *_heads_in(_K)),
    Rule(("layers", "q_bias"), _P + "self_attn.q_proj.bias", *_bias(_H)),
    Rule(("layers", "k_bias"), _P + "self_attn.k_proj.bias", *_bias(_K)),
    Rule(("layers", "v_bias"), _P + "self_attn.v_proj.bias", *_bias(_K)),
    Rule(("layers", "o"), _P + "self_attn.o_proj.weight",
         lambda w, c: w.T.reshape(c.num_heads, c.dim_per_head, c.hidden_size),
         lambda w, c: w.reshape(-1, c.hidden_size).T),
    Rule(("layers", "gate"), _P + "mlp.gate_proj.weight", *_T),
    Rule(("layers", "up"), _P + "mlp.up_proj.weight", *_T),
    Rule(("layers", "down"), _P + "mlp.down_proj.weight", *_T),
)


def rules_for(cfg: Qwen2Config) -> tuple[Rule, ...]:
  return tuple(r for r in RULES if not (r.path == ("lm_head",) and cfg.tie_embeddings))


def our_shape(rule: Rule, cfg: Qwen2Config) -> tuple[int, ...]:
  L, D, H, K, Dh, F, V = (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads,
                          cfg.dim_per_head, cfg.intermediate_size, cfg.vocab_size)
  shapes = {"embed": (V, D), "final_norm": (D,), "lm_head": (D, V), "input_norm": (D,),
            "post_norm": (D,), "q": (D, H, Dh), "k": (D, K, Dh), "v": (D, K, Dh),
            "q_bias": (H, Dh), "k_bias": (K, Dh), "v_bias": (K, Dh), "o": (H, Dh, D),
            "gate": (D, F), "up": (D, F), "down": (F, D)}
  s = shapes[rule.path[-1]]
  return (L, *s) if rule.stacked else s


def hf_shape(rule: Rule, cfg: Qwen2Config) -> tuple[int, ...]:
  """Shape of one HF tensor (one layer for stacked rules), computed from our shape."""
  s = our_shape(rule, cfg)[1:] if rule.stacked else our_shape(rule, cfg)
  return rule.to_hf(np.empty(s, np.uint8), cfg).shape

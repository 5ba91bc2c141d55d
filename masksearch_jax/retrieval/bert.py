"""Pure-functional BERT encoder (BERT / MiniLM / E5 / BGE share it): params pytree + `apply`.

Params are a plain nested dict; the L transformer layers are stacked on a leading axis and run
with `lax.scan`, so compile time does not grow with depth. `load_params` reads HF safetensors
(with or without the `bert.` prefix) — no torch needed at run time.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, Any]

_ACTS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @classmethod
  def from_hf(cls, cfg: dict[str, Any] | str | Path) -> "BertConfig":
    """From an HF `config.json` (path, model dir or parsed dict)."""
    if not isinstance(cfg, dict):
      p = Path(cfg)
      p = p / "config.json" if p.is_dir() else p
      cfg = json.loads(p.read_text())
    if cfg.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(f"unsupported position_embedding_type {cfg['position_embedding_type']!r}")
    if cfg.get("model_type", "bert") not in ("bert",):
      raise ValueError(f"unsupported model_type {cfg.get('model_type')!r} (BERT family only)")
    act = cfg.get("hidden_act", "gelu")
    if act not in _ACTS:
      raise ValueError(f"unsupported hidden_act {act!r}; known: {sorted(_ACTS)}")
    return cls(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
               num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
               intermediate_size=cfg["intermediate_size"],
               max_position_embeddings=cfg.get("max_position_embeddings", 512),
               type_vocab_size=cfg.get("type_vocab_size", 2),
               layer_norm_eps=cfg.get("layer_norm_eps", 1e-12), hidden_act=act)


def params_from_hf(tensors: dict[str, np.ndarray], cfg: BertConfig) -> Params:
  """HF BertModel state dict (numpy) -> params pytree. Linear weights [out, in] become kernels
  [in, out]; layer tensors are stacked to [L, ...]."""
  t = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in tensors.items()}

  def get(name: str) -> np.ndarray:
    if name not in t:
      raise KeyError(f"safetensors lacks tensor {name!r} (have e.g. {sorted(t)[:5]})")
    return np.asarray(t[name], np.float32)

  def ln(prefix: str) -> dict[str, np.ndarray]:
    return {"scale": get(prefix + ".weight"), "bias": get(prefix + ".bias")}

  def dense(prefix: str) -> dict[str, np.ndarray]:
    return {"kernel": get(prefix + ".weight").T, "bias": get(prefix + ".bias")}

  layers = []
  for i in range(cfg.num_layers):
    p = f"encoder.layer.{i}."
    layers.append({
        "q": dense(p + "attention.self.query"), "k": dense(p + "attention.self.key"),
        "v": dense(p + "attention.self.value"), "o": dense(p + "attention.output.dense"),
        "attn_ln": ln(p + "attention.output.LayerNorm"),
        "ffn_in": dense(p + "intermediate.dense"), "ffn_out": dense(p + "output.dense"),
        "ffn_ln": ln(p + "output.LayerNorm"),
    })
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *layers)
  return {
      "embeddings": {
          "word": get("embeddings.word_embeddings.weight"),
          "position": get("embeddings.position_embeddings.weight"),
          "token_type": get("embeddings.token_type_embeddings.weight"),
          "ln": ln("embeddings.LayerNorm"),
      },
      "layers": stacked,
  }


def load_params(model_dir: str | Path, cfg: BertConfig) -> Params:
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  path = Path(model_dir) / "model.safetensors"
  if not path.exists():
    raise FileNotFoundError(f"{path} not found (only single-file safetensors are supported)")
  return jax.tree.map(jnp.asarray, params_from_hf(load_file(str(path)), cfg))


def _layer_norm(x: jax.Array, p: dict[str, jax.Array], eps: float) -> jax.Array:
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  y = (x32 - mean) * jax.lax.rsqrt(var + eps)
  return (y * p["scale"] + p["bias"]).astype(x.dtype)


def _dense(x: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
  return x @ p["kernel"].astype(x.dtype) + p["bias"].astype(x.dtype)


def apply(params: Params, cfg: BertConfig, input_ids: jax.Array, attention_mask: jax.Array,
          token_type_ids: jax.Array | None = None, dtype: Any = jnp.float32) -> jax.Array:
  """Token ids [B, T] and mask [B, T] (1 = real token) -> last hidden states [B, T, H].

  Layer norms and the softmax run in float32 whatever `dtype` is (bf16 on accelerators)."""
  b, t = input_ids.shape
  if token_type_ids is None:
    token_type_ids = jnp.zeros_like(input_ids)
  emb = params["embeddings"]
  x = (emb["word"][input_ids] + emb["position"][jnp.arange(t)][None]
       + emb["token_type"][token_type_ids])  # [B, T, H]
  x = _layer_norm(x, emb["ln"], cfg.layer_norm_eps).astype(dtype)
  # Additive mask over keys: [B, 1, 1, T]
  bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
  n, d = cfg.num_heads, cfg.head_dim
  act = _ACTS[cfg.hidden_act]

  def layer(x, p):
    q = _dense(x, p["q"]).reshape(b, t, n, d)  # [B, T, N, D]
    k = _dense(x, p["k"]).reshape(b, t, n, d)
    v = _dense(x, p["v"]).reshape(b, t, n, d)
    s = jnp.einsum("btnd,bsnd->bnts", q, k).astype(jnp.float32) / math.sqrt(d) + bias
    a = jax.nn.softmax(s, axis=-1).astype(dtype)  # [B, N, T, S]
    ctx = jnp.einsum("bnts,bsnd->btnd", a, v).reshape(b, t, n * d)
    x = _layer_norm(x + _dense(ctx, p["o"]), p["attn_ln"], cfg.layer_norm_eps)
    h = act(_dense(x, p["ffn_in"]))
    x = _layer_norm(x + _dense(h, p["ffn_out"]), p["ffn_ln"], cfg.layer_norm_eps)
    return x, None

  x, _ = jax.lax.scan(layer, x, params["layers"])
  return x

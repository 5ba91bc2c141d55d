"""Qwen2.5 shapes as frozen data: the official presets, tiny test shapes, and HF config.json I/O.

A config is data, not a code path: every size runs the same `qwen2.apply`; only these numbers change.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  intermediate_size: int
  head_dim: int | None = None      # None: hidden_size // num_heads (always so for Qwen2.5)
  rope_theta: float = 1_000_000.0
  rms_norm_eps: float = 1e-6
  tie_embeddings: bool = True
  max_position_embeddings: int = 32768
  bos_token_id: int | None = 151643
  eos_token_id: int | None = 151643
  name: str = "custom"

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.num_kv_heads} (GQA needs whole groups)")
    if self.head_dim is None and self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size={self.hidden_size} not divisible by num_heads={self.num_heads}")

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.hidden_size // self.num_heads

  def num_params(self) -> int:
    """Exact parameter count (embeddings included; the untied head counted once more)."""
    d, hd, f, v = self.hidden_size, self.dim_per_head, self.intermediate_size, self.vocab_size
    q, kv = self.num_heads * hd, self.num_kv_heads * hd
    attn = d * q + q + 2 * (d * kv + kv) + q * d
    layer = attn + 3 * d * f + 2 * d
    return v * d * (1 if self.tie_embeddings else 2) + self.num_layers * layer + d

  def replace(self, **kw) -> "Qwen2Config":
    return dataclasses.replace(self, **kw)

  # ---- HF config.json ------------------------------------------------------------------------
  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any]) -> "Qwen2Config":
    arch = d.get("model_type") or ""
    archs = d.get("architectures") or []
    if arch not in ("qwen2",) and not any(a.startswith("Qwen2ForCausalLM") for a in archs):
      raise ValueError(f"unknown architecture: model_type={arch!r} architectures={archs!r}; "
                       "only Qwen2/Qwen2.5 (model_type 'qwen2') is supported")
    # transformers v5 nests rope settings under rope_parameters; v4 keeps rope_theta top level.
    rope = d.get("rope_parameters") or {}
    theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
    rtype = rope.get("rope_type", rope.get("type", "default"))
    scaling = d.get("rope_scaling")
    if rtype not in ("default", None) or (scaling and scaling.get("type", scaling.get("rope_type")) not in (None, "default")):
      raise ValueError(f"rope scaling {rtype or scaling} is not supported (only default RoPE)")
    if d.get("use_sliding_window"):
      raise ValueError("use_sliding_window=true is not supported (Qwen2.5 releases do not use it)")
    eos = d.get("eos_token_id")
    if isinstance(eos, list):
      eos = eos[0] if eos else None
    head_dim = d.get("head_dim")
    if head_dim is not None and int(head_dim) * int(d["num_attention_heads"]) == int(d["hidden_size"]):
      head_dim = None                    # the default: keep presets and loaded configs equal
    return cls(
        vocab_size=int(d["vocab_size"]), hidden_size=int(d["hidden_size"]),
        num_layers=int(d["num_hidden_layers"]), num_heads=int(d["num_attention_heads"]),
        num_kv_heads=int(d.get("num_key_value_heads") or d["num_attention_heads"]),
        intermediate_size=int(d["intermediate_size"]),
        head_dim=head_dim, rope_theta=float(theta),
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(d.get("tie_word_embeddings", False)),
        max_position_embeddings=int(d.get("max_position_embeddings", 32768)),
        bos_token_id=d.get("bos_token_id"), eos_token_id=eos,
        name=str(d.get("_name_or_path", "hf")))

  @classmethod
  def from_hf_dir(cls, path: str | Path) -> "Qwen2Config":
    p = Path(path) / "config.json"
    if not p.exists():
      raise FileNotFoundError(f"no config.json in {path}")
    return cls.from_hf_dict(json.loads(p.read_text()))

  def to_hf_dict(self, dtype: str = "float32") -> dict[str, Any]:
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
        "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads, "intermediate_size": self.intermediate_size,
        "head_dim": self.dim_per_head, "hidden_act": "silu", "rms_norm_eps": self.rms_norm_eps,
        "rope_theta": self.rope_theta, "tie_word_embeddings": self.tie_embeddings,
        "max_position_embeddings": self.max_position_embeddings, "use_sliding_window": False,
        "sliding_window": None, "max_window_layers": self.num_layers,
        "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
        "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
        "torch_dtype": dtype, "dtype": dtype,
    }


def _preset(name, d, layers, heads, kv, ffn, vocab, tied, eps):
  return Qwen2Config(vocab_size=vocab, hidden_size=d, num_layers=layers, num_heads=heads,
                     num_kv_heads=kv, intermediate_size=ffn, tie_embeddings=tied,
                     rms_norm_eps=eps, name=name)


# Shapes from the official Qwen/Qwen2.5-*/config.json files.
PRESETS: dict[str, Qwen2Config] = {
    "qwen2_5_0_5b": _preset("qwen2_5_0_5b", 896, 24, 14, 2, 4864, 151936, True, 1e-6),
    "qwen2_5_1_5b": _preset("qwen2_5_1_5b", 1536, 28, 12, 2, 8960, 151936, True, 1e-6),
    "qwen2_5_3b": _preset("qwen2_5_3b", 2048, 36, 16, 2, 11008, 151936, True, 1e-6),
    "qwen2_5_7b": _preset("qwen2_5_7b", 3584, 28, 28, 4, 18944, 152064, False, 1e-6),
    "qwen2_5_14b": _preset("qwen2_5_14b", 5120, 48, 40, 8, 13824, 152064, False, 1e-5),
    "qwen2_5_32b": _preset("qwen2_5_32b", 5120, 64, 40, 8, 27648, 152064, False, 1e-5),
    "qwen2_5_72b": _preset("qwen2_5_72b", 8192, 80, 64, 8, 29568, 152064, False, 1e-5),
    # Tiny shapes for tests and the embedded-world demo (same code path, seconds on a CPU).
    "tiny": Qwen2Config(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                        intermediate_size=128, tie_embeddings=True, rope_theta=10000.0,
                        max_position_embeddings=2048, bos_token_id=None, eos_token_id=None,
                        name="tiny"),
    "tiny_untied": Qwen2Config(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
                               num_kv_heads=4, intermediate_size=128, tie_embeddings=False,
                               rope_theta=10000.0, max_position_embeddings=2048,
                               bos_token_id=None, eos_token_id=None, name="tiny_untied"),
    "small": Qwen2Config(vocab_size=4096, hidden_size=256, num_layers=4, num_heads=8,
                         num_kv_heads=2, intermediate_size=768, tie_embeddings=True,
                         rope_theta=10000.0, max_position_embeddings=4096,
                         bos_token_id=None, eos_token_id=None, name="small"),
}

_ALIASES = {"0.5b": "qwen2_5_0_5b", "1.5b": "qwen2_5_1_5b", "3b": "qwen2_5_3b", "7b": "qwen2_5_7b",
            "14b": "qwen2_5_14b", "32b": "qwen2_5_32b", "72b": "qwen2_5_72b"}


def get_config(name: str, **overrides) -> Qwen2Config:
  """Preset by name ('qwen2_5_1_5b', '1.5b', 'tiny', ...) or a HF checkpoint directory."""
  key = _ALIASES.get(name.lower(), name.lower().replace("-", "_").replace(".", "_"))
  if key in PRESETS:
    return PRESETS[key].replace(**overrides) if overrides else PRESETS[key]
  if Path(name).is_dir():
    cfg = Qwen2Config.from_hf_dir(name)
    return cfg.replace(**overrides) if overrides else cfg
  raise ValueError(f"unknown model {name!r}; presets: {sorted(PRESETS)} (or a HF directory)")

"""Model FLOPs per trained token, accelerator peaks, and MFU.

Counted as MaxText/PaLM do: 6 flops per matmul parameter per token (forward 2 + backward 4) —
the unembedding counts, the embedding lookup does not — plus causal attention: QK^T and PV are
2 matmuls x 2 flops x H*Dh x (on average) T/2 keys per query and layer, x3 for the backward.
Rematerialisation is not counted (MFU, not hardware utilisation). Packed rows are counted as full
causal rows of `seq_len` (the attention term is an upper bound for packed data).
"""
from __future__ import annotations

from masksearch_jax.model.config import Qwen2Config

# Dense bf16 datasheet peaks per chip (FLOP/s), matched as substrings of `device.device_kind`
# (lower case), most specific first.
PEAK_FLOPS_BY_KIND = (
    ("h200", 989e12), ("h100", 989e12), ("a100", 312e12), ("l4", 121e12),
    ("v5p", 459e12), ("v5 lite", 197e12), ("v5e", 197e12), ("v6", 918e12), ("v4", 275e12),
)
CPU_NOMINAL_FLOPS = 1e12  # so MFU prints something finite on CPU; not a real peak


def matmul_params(cfg: Qwen2Config) -> int:
  """Parameters used in matmuls per token: all but the embedding lookup (the tied embedding is
  used once, as the unembedding)."""
  n = cfg.num_params()
  return n if cfg.tie_embeddings else n - cfg.vocab_size * cfg.hidden_size


def attention_flops_per_token(cfg: Qwen2Config, seq_len: int) -> float:
  """Forward + backward causal attention score/value matmuls, averaged over a row."""
  return 3 * 2 * 2 * (seq_len / 2) * cfg.num_heads * cfg.dim_per_head * cfg.num_layers


def train_flops_per_token(cfg: Qwen2Config, seq_len: int) -> float:
  """Model FLOPs of one training (forward + backward) token in rows of `seq_len`."""
  return 6.0 * matmul_params(cfg) + attention_flops_per_token(cfg, seq_len)


def peak_flops(device=None) -> float:
  """Peak dense bf16 FLOP/s of one device (CPU: a nominal 1 TFLOP/s)."""
  if device is None:
    import jax
    device = jax.devices()[0]
  kind = getattr(device, "device_kind", "").lower()
  for key, peak in PEAK_FLOPS_BY_KIND:
    if key in kind:
      return peak
  return CPU_NOMINAL_FLOPS


def mfu(cfg: Qwen2Config, seq_len: int, tokens_per_s: float, num_devices: int,
        device=None) -> float:
  """Fraction of the devices' peak used by model FLOPs at this throughput."""
  return train_flops_per_token(cfg, seq_len) * tokens_per_s / (peak_flops(device) * num_devices)

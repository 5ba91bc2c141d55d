"""DAPO policy loss (Yu et al. 2025, arXiv 2503.14476): clip-higher, token-level averaging.

Per loss token t (loss_mask = 1: written by the policy):
  r_t   = exp(logp_t - old_logp_t)
  pg_t  = max(-A_t r_t, -A_t clip(r_t, 1 - eps_low, 1 + eps_high))
  pg_t  = min(pg_t, -A_t c)            only where A_t < 0, when dual_clip_c = c (> 1) is set
  kl_t  = exp(ref_t - logp_t) - (ref_t - logp_t) - 1      (k3; only when kl_coef > 0)
  loss  = sum_t mask_t (pg_t + kl_coef kl_t) / num_tokens

`num_tokens` is the loss-token count of the WHOLE mini-batch (all micro-batches, all data-parallel
devices), passed in rather than computed here: every micro-batch's loss is then a partial sum of
the same global mean, so summing their losses and gradients is exact — no mean of means.
Metrics follow the same rule (sums over this shard / num_tokens), so they also simply add up.

`old_logp` must come from the trainer's own forward pass before the update; the sampler's
log-probs only feed `logprob_mismatch`, a health metric for sampler/trainer numerics.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = ["DapoConfig", "dapo_loss", "overlong_penalty", "logprob_mismatch"]


@dataclasses.dataclass(frozen=True)
class DapoConfig:
  eps_low: float = 0.2
  eps_high: float = 0.28
  dual_clip_c: float | None = None   # e.g. 3.0; bounds the loss of negative-advantage tokens
  kl_coef: float = 0.0               # k3 KL to a reference policy; DAPO uses none

  def __post_init__(self):
    if not (0 <= self.eps_low < 1 and self.eps_high >= 0):
      raise ValueError(f"DapoConfig: need 0 <= eps_low < 1 and eps_high >= 0, got "
                       f"eps_low={self.eps_low}, eps_high={self.eps_high}")
    if self.dual_clip_c is not None and self.dual_clip_c <= 1:
      raise ValueError(f"DapoConfig.dual_clip_c={self.dual_clip_c} must be > 1 (or None)")
    if self.kl_coef < 0:
      raise ValueError(f"DapoConfig.kl_coef={self.kl_coef} must be >= 0")


def dapo_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, loss_mask: jax.Array,
              num_tokens: jax.Array | float, cfg: DapoConfig = DapoConfig(),
              ref_logp: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Sum-loss over this shard's tokens divided by the global token count.

  logp, old_logp, loss_mask: [B, T]; advantages: [B] (per response) or [B, T]; num_tokens: scalar
  (>= 1; the caller's global count); ref_logp: [B, T] when cfg.kl_coef > 0.
  Returns (loss scalar, metrics dict of scalars), all f32.
  """
  logp = logp.astype(jnp.float32)                                  # [B, T]
  old_logp = jax.lax.stop_gradient(old_logp.astype(jnp.float32))   # [B, T]
  mask = loss_mask.astype(jnp.float32)                             # [B, T]
  adv = jnp.asarray(advantages, jnp.float32)
  if adv.ndim == 1:
    adv = adv[:, None]                                             # [B, 1]
  adv = jnp.broadcast_to(jax.lax.stop_gradient(adv), logp.shape)   # [B, T]
  denom = jnp.maximum(jnp.asarray(num_tokens, jnp.float32), 1.0)

  # Zeroed off the mask *before* exp: padding / prompt positions may hold any log-prob, and an
  # overflowing exp there would turn into NaN through inf * 0.
  log_ratio = jnp.where(mask > 0, logp - old_logp, 0.0)            # [B, T]
  ratio = jnp.exp(log_ratio)                                       # [B, T]
  pg_unclipped = -adv * ratio
  pg_clipped = -adv * jnp.clip(ratio, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high)
  pg = jnp.maximum(pg_unclipped, pg_clipped)                       # [B, T]
  dual = jnp.zeros_like(pg, dtype=bool)
  if cfg.dual_clip_c is not None:
    cap = -adv * cfg.dual_clip_c
    dual = (adv < 0) & (pg > cap)
    pg = jnp.where(dual, cap, pg)
  per_token = pg
  metrics = {}
  if cfg.kl_coef > 0:
    if ref_logp is None:
      raise ValueError("dapo_loss: DapoConfig.kl_coef > 0 needs ref_logp")
    d = jnp.where(mask > 0, jax.lax.stop_gradient(ref_logp.astype(jnp.float32)) - logp, 0.0)
    kl = jnp.exp(d) - d - 1.0                                      # [B, T] k3 >= 0
    per_token = per_token + cfg.kl_coef * kl
    metrics["kl_ref"] = jnp.sum(kl * mask) / denom
  loss = jnp.sum(per_token * mask) / denom

  def frac(cond):  # share of this shard's loss tokens where cond holds, over the global count
    return jax.lax.stop_gradient(jnp.sum(jnp.where(cond, mask, 0.0)) / denom)

  metrics.update({
      "pg_loss": jax.lax.stop_gradient(jnp.sum(pg * mask) / denom),
      "clip_frac": frac(pg_clipped > pg_unclipped),
      "clip_frac_low": frac((adv < 0) & (ratio < 1.0 - cfg.eps_low)),
      "clip_frac_high": frac((adv > 0) & (ratio > 1.0 + cfg.eps_high)),
      "dual_clip_frac": frac(dual),
      # k3 estimate of KL(old || new) on the samples: unbiased, >= 0.
      "approx_kl": jax.lax.stop_gradient(
          jnp.sum((jnp.exp(log_ratio) - 1.0 - log_ratio) * mask) / denom),
      "ratio_mean": jax.lax.stop_gradient(jnp.sum(ratio * mask) / denom),
  })
  return loss, metrics


def logprob_mismatch(trainer_logp: jax.Array, sampler_logp: jax.Array, loss_mask: jax.Array,
                     num_tokens: jax.Array | float) -> dict[str, jax.Array]:
  """How far the sampler's log-probs are from the trainer's on the same tokens.

  All [B, T]. `mean_abs` and `k3` (KL(sampler || trainer) estimate) are sums / num_tokens (they
  add up over shards); `max_abs` combines by max. Large values mean the sampler's numerics
  (bf16 KV cache, a different attention kernel) drift from training — importance ratios would lie.
  """
  mask = loss_mask.astype(jnp.float32)
  denom = jnp.maximum(jnp.asarray(num_tokens, jnp.float32), 1.0)
  d = jnp.where(mask > 0, trainer_logp.astype(jnp.float32) - sampler_logp.astype(jnp.float32),
                0.0)                                                          # [B, T]
  return {
      "mismatch_mean_abs": jnp.sum(jnp.abs(d) * mask) / denom,
      "mismatch_max_abs": jnp.max(jnp.abs(d) * mask),
      "mismatch_k3": jnp.sum((jnp.exp(d) - 1.0 - d) * mask) / denom,
  }


def overlong_penalty(num_model_tokens: jax.Array, max_tokens: int, buffer: int) -> jax.Array:
  """DAPO's soft overlong punishment R_length(|y|), |y| = policy-written tokens of a response.

  0 for |y| <= L_max - L_cache; ((L_max - L_cache) - |y|) / L_cache inside the buffer (a linear
  ramp to -1); -1 beyond L_max. buffer = L_cache = 0 gives the hard 0 / -1 step.
  [B] int -> [B] f32.
  """
  n = jnp.asarray(num_model_tokens, jnp.float32)
  start = float(max_tokens - buffer)
  ramp = (start - n) / max(float(buffer), 1.0)
  out = jnp.where(n <= start, 0.0, jnp.where(n <= max_tokens, ramp, -1.0))
  return out.astype(jnp.float32)

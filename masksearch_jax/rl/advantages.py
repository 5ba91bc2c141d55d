"""Group-normalised advantages (GRPO / DAPO): A_i = (R_i - mean_group) / (std_group + eps).

Responses are laid out group-major: rows [g * G, (g + 1) * G) are the G samples of prompt g.
A group whose rewards are all equal carries no learning signal; its advantages are exactly 0
(not 0/eps noise), which is also what dynamic sampling relies on when it drops such groups.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["group_advantages", "token_advantages"]


def group_advantages(rewards: jax.Array, group_size: int, eps: float = 1e-6,
                     ddof: int = 0) -> jax.Array:
  """[N] rewards (N = num_groups * group_size) -> [N] f32 advantages.

  ddof=0 is the population std; ddof=1 the unbiased one (torch.std, as in verl).
  """
  r = jnp.asarray(rewards, jnp.float32)
  if r.ndim != 1 or r.shape[0] % group_size:
    raise ValueError(f"group_advantages: rewards shape {r.shape} is not [num_groups * "
                     f"group_size] with group_size={group_size}")
  if group_size - ddof < 1:
    raise ValueError(f"group_advantages: group_size={group_size} too small for ddof={ddof}")
  g = r.reshape(-1, group_size)                                     # [num_groups, G]
  mean = jnp.mean(g, axis=1, keepdims=True)
  std = jnp.sqrt(jnp.sum((g - mean) ** 2, axis=1, keepdims=True) / (group_size - ddof))
  degenerate = jnp.max(g, axis=1, keepdims=True) == jnp.min(g, axis=1, keepdims=True)
  adv = jnp.where(degenerate, 0.0, (g - mean) / (std + eps))        # [num_groups, G]
  return adv.reshape(-1)


def token_advantages(advantages: jax.Array, loss_mask: jax.Array) -> jax.Array:
  """[B] per-response advantages -> [B, T] per-token, 0 where loss_mask is 0."""
  adv = jnp.asarray(advantages, jnp.float32)[:, None]               # [B, 1]
  return adv * loss_mask.astype(jnp.float32)                        # [B, T]

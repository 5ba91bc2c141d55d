"""Next-token choice: greedy, temperature, top-k, top-p, one PRNG stream per row.

Row b's draw at buffer position p uses `fold_in(keys[b], p)`, so a row's sample depends only on
its own key and position: not on the batch it shares, nor on where decode chunks or tool splices
fall. Log-prob conventions are documented on `SamplingConfig`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from masksearch_jax.rollout.types import SamplingConfig

_NEG = -1e30


def row_keys(seed: int | jax.Array, batch: int) -> jax.Array:
  """[batch, 2] uint32 raw keys, one independent stream per row."""
  key = jax.random.PRNGKey(seed) if isinstance(seed, int) else seed
  return jax.random.split(key, batch)


def _top_p_mask(sorted_logits: jax.Array, top_p: float) -> jax.Array:
  """Keep the smallest prefix of the descending-sorted tokens whose mass reaches top_p."""
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs          # mass strictly before each token
  return before < top_p                                # the first token is always kept


def sample(logits: jax.Array, keys: jax.Array, positions: jax.Array,
           cfg: SamplingConfig) -> tuple[jax.Array, jax.Array]:
  """logits [B, V] f32, keys [B, 2], positions [B] -> (tokens [B] int32, logprobs [B] f32)."""
  logits = logits.astype(jnp.float32)
  if cfg.greedy:
    tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    lp = jax.nn.log_softmax(logits, axis=-1)
    return tok, jnp.take_along_axis(lp, tok[:, None], axis=-1)[:, 0]

  step_keys = jax.vmap(jax.random.fold_in)(keys, positions.astype(jnp.uint32))
  draw = jax.vmap(jax.random.categorical)
  x = logits / cfg.temperature
  if cfg.top_k == 0 and cfg.top_p >= 1.0:
    tok = draw(step_keys, x).astype(jnp.int32)
    lp = jax.nn.log_softmax(x, axis=-1)
    return tok, jnp.take_along_axis(lp, tok[:, None], axis=-1)[:, 0]

  k = cfg.top_k if cfg.top_k > 0 else x.shape[-1]
  k = min(k, x.shape[-1])
  vals, idx = jax.lax.top_k(x, k)                      # [B, k] descending
  if cfg.top_p < 1.0:
    vals = jnp.where(_top_p_mask(vals, cfg.top_p), vals, _NEG)
  lp = jax.nn.log_softmax(vals, axis=-1)               # renormalised over the survivors
  choice = draw(step_keys, lp)                         # [B] index into the k survivors
  tok = jnp.take_along_axis(idx, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
  return tok, jnp.take_along_axis(lp, choice[:, None], axis=-1)[:, 0]

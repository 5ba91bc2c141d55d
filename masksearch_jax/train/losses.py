"""Token log-probs and masked cross-entropy, from logits or (memory-lean) from hidden states.

Everything returns SUMS plus token counts: the caller divides once by the global count of the
whole (accumulated, data-parallel) batch, so micro-batching never turns into a mean of means.
Targets are already aligned with the positions (targets[:, t] is the token after position t).

The chunked variant never materialises f32 logits [tokens, vocab] (for Qwen2.5 that is
151936 x 4 bytes = 0.6 MB per token): it walks token chunks and, inside each, vocab chunks of the
unembedding with an online log-sum-exp. The vocab step is rematerialised (jax.checkpoint), so the
backward pass recomputes each [token_chunk, vocab_chunk] logit tile instead of storing it: the
saved residuals are three [tokens] f32 vectors per vocab chunk, the live extra memory one tile.
Cost: 4 matmuls of the unembedding's size (forward, recompute, two backward) against 3 for
materialised logits. The unembedding is [vocab, d_model] (the
HF `lm_head.weight` / tied `embed_tokens.weight` layout); slice it by vocab, so keep it replicated
along vocab or expect gathers.

The fused variant (`fused_cross_entropy`, SFT's default) goes one step further for a plain
cross-entropy: its gradient w.r.t. the logits is known in the forward pass (softmax - onehot), so
each chunk's two gradient products run there and the backward pass only scales them: 3 products
of the unembedding's size, nothing [tokens, vocab]-sized saved, accuracy from the same logits.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from masksearch_jax.model.matmul import einsum_f32_out
from masksearch_jax.train import lse_kernel

__all__ = ["token_logprobs", "masked_cross_entropy", "chunked_token_logprobs",
           "chunked_cross_entropy", "fused_cross_entropy", "map_token_chunks"]


def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """log softmax(logits)[target] in f32. logits [B, T, V] (any float dtype), targets [B, T] int."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)                # [B, T, V]
  return jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def masked_cross_entropy(logits: jax.Array, targets: jax.Array,
                         loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum of -log p(target) over loss tokens, number of loss tokens), both f32 scalars."""
  mask = loss_mask.astype(jnp.float32)                                          # [B, T]
  return -jnp.sum(token_logprobs(logits, targets) * mask), jnp.sum(mask)


def _chunk_logprobs(x: jax.Array, tgt: jax.Array, unembedding: jax.Array,
                    vocab_chunk: int) -> jax.Array:
  """x [n, D], tgt [n] -> log p(tgt) [n] f32, scanning the vocab in chunks of vocab_chunk."""
  vocab = unembedding.shape[0]
  n = x.shape[0]
  num_chunks = -(-vocab // vocab_chunk)
  if num_chunks == 1:
    # Whole vocabulary at once (fastest on GPU when [n, V] fits): one logsumexp, a gather for the
    # target, and a bf16 backward through einsum_f32_out.
    logits = einsum_f32_out("nd,vd->nv", x, unembedding)                        # [n, V] f32
    tgt_logit = jnp.take_along_axis(logits, tgt[:, None], axis=-1)[:, 0]
    return tgt_logit - jax.nn.logsumexp(logits, axis=-1)

  @jax.checkpoint
  def body(carry, i):
    run_max, run_sum, tgt_logit = carry                                         # [n] each
    start = i * vocab_chunk
    # The last chunk is clamped to stay in bounds (no padded copy of the unembedding); columns
    # it shares with the previous chunk are masked out below.
    lo = jnp.minimum(start, vocab - vocab_chunk)
    w = jax.lax.dynamic_slice_in_dim(unembedding, lo, vocab_chunk, axis=0)      # [vc, D]
    logits = einsum_f32_out("nd,vd->nv", x, w)                                  # [n, vc] f32
    cols = lo + jnp.arange(vocab_chunk)                                         # [vc]
    fresh = cols >= start
    logits = jnp.where(fresh[None, :], logits, -jnp.inf)
    new_max = jnp.maximum(run_max, jnp.max(logits, axis=-1))
    run_sum = (run_sum * jnp.exp(run_max - new_max)
               + jnp.sum(jnp.exp(logits - new_max[:, None]), axis=-1))
    hit = (cols[None, :] == tgt[:, None]) & fresh[None, :]                      # [n, vc]
    tgt_logit = tgt_logit + jnp.sum(jnp.where(hit, logits, 0.0), axis=-1)
    return (new_max, run_sum, tgt_logit), None

  init = (jnp.full((n,), -jnp.inf, jnp.float32), jnp.zeros((n,), jnp.float32),
          jnp.zeros((n,), jnp.float32))
  (run_max, run_sum, tgt_logit), _ = jax.lax.scan(body, init, jnp.arange(num_chunks))
  return tgt_logit - (run_max + jnp.log(run_sum))


def _token_chunks(x: jax.Array, token_chunk: int) -> tuple[jax.Array, int, int]:
  """[B, T, ...] -> ([C, B, r, ...] zero-padded, r, C): map_token_chunks' layout (rows stay on
  their data-parallel devices; chunks run along the sequence)."""
  b, t = x.shape[:2]
  per_row = max(1, min(token_chunk // b, t))
  chunks = -(-t // per_row)
  x = jnp.pad(x, ((0, 0), (0, chunks * per_row - t)) + ((0, 0),) * (x.ndim - 2))
  return x.reshape(b, chunks, per_row, *x.shape[2:]).swapaxes(0, 1), per_row, chunks


def map_token_chunks(fn, hidden: jax.Array, targets: jax.Array, token_chunk: int) -> jax.Array:
  """fn(x [n, D], tgt [n]) -> [n] applied over chunks of ~token_chunk tokens; returns [B, T].

  Chunks run along the sequence with every row in each chunk ([chunks, B, T/chunks]): the scan is
  over an axis no mesh shards, so data-parallel rows stay on their devices. (Chunking the
  flattened B*T tokens instead made XLA gather every row onto every device: each computed the
  whole batch's logits — twice the unembedding work on 2 GPUs, and out of memory with `data=2`
  for the 1.5B shape.)
  """
  b, t, d = hidden.shape
  xs, per_row, chunks = _token_chunks(hidden, token_chunk)                       # [C, B, r, D]
  ts, _, _ = _token_chunks(targets.astype(jnp.int32), token_chunk)               # [C, B, r]
  one = lambda xt: fn(xt[0].reshape(b * per_row, d), xt[1].reshape(-1)).reshape(b, per_row)
  out = jax.lax.map(one, (xs, ts))                                                # [C, B, r]
  return out.swapaxes(0, 1).reshape(b, chunks * per_row)[:, :t]


def chunked_token_logprobs(hidden: jax.Array, unembedding: jax.Array, targets: jax.Array, *,
                           token_chunk: int = 1024, vocab_chunk: int = 16384) -> jax.Array:
  """log p(target) [B, T] f32 from final hidden states [B, T, D] and unembedding [V, D].

  Equals token_logprobs(hidden @ unembedding.T, targets) up to float rounding.
  """
  d = hidden.shape[-1]
  if unembedding.ndim != 2 or unembedding.shape[1] != d:
    raise ValueError(f"chunked_token_logprobs: unembedding shape {unembedding.shape} is not "
                     f"[vocab, d_model={d}]")
  vocab_chunk = min(vocab_chunk, unembedding.shape[0])
  return map_token_chunks(lambda x, tgt: _chunk_logprobs(x, tgt, unembedding, vocab_chunk),
                          hidden, targets, token_chunk)


def chunked_cross_entropy(hidden: jax.Array, unembedding: jax.Array, targets: jax.Array,
                          loss_mask: jax.Array, *, token_chunk: int = 1024,
                          vocab_chunk: int = 16384) -> tuple[jax.Array, jax.Array]:
  """masked_cross_entropy without full logits: (sum loss, num loss tokens), f32 scalars."""
  logp = chunked_token_logprobs(hidden, unembedding, targets, token_chunk=token_chunk,
                                vocab_chunk=vocab_chunk)                        # [B, T]
  mask = loss_mask.astype(jnp.float32)
  return -jnp.sum(logp * mask), jnp.sum(mask)


def _fused_ce_sums(hidden, unembedding, targets, weights, token_chunk, logits_dtype, lse_impl,
                   with_grads):
  """Chunk by chunk: (sum w * -log p, sum w * [argmax == target]) and, with_grads, the
  gradients of the first sum w.r.t. hidden [B, T, D] and unembedding [V, D]."""
  b, t, d = hidden.shape
  vocab = unembedding.shape[0]
  xs, per_row, _ = _token_chunks(hidden, token_chunk)                           # [C, B, r, D]
  ts, _, _ = _token_chunks(targets.astype(jnp.int32), token_chunk)              # [C, B, r]
  ws, _, _ = _token_chunks(weights.astype(jnp.float32), token_chunk)            # [C, B, r]

  def body(carry, xtw):
    loss, correct, dw = carry
    x, tgt, w = (a.reshape(b * per_row, *a.shape[2:]) for a in xtw)             # [n, D], [n]
    logits = jnp.einsum("nd,vd->nv", x, unembedding,
                        preferred_element_type=logits_dtype)                    # [n, V]
    if lse_impl == "pallas" and lse_kernel.available() and lse_kernel.supported(*logits.shape):
      lse, top = lse_kernel.lse_argmax(logits)                                  # one read
    else:   # read as f32 by each pass (the convert fuses into it); stored as logits_dtype
      lse = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)               # [n]
      top = jnp.argmax(logits, axis=-1)
    is_tgt = jnp.arange(vocab)[None, :] == tgt[:, None]                         # [n, V]
    # A gather, not a pass over [n, V]; clipped so a masked-out target id of -1 stays finite.
    tgt_logit = jnp.take_along_axis(logits, tgt[:, None], axis=-1, mode="clip")[:, 0]
    loss = loss + jnp.sum(w * (lse - tgt_logit.astype(jnp.float32)))
    correct = correct + jnp.sum(w * (top == tgt))
    if not with_grads:
      return (loss, correct, dw), None
    # d(sum w * -log p)/d logits = w * (softmax - onehot), in the activations' dtype for the
    # two products (as the unfused backward does).
    g = (w[:, None] * (jnp.exp(logits.astype(jnp.float32) - lse[:, None]) - is_tgt)
         ).astype(x.dtype)                                                      # [n, V]
    dx = jnp.einsum("nv,vd->nd", g, unembedding, preferred_element_type=jnp.float32)
    dw = dw + jnp.einsum("nv,nd->vd", g, x, preferred_element_type=jnp.float32)  # [V, D] f32
    return (loss, correct, dw), dx.astype(hidden.dtype).reshape(b, per_row, d)

  zero = jnp.zeros((), jnp.float32)
  dw0 = jnp.zeros(unembedding.shape if with_grads else (), jnp.float32)
  (loss, correct, dw), dxs = jax.lax.scan(body, (zero, zero, dw0), (xs, ts, ws))
  if not with_grads:
    return loss, correct, None, None
  dx = dxs.swapaxes(0, 1).reshape(b, -1, d)[:, :t]                              # [B, T, D]
  return loss, correct, dx, dw.astype(unembedding.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _fused_ce(hidden, unembedding, targets, weights, token_chunk, logits_dtype, lse_impl):
  loss, correct, _, _ = _fused_ce_sums(hidden, unembedding, targets, weights, token_chunk,
                                       logits_dtype, lse_impl, False)
  return loss, correct


def _fused_ce_fwd(hidden, unembedding, targets, weights, token_chunk, logits_dtype, lse_impl):
  loss, correct, dx, dw = _fused_ce_sums(hidden, unembedding, targets, weights, token_chunk,
                                         logits_dtype, lse_impl, True)
  return (loss, correct), (dx, dw)


def _fused_ce_bwd(token_chunk, logits_dtype, lse_impl, res, cts):
  del token_chunk, logits_dtype, lse_impl
  dx, dw = res
  ct = cts[0]                                      # the correct count carries no gradient
  return ((dx * ct).astype(dx.dtype), (dw * ct).astype(dw.dtype), None, None)


_fused_ce.defvjp(_fused_ce_fwd, _fused_ce_bwd)


def fused_cross_entropy(hidden: jax.Array, unembedding: jax.Array, targets: jax.Array,
                        loss_mask: jax.Array, *, token_chunk: int = 4096,
                        logits_dtype=jnp.float32, lse_impl: str = "xla"
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(sum loss, num loss tokens, weighted count of argmax == target) from hidden states.

  Under differentiation the gradient is computed inside the forward pass, one token chunk at a
  time (softmax - onehot, then its two products), so nothing of size [tokens, vocab] outlives a
  chunk: the backward pass only scales the saved gradients (hidden-sized and unembedding-sized).
  Against `chunked_cross_entropy` this saves the f32 logits the backward pass would read again
  (20 GB for 16 x 2048 tokens of Qwen2.5's vocabulary) and a second unembedding product for the
  accuracy. hidden [B, T, D], unembedding [V, D], targets / loss_mask [B, T].

  logits_dtype: what the unembedding product writes (accumulated in f32 either way; softmax,
  loss and gradient are computed in f32). bfloat16 halves the traffic of the three passes over
  [tokens, vocab] that follow the product, at bf16 rounding of each logit — what `transformers`
  (a bf16 lm_head) and MaxText (logits_dot_in_fp32=False) train with by default.
  lse_impl: "xla" (logsumexp + argmax) or "pallas" (train/lse_kernel.py: one read of the logits
  for both; GPUs, and interpret mode on CPU; shapes it does not take fall back to XLA).
  """
  if lse_impl not in ("xla", "pallas"):
    raise ValueError(f"fused_cross_entropy: lse_impl={lse_impl!r} (xla | pallas)")
  d = hidden.shape[-1]
  if unembedding.ndim != 2 or unembedding.shape[1] != d:
    raise ValueError(f"fused_cross_entropy: unembedding shape {unembedding.shape} is not "
                     f"[vocab, d_model={d}]")
  loss, correct = _fused_ce(hidden, unembedding, targets, loss_mask.astype(jnp.float32),
                            token_chunk, jnp.dtype(logits_dtype), lse_impl)
  return loss, jnp.sum(loss_mask.astype(jnp.float32)), jax.lax.stop_gradient(correct)

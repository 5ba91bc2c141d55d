"""AdamW with warmup + cosine/constant schedules, global-norm clipping, a weight-decay mask, and
exact gradient accumulation.

Accumulation is exact by construction: each micro-batch's loss function returns a SUM over its
loss tokens together with its token count; sums and counts are added over the micro-batches and
divided once. The result is the token-mean over the whole accumulated batch — identical to one big
batch — not a mean of per-micro-batch means (which over-weights micro-batches with few tokens).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

__all__ = ["OptimConfig", "make_schedule", "decay_mask", "make_optimizer",
           "accumulate_gradients", "cast_floating"]

PyTree = Any


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  learning_rate: float = 1e-5       # peak
  schedule: str = "cosine"          # cosine | constant
  warmup_steps: int = 0             # linear warmup: step s uses lr * (s + 1) / warmup_steps
  total_steps: int = 1000           # cosine horizon, warmup included
  min_lr_ratio: float = 0.0         # cosine floor, as a fraction of the peak
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.01        # decoupled (AdamW), only where decay_mask is True
  max_grad_norm: float | None = 1.0  # None: no clipping
  no_decay: tuple[str, ...] = ("norm", "bias", "scale")  # path substrings exempt from decay
  mu_dtype: str = "auto"            # Adam's first moment: auto (the params' dtype) | float32 |
                                    # bfloat16 (as MaxText's mu_dtype: with f32 params, 2 bytes a
                                    # parameter less to read and write a step; measured on the
                                    # 1.5B SFT step: +0-0.2 MFU points, within run-to-run noise)

  def __post_init__(self):
    problems = []
    if self.schedule not in ("cosine", "constant"):
      problems.append(f"schedule={self.schedule!r} (expected cosine or constant)")
    if not self.learning_rate > 0:
      problems.append(f"learning_rate={self.learning_rate} (must be > 0)")
    if self.warmup_steps < 0:
      problems.append(f"warmup_steps={self.warmup_steps} (must be >= 0)")
    if self.schedule == "cosine" and self.total_steps <= self.warmup_steps:
      problems.append(f"total_steps={self.total_steps} must exceed warmup_steps="
                      f"{self.warmup_steps} for a cosine schedule")
    if not 0 <= self.min_lr_ratio <= 1:
      problems.append(f"min_lr_ratio={self.min_lr_ratio} (must be in [0, 1])")
    if self.mu_dtype not in ("auto", "float32", "bfloat16"):
      problems.append(f"mu_dtype={self.mu_dtype!r} (auto | float32 | bfloat16)")
    if self.max_grad_norm is not None and self.max_grad_norm <= 0:
      problems.append(f"max_grad_norm={self.max_grad_norm} (must be > 0 or None)")
    if problems:
      raise ValueError("OptimConfig: " + "; ".join(problems))


def make_schedule(cfg: OptimConfig) -> optax.Schedule:
  """step (0-based update count) -> learning rate."""
  peak, warm = cfg.learning_rate, cfg.warmup_steps
  floor = cfg.min_lr_ratio * peak

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warmup = jnp.minimum(1.0, (step + 1.0) / warm) if warm > 0 else 1.0
    if cfg.schedule == "constant":
      return peak * warmup
    progress = jnp.clip((step - warm) / (cfg.total_steps - warm), 0.0, 1.0)
    cosine = floor + (peak - floor) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
    return jnp.where(step < warm, peak * warmup, cosine)

  return schedule


def decay_mask(params: PyTree, no_decay: tuple[str, ...] = OptimConfig.no_decay) -> PyTree:
  """True for leaves that get weight decay: matrices (ndim >= 2) whose path names no norm/bias."""
  def keep(path, leaf):
    name = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path).lower()
    return jnp.ndim(leaf) >= 2 and not any(s in name for s in no_decay)
  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
  """clip_by_global_norm -> AdamW(schedule, masked decoupled weight decay)."""
  adamw = optax.adamw(make_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                      weight_decay=cfg.weight_decay,
                      mu_dtype=None if cfg.mu_dtype == "auto" else jnp.dtype(cfg.mu_dtype),
                      mask=lambda p: decay_mask(p, cfg.no_decay))
  if cfg.max_grad_norm is None:
    return adamw
  return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adamw)


def cast_floating(tree: PyTree, dtype) -> PyTree:
  """Floating leaves cast to dtype (integer leaves kept): the compute copy of f32 params."""
  return jax.tree.map(lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p,
                      tree)


def accumulate_gradients(loss_fn: Callable[[PyTree, PyTree], tuple[jax.Array, dict]],
                         params: PyTree, micro_batches: PyTree, compute_dtype=None
                         ) -> tuple[jax.Array, PyTree, dict]:
  """Token-mean loss and gradient over all micro-batches, divided once.

  loss_fn(params, batch) -> (sum_loss, aux) where aux is a dict of scalars that includes
  "num_tokens" (the batch's loss-token count); every aux entry is summed over micro-batches.
  micro_batches: a pytree whose leaves have a leading [num_micro, ...] axis (scanned, so the
  trace is one micro-batch big). Returns (mean loss, mean grads in f32, summed aux).
  For the DAPO loss, call rl.dapo.dapo_loss with num_tokens=1.0 inside loss_fn (a pure sum) and
  report the micro-batch's mask sum as aux["num_tokens"]. Under jit over a data-parallel mesh the
  sums already span all devices, so the one division is by the global count.

  compute_dtype: differentiate at params cast once to this dtype (the model casts every weight
  to its compute dtype before use anyway, so the forward values are the same): one cast a step
  instead of one per use and per rematerialisation, and bf16 weight gradients that are widened
  to f32 once, in the accumulation (1.5B SFT step on an H200: see benchmarks/RESULTS.md).
  Accumulation over micro-batches stays f32.
  """
  value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
  at = params if compute_dtype is None else cast_floating(params, compute_dtype)
  f32 = lambda tree: jax.tree.map(lambda g: g.astype(jnp.float32), tree)

  def body(carry, batch):
    loss_acc, grad_acc, aux_acc = carry
    (loss, aux), grads = value_and_grad(at, batch)
    grad_acc = jax.tree.map(jnp.add, grad_acc, f32(grads))
    aux_acc = {k: aux_acc[k] + jnp.asarray(v, jnp.float32) for k, v in aux.items()}
    return (loss_acc + loss.astype(jnp.float32), grad_acc, aux_acc), None

  first = jax.tree.map(lambda x: x[0], micro_batches)
  aux_shape = jax.eval_shape(lambda p, b: loss_fn(p, b)[1], at, first)
  if not isinstance(aux_shape, dict) or "num_tokens" not in aux_shape:
    raise ValueError("accumulate_gradients: loss_fn must return (sum_loss, aux) with aux a dict "
                     f"containing 'num_tokens'; got aux {aux_shape}")
  if jax.tree.leaves(micro_batches)[0].shape[0] == 1:
    # One micro-batch: no f32 zero accumulator to write and add to (a params-sized pass each).
    (loss, aux), grads = value_and_grad(at, first)
    loss_sum, grad_sum = loss.astype(jnp.float32), f32(grads)
    aux_sum = {k: jnp.asarray(v, jnp.float32) for k, v in aux.items()}
  else:
    zeros = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
    aux0 = {k: jnp.zeros((), jnp.float32) for k in aux_shape}
    (loss_sum, grad_sum, aux_sum), _ = jax.lax.scan(
        body, (jnp.zeros((), jnp.float32), zeros, aux0), micro_batches)
  denom = jnp.maximum(aux_sum["num_tokens"], 1.0)
  return loss_sum / denom, jax.tree.map(lambda g: g / denom, grad_sum), aux_sum

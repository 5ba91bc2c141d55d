"""Trainer machinery shared by the SFT and RL loops: mesh + shardings, state init / restore, the
jitted donated update step, host batches -> global arrays, and HF export.

The update step is one `jax.jit` over (state, batch) with explicit in/out shardings and the state
donated, so parameters and optimizer moments are updated in place. Gradient accumulation scans
the micro-batches inside that one program (`optim.accumulate_gradients`): the loss function returns
SUMS and a loss-token count, and the step divides once by the count of the whole accumulated
(and, under the mesh, global) batch — the token-mean of one big batch, never a mean of means.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from masksearch_jax.checkpoint import hf, state as ckpt
from masksearch_jax.model import qwen2
from masksearch_jax.model.config import Qwen2Config
from masksearch_jax.parallel import distributed, mesh as mesh_lib, rules
from masksearch_jax.train import optim
from masksearch_jax.train.config import TrainConfig

TrainState = ckpt.TrainState
CHECKPOINT_SUBDIR = "checkpoints"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# loss_fn(params, micro_batch) -> (sum_loss, num_loss_tokens, {name: sum over the micro-batch})
LossFn = Callable[[Any, Mapping[str, jax.Array]], tuple[jax.Array, jax.Array, dict]]


# ------------------------------------------------------------------------------ mesh, shardings
def param_shapes(model_cfg: Qwen2Config, param_dtype: str = "float32") -> Any:
  """ShapeDtypeStructs of the params tree (no allocation)."""
  return jax.eval_shape(functools.partial(qwen2.init_params, model_cfg,
                                          dtype=DTYPES[param_dtype]), jax.random.key(0))


def build_mesh_and_shardings(cfg: TrainConfig, model_cfg: Qwen2Config, devices=None
                             ) -> tuple[Mesh, Any, NamedSharding]:
  """-> (mesh, params-shaped NamedSharding pytree, sharding of a micro-batched [M, B/M, T] leaf)."""
  mesh = mesh_lib.make_mesh(cfg.mesh, devices)
  rules.check_batch(cfg.batch_size // cfg.micro_batches, mesh,
                    what=f"batch_size/micro_batches ({cfg.batch_size}/{cfg.micro_batches})")
  param_sh = rules.param_shardings(param_shapes(model_cfg, cfg.param_dtype), model_cfg, mesh)
  batch_sh = NamedSharding(mesh, P(None, rules.DEFAULT_RULES["batch"], None))
  return mesh, param_sh, batch_sh


def state_shardings(tx: optax.GradientTransformation, param_shapes: Any, param_sh: Any,
                    mesh: Mesh) -> TrainState:
  """TrainState of shardings: Adam moments follow the params, counters/step/rng replicated."""
  opt_shapes = jax.eval_shape(tx.init, param_shapes)
  replicated = NamedSharding(mesh, P())
  return TrainState(params=param_sh, opt_state=rules.tree_shardings_like(opt_shapes, param_sh, mesh),
                    step=replicated, rng=replicated)


def abstract_state(tx, param_shapes, state_sh: TrainState) -> TrainState:
  """ShapeDtypeStructs (with target shardings) of the whole TrainState: the restore target."""
  rng = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
  shapes = TrainState(params=param_shapes, opt_state=jax.eval_shape(tx.init, param_shapes),
                      step=jax.ShapeDtypeStruct((), jnp.int32), rng=rng)
  return ckpt.abstract_like(shapes, state_sh)


# ------------------------------------------------------------------------------ init / restore
def checkpoint_manager(cfg: TrainConfig) -> ckpt.CheckpointManager:
  return ckpt.CheckpointManager(ckpt.CheckpointConfig(
      os.path.join(cfg.workdir, CHECKPOINT_SUBDIR), save_every=cfg.save_every,
      keep_last=cfg.keep_checkpoints, async_save=cfg.async_checkpoint))


def _hf_dir(path: str) -> Path | None:
  """`path` itself or its exported `hf/` subdirectory, if it holds a HF checkpoint."""
  for p in (Path(path), Path(path) / "hf"):
    if (p / "config.json").exists():
      return p
  return None


def load_params(path: str, model_cfg: Qwen2Config, param_sh: Any, dtype=jnp.float32,
                tx: optax.GradientTransformation | None = None) -> Any:
  """Params from a HF directory, a run's workdir (its `hf/` export, else its latest checkpoint),
  placed on `param_sh`. Shapes must match `model_cfg` (errors name the differing fields)."""
  d = _hf_dir(path)
  if d is not None:
    got = Qwen2Config.from_hf_dir(d)
    diff = [f for f in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                        "intermediate_size", "tie_embeddings")
            if getattr(got, f) != getattr(model_cfg, f)]
    if diff:
      raise ValueError(f"{d}: checkpoint shape differs from the configured model in "
                       + ", ".join(f"{f} ({getattr(got, f)} vs {getattr(model_cfg, f)})" for f in diff))
    _, params = hf.load_hf(d, dtype=dtype, shardings=param_sh)
    logging.info("loaded params from HF checkpoint %s", d)
    return params
  ckpt_dir = Path(path) / CHECKPOINT_SUBDIR
  if not ckpt_dir.is_dir():
    raise FileNotFoundError(f"{path}: neither a HF checkpoint (config.json) nor a run workdir "
                            f"({CHECKPOINT_SUBDIR}/ or hf/)")
  if tx is None:
    raise ValueError(f"{path}: restoring a run checkpoint needs the optimizer (tx) it was saved with")
  shapes = jax.eval_shape(functools.partial(qwen2.init_params, model_cfg, dtype=dtype),
                          jax.random.key(0))
  mesh = jax.tree.leaves(param_sh)[0].mesh
  target = abstract_state(tx, shapes, state_shardings(tx, shapes, param_sh, mesh))
  mgr = ckpt.CheckpointManager(ckpt.CheckpointConfig(str(ckpt_dir), async_save=False))
  try:
    state, _ = mgr.restore(target)
  finally:
    mgr.close()
  logging.info("loaded params from run checkpoint %s (step %d)", ckpt_dir, int(state.step))
  return state.params


def init_or_restore(cfg: TrainConfig, model_cfg: Qwen2Config, tx: optax.GradientTransformation,
                    mesh: Mesh, param_sh: Any | None = None
                    ) -> tuple[TrainState, ckpt.CheckpointManager, dict | None]:
  """Resumes from WORKDIR/checkpoints if a finished checkpoint exists (state + data-iterator
  state, onto the current mesh), else builds a fresh state (random, init_from_hf or init_from)."""
  dtype = DTYPES[cfg.param_dtype]
  shapes = param_shapes(model_cfg, cfg.param_dtype)
  param_sh = param_sh if param_sh is not None else rules.param_shardings(shapes, model_cfg, mesh)
  state_sh = state_shardings(tx, shapes, param_sh, mesh)
  mgr = checkpoint_manager(cfg)
  if mgr.latest_step() is not None:
    state, data_state = mgr.restore(abstract_state(tx, shapes, state_sh))
    logging.info("resuming at step %d from %s", int(state.step), cfg.workdir)
    return state, mgr, data_state
  state_key = jax.random.key(cfg.seed)
  # RngBitGenerator keys for the initial weights: compiling 16 threefry normals costs ~3x longer
  # on CPU (seconds per process in tests); the values only need to be seeded, not portable.
  init_key = jax.random.key(cfg.seed, impl="rbg")
  source = cfg.init_from_hf or (cfg.init_from if cfg.init_from not in ("", "none") else "")
  if source:
    params = load_params(source, model_cfg, param_sh, dtype, tx)
  else:
    params = jax.jit(functools.partial(qwen2.init_params, model_cfg, dtype=dtype),
                     out_shardings=param_sh)(init_key)
  opt_state = jax.jit(tx.init, out_shardings=state_sh.opt_state)(params)
  state = TrainState.create(params, opt_state, state_key)
  state = state.replace(step=jax.device_put(state.step, state_sh.step),
                        rng=jax.device_put(state.rng, state_sh.rng))
  return state, mgr, None


# ------------------------------------------------------------------------------ one-call set-up
class Run(NamedTuple):
  """Everything a training loop needs before its first step (SFT and RL build it the same way)."""
  mesh: Mesh
  param_sh: Any
  batch_sh: Any
  state: TrainState
  mgr: ckpt.CheckpointManager
  data_state: Any
  step_fn: Callable


def setup(cfg: TrainConfig, model_cfg: Qwen2Config, loss_fn: LossFn, devices=None) -> Run:
  """Mesh + shardings, optimizer, init-or-restore, and the jitted update step, in that order."""
  try:                        # the entry points set it before the backend starts; a library caller
    distributed.set_gpu_memory_fraction(cfg.gpu_memory_fraction)    # that did not is told so
  except RuntimeError as e:
    logging.warning("%s (this run keeps the memory share it started with)", e)
  mesh, param_sh, batch_sh = build_mesh_and_shardings(cfg, model_cfg, devices)
  tx, schedule = optim.make_optimizer(cfg.optim), optim.make_schedule(cfg.optim)
  state, mgr, data_state = init_or_restore(cfg, model_cfg, tx, mesh, param_sh)
  state_sh = state_shardings(tx, jax.eval_shape(lambda: state.params), param_sh, mesh)
  step_fn = make_train_step(loss_fn, tx, cfg.micro_batches, state_sh, batch_sh, schedule,
                            compute_dtype=DTYPES[cfg.compute_dtype])
  return Run(mesh, param_sh, batch_sh, state, mgr, data_state, step_fn)


# ------------------------------------------------------------------------------ the update step
def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, micro_batches: int,
                    state_sh: TrainState, batch_sh: Any,
                    schedule: optax.Schedule | None = None, compute_dtype=None) -> Callable:
  """-> jitted, state-donating `step(state, batch) -> (state, metrics)`.

  compute_dtype: gradients are taken at the params cast once to it (optim.accumulate_gradients);
  the optimizer still updates the params in their own (f32) dtype.

  `batch` leaves are [micro_batches, rows, ...] (see `to_global_batch`). Metrics (f32 scalars):
  loss (token-mean over the whole batch), grad_norm (before clipping), num_tokens, learning_rate
  (if `schedule`), and every aux entry of loss_fn summed over micro-batches and divided by the
  global token count (so aux sums of per-token quantities become token-means).
  """
  def micro_loss(params, mb):
    s, n, aux = loss_fn(params, mb)
    return s, {**aux, "num_tokens": n}

  def step(state: TrainState, batch):
    first = jax.tree.leaves(batch)[0]
    if first.shape[0] != micro_batches:
      raise ValueError(f"batch has {first.shape[0]} micro-batches, step built for {micro_batches}")
    loss, grads, aux = optim.accumulate_gradients(micro_loss, state.params, batch, compute_dtype)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    rng = jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state.rng))[0])
    n = jnp.maximum(aux["num_tokens"], 1.0)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "num_tokens": aux["num_tokens"]}
    metrics.update({k: v / n for k, v in aux.items() if k != "num_tokens"})
    if schedule is not None:
      metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
    new = state.replace(params=params, opt_state=opt_state, step=state.step + 1, rng=rng)
    return new, metrics

  return mesh_lib.under_mesh(jax.jit(step, in_shardings=(state_sh, batch_sh),
                                  out_shardings=(state_sh, None), donate_argnums=(0,)),
                          jax.tree.leaves(batch_sh)[0].mesh)


def to_global_batch(local: Mapping[str, np.ndarray], micro_batches: int,
                    batch_sh: NamedSharding) -> dict[str, jax.Array]:
  """This host's rows {name: [rows, ...]} -> global arrays [micro_batches, global_rows/M, ...].

  Micro-batch m takes local rows m, M+m, 2M+m, ... so each micro-batch holds rows of every host.
  """
  out = {}
  for k, v in local.items():
    v = np.asarray(v)
    if v.shape[0] % micro_batches:
      raise ValueError(f"batch field {k}: {v.shape[0]} local rows not divisible by "
                       f"micro_batches={micro_batches}")
    mb = v.reshape(v.shape[0] // micro_batches, micro_batches, *v.shape[1:]).swapaxes(0, 1)
    sh = batch_sh if mb.ndim == 3 else NamedSharding(
        batch_sh.mesh, P(None, batch_sh.spec[1], *([None] * (mb.ndim - 2))))
    out[k] = jax.make_array_from_process_local_data(sh, np.ascontiguousarray(mb))
  return out


# ------------------------------------------------------------------------------ export
def export_at_end(cfg, state, model_cfg: Qwen2Config, tokenizer_dir, trained: bool) -> str | None:
  """The run's final HF export (cfg.export_hf_at_end) into WORKDIR/hf, only if it trained."""
  if not (cfg.export_hf_at_end and trained):
    return None
  return str(export_hf(state, model_cfg, f"{cfg.workdir}/hf", tokenizer_dir, cfg.export_dtype))


def export_hf(state_or_params: Any, model_cfg: Qwen2Config, out_dir: str | Path,
              tokenizer_dir: str | Path | None = None, dtype: str = "bfloat16") -> Path:
  """HF Qwen2ForCausalLM directory (+ tokenizer files copied) from a state or a params tree."""
  params = getattr(state_or_params, "params", state_or_params)
  if tokenizer_dir and not Path(tokenizer_dir).is_dir():
    raise FileNotFoundError(f"tokenizer_dir {tokenizer_dir} does not exist")
  return hf.save_hf(params, model_cfg, out_dir, dtype=dtype, tokenizer_dir=tokenizer_dir)


def export_checkpoint(cfg: TrainConfig, model_cfg: Qwen2Config, step: int | str = "latest",
                      out_dir: str | None = None, tokenizer_dir: str | None = None) -> Path:
  """Any saved checkpoint of cfg.workdir (params only) -> HF directory (default WORKDIR/hf_step<N>)."""
  tx = optim.make_optimizer(cfg.optim)
  mesh, param_sh, _ = build_mesh_and_shardings(cfg, model_cfg)
  shapes = param_shapes(model_cfg, cfg.param_dtype)
  target = abstract_state(tx, shapes, state_shardings(tx, shapes, param_sh, mesh))
  with checkpoint_manager(cfg) as mgr:
    state, _ = mgr.restore(target, step=step if step == "latest" else int(step))
  out = out_dir or f"{cfg.workdir}/hf_step{int(state.step)}"
  return export_hf(state, model_cfg, out, tokenizer_dir, cfg.export_dtype)

"""Train state and its orbax checkpoint manager.

One checkpoint per step holds two items: `state` (the TrainState pytree,
saved sharded by orbax's StandardSave) and `data_iter` (the grain iterator
state, a JSON dict), so a resumed run continues the model *and* the data
stream exactly where the saved run was.

Restores take explicit target shardings (abstract arrays carrying a
sharding), so a checkpoint written on one mesh loads onto another: orbax
reads each array's slices straight into the new layout.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from absl import logging
import flax
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

STATE = "state"
DATA_ITER = "data_iter"


@flax.struct.dataclass
class TrainState:
  """Everything an update step reads and writes (a pytree).

  `rng` is raw uint32 key data ([2] for threefry) rather than a typed key
  array, so it saves and shards like any other array; use
  `jax.random.wrap_key_data(state.rng)` to get a typed key.
  """
  params: Any
  opt_state: Any
  step: jax.Array  # int32 scalar
  rng: jax.Array  # uint32 key data

  @classmethod
  def create(cls, params: Any, opt_state: Any, rng: jax.Array,
             step: int = 0) -> "TrainState":
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
      rng = jax.random.key_data(rng)
    return cls(params=params, opt_state=opt_state,
               step=jnp.asarray(step, jnp.int32), rng=rng)


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree` with the given target shardings.

  `shardings` is a pytree matching `tree` (or one sharding for every leaf).
  This is the restore target that makes cross-mesh restores explicit.
  """
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, tree)
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x),
                                        sharding=s), tree, shardings)


@jax.jit
def _finite_flags(leaves: list[jax.Array]) -> jax.Array:
  return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])  # [leaves]


def check_state_finite(state: Any, step: int) -> None:
  """Raises FloatingPointError naming the step and the first non-finite
  leaves, so a diverged run stops instead of overwriting good checkpoints."""
  paths, leaves = [], []
  for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
    if jnp.issubdtype(jnp.result_type(x), jnp.inexact):
      paths.append(jax.tree_util.keystr(path))
      leaves.append(x)
  if not leaves:
    return
  ok = jax.device_get(_finite_flags(leaves))
  bad = [p for p, good in zip(paths, ok) if not good]
  if bad:
    raise FloatingPointError(
        f"step {step}: non-finite values in {bad[:5]}"
        f"{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}; "
        "not saving this checkpoint")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  directory: str
  save_every: int = 1000  # steps between saves (`save(..., force=True)` overrides)
  keep_last: int = 3  # finished checkpoints kept on disk; None keeps all
  async_save: bool = True  # write in a background thread; training goes on
  check_finite: bool = True  # refuse to save a state with NaN/Inf in it


class CheckpointManager:
  """Thin wrapper on `ocp.CheckpointManager` for (TrainState, iterator state).

  Use as a context manager (or call `close()`) so pending async saves finish
  before the process exits; a save that never finished is invisible to
  `latest_step()` because orbax writes into a temporary directory and
  renames it only once complete.
  """

  def __init__(self, cfg: CheckpointConfig):
    if cfg.save_every <= 0:
      raise ValueError(f"CheckpointConfig.save_every={cfg.save_every} must be positive")
    if cfg.keep_last is not None and cfg.keep_last <= 0:
      raise ValueError(f"CheckpointConfig.keep_last={cfg.keep_last} must be positive")
    self.cfg = cfg
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=1,  # the interval is ours: see save()
        max_to_keep=cfg.keep_last,
        enable_async_checkpointing=cfg.async_save,
        create=True,
    )
    self._mgr = ocp.CheckpointManager(
        os.path.abspath(os.fspath(cfg.directory)), options=options,
        item_names=(STATE, DATA_ITER))

  def save(self, step: int, state: TrainState,
           data_state: Mapping[str, Any] | None = None, *,
           force: bool = False) -> bool:
    """Saves if `step % save_every == 0` (or `force`); returns whether.

    Returns as soon as the device arrays are copied when `async_save`; the
    write finishes in the background. (Our own interval rule rather than
    orbax's, which also saves the first step it sees.)
    """
    if not force and int(step) % self.cfg.save_every:
      return False
    if self.cfg.check_finite:
      check_state_finite(state, step)
    args = ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(state),
        DATA_ITER: ocp.args.JsonSave(dict(data_state or {})),
    })
    saved = self._mgr.save(int(step), args=args, force=force)
    if saved:
      logging.info("checkpoint: saving step %d to %s", step, self.cfg.directory)
    return saved

  def latest_step(self) -> int | None:
    return self._mgr.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._mgr.all_steps())

  def restore(self, abstract_state: Any, step: int | str = "latest"
              ) -> tuple[TrainState, dict[str, Any]]:
    """Restores (state, data_state) onto the shardings in `abstract_state`.

    Args:
      abstract_state: a TrainState-shaped pytree of `jax.ShapeDtypeStruct`
        with `sharding` set (see `abstract_like`), on the *current* mesh; a
        freshly initialised state also works (its arrays' shardings are used).
      step: a step number or "latest".
    """
    abstract_state = jax.tree.map(
        lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else
        jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        abstract_state)
    if step == "latest":
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"no finished checkpoint in {self.cfg.directory}")
    elif int(step) not in self._mgr.all_steps():
      raise FileNotFoundError(
          f"no checkpoint for step {step} in {self.cfg.directory}; "
          f"have {self.all_steps()}")
    restored = self._mgr.restore(int(step), args=ocp.args.Composite(**{
        STATE: ocp.args.StandardRestore(abstract_state),
        DATA_ITER: ocp.args.JsonRestore(),
    }))
    logging.info("checkpoint: restored step %d from %s", step, self.cfg.directory)
    return restored[STATE], dict(restored[DATA_ITER] or {})

  def wait_until_finished(self) -> None:
    self._mgr.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves, then releases orbax's threads."""
    self._mgr.wait_until_finished()
    self._mgr.close()

  def __enter__(self) -> "CheckpointManager":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

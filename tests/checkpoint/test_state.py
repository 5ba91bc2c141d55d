"""Orbax checkpointing of the train state: cross-mesh restore, keep-last-K,
iterator state, and never restoring a half-written checkpoint."""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8")

import shutil  # pylint: disable=g-import-not-at-top

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from masksearch_jax.checkpoint import state as ckpt

pytestmark = pytest.mark.skipif(
    len(jax.devices()) < 8, reason="needs 8 (CPU) devices; jax was imported "
    "before XLA_FLAGS=--xla_force_host_platform_device_count=8 was set")


def _params():
  k1, k2 = jax.random.split(jax.random.key(0))
  return {"w": jax.random.normal(k1, (16, 8)), "b": jax.random.normal(k2, (8,)),
          "emb": jnp.arange(32 * 4, dtype=jnp.bfloat16).reshape(32, 4)}


def _state(params, step=3):
  opt = optax.adamw(1e-3)
  opt_state = opt.init(params)
  # One real update so mu/nu/count are not all zeros.
  grads = jax.tree.map(jnp.ones_like, params)
  _, opt_state = opt.update(grads, opt_state, params)
  return ckpt.TrainState.create(params, opt_state, jax.random.key(42), step=step)


def _shard(tree, mesh, spec_2d, spec_1d):
  """Shardings: spec_2d for matrices, spec_1d for [8k] vectors, else replicated."""
  def pick(x):
    spec = {2: spec_2d, 1: spec_1d}.get(np.ndim(x), P())
    if np.ndim(x) == 1 and np.shape(x)[0] % 8:
      spec = P()
    return NamedSharding(mesh, spec)
  return jax.tree.map(pick, tree)


def _assert_same(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(la, lb):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_on_one_mesh_restore_on_another(tmp_path):
  mesh8 = jax.make_mesh((8,), ("data",))
  state = _state(_params())
  state = jax.device_put(state, _shard(state, mesh8, P("data", None), P("data")))
  assert state.params["w"].sharding.spec == P("data", None)
  data_state = {"window_start": {"next_index": 17}, "rows_done": 2,
                "pipeline": {"seed": 7, "paths": ["a.jsonl"], "mask_nums": None}}
  cfg = ckpt.CheckpointConfig(str(tmp_path / "ckpt"), save_every=1, keep_last=2)
  with ckpt.CheckpointManager(cfg) as mgr:
    assert mgr.save(3, state, data_state)

  mesh24 = jax.make_mesh((2, 4), ("data", "model"))
  target = ckpt.abstract_like(
      state, _shard(state, mesh24, P("model", "data"), P(None)))
  with ckpt.CheckpointManager(cfg) as mgr:
    restored, restored_data = mgr.restore(target)
  _assert_same(restored, state)
  w = restored.params["w"]
  assert w.sharding.mesh.shape == {"data": 2, "model": 4}
  assert w.sharding.spec == P("model", "data")
  # Each device holds the [4, 4] block the new sharding asks for.
  assert {s.data.shape for s in w.addressable_shards} == {(4, 4)}
  assert restored_data == data_state
  assert int(restored.step) == 3 and restored.rng.dtype == jnp.uint32


def test_keep_last_k_and_save_interval(tmp_path):
  cfg = ckpt.CheckpointConfig(str(tmp_path / "ckpt"), save_every=2, keep_last=2)
  state = _state({"w": jnp.zeros((4, 4))})
  with ckpt.CheckpointManager(cfg) as mgr:
    saved = [s for s in range(1, 8)
             if mgr.save(s, state.replace(step=jnp.int32(s)), {"s": s})]
    assert saved == [2, 4, 6]  # every 2 steps, not the first step seen
    assert mgr.save(7, state.replace(step=jnp.int32(7)), {"s": 7}, force=True)
  with ckpt.CheckpointManager(cfg) as mgr:
    assert mgr.all_steps() == [6, 7]
    target = ckpt.abstract_like(state, NamedSharding(
        jax.make_mesh((8,), ("data",)), P()))
    restored, data = mgr.restore(target, step=6)
    assert int(restored.step) == 6 and data == {"s": 6}
    with pytest.raises(FileNotFoundError, match="no checkpoint for step 2"):
      mgr.restore(target, step=2)


def test_unfinished_save_is_never_latest(tmp_path):
  directory = tmp_path / "ckpt"
  cfg = ckpt.CheckpointConfig(str(directory), save_every=1, keep_last=5)
  state = _state({"w": jnp.arange(16.0).reshape(4, 4)}, step=1)
  with ckpt.CheckpointManager(cfg) as mgr:
    mgr.save(1, state, {"s": 1})
  # A crash mid-save leaves orbax's temporary directory (renamed to the step
  # name only once complete). Fake one for step 2 holding step-1 bytes.
  shutil.copytree(directory / "1", directory / "2.orbax-checkpoint-tmp-1700000000")
  with ckpt.CheckpointManager(cfg) as mgr:
    assert mgr.latest_step() == 1
    restored, data = mgr.restore(state)  # a concrete state works as target
  assert int(restored.step) == 1 and data == {"s": 1}
  _assert_same(restored, state)


def test_non_finite_state_is_not_saved(tmp_path):
  cfg = ckpt.CheckpointConfig(str(tmp_path / "ckpt"), save_every=1)
  state = _state({"a": jnp.ones((3,)), "b": jnp.array([1.0, jnp.nan])})
  with ckpt.CheckpointManager(cfg) as mgr:
    with pytest.raises(FloatingPointError,
                       match=r"step 5: non-finite values in \[\"\.params\['b'\]\""):
      mgr.save(5, state)
    assert mgr.all_steps() == []


def test_restore_empty_directory_is_clear(tmp_path):
  cfg = ckpt.CheckpointConfig(str(tmp_path / "none"))
  state = _state({"w": jnp.zeros((2,))})
  with ckpt.CheckpointManager(cfg) as mgr:
    with pytest.raises(FileNotFoundError, match="no finished checkpoint"):
      mgr.restore(ckpt.abstract_like(state, jax.sharding.SingleDeviceSharding(
          jax.devices()[0])))


_TRAIN_SCRIPT = r'''
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
from masksearch_jax.checkpoint import state as ckpt
from masksearch_jax.data import pipeline

data, ckpt_dir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = pipeline.PipelineConfig(paths=(data,), seq_len=16, batch_size=2, seed=3,
                              num_epochs=None, pack_window=4,
                              process_index=0, process_count=1)
encode = lambda r: ([r["id"] + 1] * r["len"], [1] * r["len"])
it = pipeline.make_iterator(cfg, encode)
state = ckpt.TrainState.create({"w": jnp.linspace(0.0, 1.0, 16)}, {},
                               jax.random.key(0))
mgr = ckpt.CheckpointManager(ckpt.CheckpointConfig(ckpt_dir, save_every=3, keep_last=2))
if mgr.latest_step() is not None:
  target = ckpt.abstract_like(state, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  state, data_state = mgr.restore(target)
  it.set_state(data_state)

@jax.jit
def update(state, tokens, mask):
  rng, sub = jax.random.split(jax.random.wrap_key_data(state.rng))
  x = tokens.astype(jnp.float32) * mask  # [batch, seq]
  loss = jnp.mean((x @ state.params["w"]) ** 2) * 1e-3
  noise = jax.random.normal(sub, state.params["w"].shape) * 1e-3
  w = state.params["w"] - 1e-4 * jnp.mean(x, 0) + noise
  return state.replace(params={"w": w}, step=state.step + 1,
                       rng=jax.random.key_data(rng)), loss

while int(state.step) < steps:
  batch = next(it)
  state, loss = update(state, batch["tokens"], batch["segment_ids"] > 0)
  step = int(state.step)
  print(json.dumps({"step": step, "loss": float(loss)}), flush=True)
  mgr.save(step, state, it.get_state())
  time.sleep(0.05)
mgr.close()
'''


@pytest.mark.slow  # ~15 s: three jax subprocesses
def test_sigkill_mid_run_resumes_identically(tmp_path):
  import json
  import signal
  import subprocess
  import sys
  from pathlib import Path
  repo = Path(__file__).resolve().parents[2]
  data = tmp_path / "d.jsonl"
  data.write_text("".join(json.dumps({"id": i, "len": 3 + i % 5}) + "\n"
                          for i in range(30)))
  script = tmp_path / "train.py"
  script.write_text(_TRAIN_SCRIPT)
  env = dict(os.environ, PYTHONPATH=str(repo), XLA_FLAGS="", JAX_PLATFORMS="cpu")

  def run(ckpt_dir, steps=12, kill_after=None):
    proc = subprocess.Popen([sys.executable, str(script), str(data), str(ckpt_dir),
                             str(steps)], stdout=subprocess.PIPE, env=env, text=True)
    losses = {}
    for line in proc.stdout:
      rec = json.loads(line)
      losses[rec["step"]] = rec["loss"]
      if kill_after is not None and rec["step"] >= kill_after:
        proc.send_signal(signal.SIGKILL)
        break
    proc.wait(timeout=120)
    return losses, proc.returncode

  reference, rc = run(tmp_path / "a")
  assert rc == 0 and sorted(reference) == list(range(1, 13))
  first, rc = run(tmp_path / "b", kill_after=7)
  assert rc == -signal.SIGKILL
  second, rc = run(tmp_path / "b")
  assert rc == 0
  assert min(second) in (4, 7)  # resumed after the last finished save (3 or 6)
  merged = {**first, **second}
  assert merged == reference  # bit-identical losses at every step

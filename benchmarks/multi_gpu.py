"""Multi-device checks on real accelerators: sharded forward == one-device forward, and a training
state saved on one mesh restored on another gives identical logits.

  python benchmarks/multi_gpu.py --mode=forward --model=1.5b             # all local GPUs
  python benchmarks/multi_gpu.py --mode=save --model=0.5b --workdir=/tmp/mg      # N GPUs ...
  CUDA_VISIBLE_DEVICES=0 python benchmarks/multi_gpu.py --mode=restore --model=0.5b \
      --workdir=/tmp/mg                                                  # ... restored on 1 GPU
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/multi_gpu.py \
      --mode=forward --model=tiny                                        # CPU smoke test

forward: random f32 weights, f32 compute at `highest` matmul precision (so the comparison is of the
sharding, not of TF32 rounding), XLA attention, logits of the first device alone vs the same jitted forward with
params placed by `parallel.rules` on each mesh: pure data parallel, FSDP, tensor parallel (and
data x tensor with 4+ devices). bf16-compute rows (XLA attention, and on GPUs cuDNN attention run
per shard under the mesh) show the ordinary rounding spread of a different partitioning.
save: `trainer.setup` on --mesh (default all devices FSDP), --steps real SFT updates on random
tokens, a checkpoint, and the logits of fixed tokens written beside it. restore: `trainer.setup`
with --mesh on the devices now visible resumes that checkpoint (the trainer's own restore path,
explicit target shardings) and compares logits and every parameter with what save wrote.
SFT scaling and the sharded DAPO step are `benchmarks/train_step.py --mesh=...`.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # run from a checkout, uninstalled

from benchmarks import common  # noqa: E402
from masksearch_jax.model import qwen2
from masksearch_jax.parallel import mesh as pmesh, rules
from masksearch_jax.train import config as config_lib, sft, trainer

_MODE = flags.DEFINE_enum("mode", "forward", ["forward", "save", "restore"], "What to run.")
_MODEL = flags.DEFINE_string("model", "1.5b", "Model preset / configs/models name.")
_BATCH = flags.DEFINE_integer("batch", 4, "Rows (a multiple of the device count).")
_SEQ = flags.DEFINE_integer("seq", 256, "Tokens per row.")
_MESHES = flags.DEFINE_list("meshes", [], "forward: mesh specs to compare (default: data=N, "
                            "fsdp=N, tensor=N, and data=2,tensor=N/2 with 4+ devices).")
_VARIANTS = flags.DEFINE_list("variants", ["xla:float32", "xla:bfloat16", "cudnn:bfloat16"],
                              "forward: attention:compute pairs (cudnn rows only on GPUs).")
_MESH = flags.DEFINE_string("mesh", "data=1,fsdp=-1,tensor=1", "save/restore: the run's mesh.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/multi_gpu", "save/restore: run directory.")
_STEPS = flags.DEFINE_integer("steps", 2, "save: SFT updates before the checkpoint.")


def _tokens(vocab: int) -> np.ndarray:
  return np.random.default_rng(0).integers(0, vocab, (_BATCH.value, _SEQ.value), dtype=np.int32)


def _default_meshes(n: int) -> list[str]:
  ms = [f"data={n},fsdp=1,tensor=1", f"data=1,fsdp={n},tensor=1", f"data=1,fsdp=1,tensor={n}"]
  if n >= 4:
    ms.append(f"data=2,fsdp=1,tensor={n // 2}")
  return ms


def run_forward() -> None:
  cfg = config_lib.load_config("", model=_MODEL.value)
  mcfg = config_lib.model_config(cfg)
  devs = jax.devices()
  params = jax.jit(functools.partial(qwen2.init_params, mcfg, dtype=jnp.float32),
                   device=devs[0])(jax.random.key(0))
  tokens = _tokens(mcfg.vocab_size)
  rows = []
  variants = [tuple(v.split(":")) for v in _VARIANTS.value]
  if jax.default_backend() != "gpu":
    variants = [v for v in variants if v[0] != "cudnn"]
  with jax.default_matmul_precision("highest"):
    for impl, dtype in variants:
      cd = jnp.dtype(dtype)
      fwd = lambda p, t: qwen2.apply(p, mcfg, t, compute_dtype=cd, attn_impl=impl)[0]
      ref = np.asarray(jax.jit(fwd)(params, jax.device_put(tokens, devs[0])))
      for spec in _MESHES.value or _default_meshes(len(devs)):
        mesh = pmesh.make_mesh(spec, devs)
        sp = jax.device_put(params, rules.param_shardings(params, mcfg, mesh))
        st = jax.device_put(tokens, rules.batch_sharding(mesh))
        out = np.asarray(pmesh.under_mesh(jax.jit(
            fwd, out_shardings=rules.batch_sharding(mesh, ndim=3)), mesh)(sp, st))
        diff = np.abs(out - ref)
        rows.append({"model": _MODEL.value, "attn": impl, "compute": dtype, "mesh": spec,
                     "max_abs_diff": f"{diff.max():.2e}",
                     "rel_diff": f"{diff.max() / np.abs(ref).max():.2e}",
                     "argmax_agree": f"{(out.argmax(-1) == ref.argmax(-1)).mean():.4f}"})
        print(rows[-1], flush=True)
        del sp
  print(f"\nsharded forward vs one device ({devs[0].device_kind}, {len(devs)} devices, "
        f"batch {_BATCH.value} x {_SEQ.value}, random weights std 0.02, max |logit| "
        f"{np.abs(ref).max():.2f})")
  common.print_table(rows, ["model", "attn", "compute", "mesh", "max_abs_diff", "rel_diff", "argmax_agree"])


def _setup():
  cfg = config_lib.load_config(
      "", model=_MODEL.value, mesh=_MESH.value, workdir=_WORKDIR.value, batch_size=_BATCH.value,
      seq_len=_SEQ.value, learning_rate=1e-4, warmup_steps=0, steps=1000,
      attn_impl="cudnn" if jax.default_backend() == "gpu" else "xla", async_checkpoint=False)
  config_lib.validate(cfg, len(jax.devices()))
  mcfg = config_lib.model_config(cfg)
  return cfg, mcfg, trainer.setup(cfg, mcfg, sft.make_loss_fn(mcfg, cfg))


def _logits(params, mcfg) -> np.ndarray:
  with jax.default_matmul_precision("highest"):
    return np.asarray(jax.jit(lambda p, t: qwen2.apply(p, mcfg, t, compute_dtype=jnp.float32)[0])(
        params, jnp.asarray(_tokens(mcfg.vocab_size))))


def _flat(params) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in
          jax.tree_util.tree_leaves_with_path(params)}


def run_save() -> None:
  cfg, mcfg, run = _setup()
  if run.mgr.latest_step() is not None:
    raise SystemExit(f"{cfg.workdir} already has a checkpoint; use a fresh --workdir")
  b, t = cfg.batch_size, cfg.seq_len
  rng = np.random.default_rng(1)
  state, losses = run.state, []
  for _ in range(_STEPS.value):
    local = {"tokens": rng.integers(0, mcfg.vocab_size, (b, t), dtype=np.int32),
             "loss_mask": np.ones((b, t), np.int32), "segment_ids": np.ones((b, t), np.int32),
             "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1))}
    state, m = run.step_fn(state, trainer.to_global_batch(local, cfg.micro_batches, run.batch_sh))
    losses.append(float(m["loss"]))
  run.mgr.save(int(state.step), state, force=True)
  run.mgr.close()
  # Expected logits from the saved params gathered onto one device: the restore side runs the same
  # one-device program, so identical params must give bit-identical logits.
  one = jax.device_put(state.params, jax.devices()[0])
  np.savez(Path(cfg.workdir) / "expected.npz", logits=_logits(one, mcfg),
           **{"param" + k: v for k, v in _flat(state.params).items()})
  q = state.params["layers"]["q"]
  print(f"saved step {int(state.step)} on mesh {dict(run.mesh.shape)} ({len(jax.devices())} "
        f"devices), losses {[round(x, 4) for x in losses]}, layers.q sharding {q.sharding.spec}")


def run_restore() -> None:
  expected = Path(_WORKDIR.value) / "expected.npz"
  if not expected.exists():                      # checked before building anything
    raise SystemExit(f"{expected} not found: run --mode=save with this --workdir first")
  cfg, mcfg, run = _setup()
  run.mgr.close()
  if run.data_state is None and int(run.state.step) == 0:
    raise SystemExit(f"no checkpoint restored from {cfg.workdir}")
  want = np.load(expected)
  got = _logits(run.state.params, mcfg)
  diff = float(np.abs(got - want["logits"]).max())
  flat = _flat(run.state.params)
  bad = [k for k, v in flat.items() if not np.array_equal(v, want["param" + k])]
  print(f"restored step {int(run.state.step)} on mesh {dict(run.mesh.shape)} "
        f"({len(jax.devices())} devices): logits max |diff| {diff:.3e}, "
        f"params identical: {len(flat) - len(bad)}/{len(flat)}{' ' + str(bad) if bad else ''}")
  if diff or bad:
    raise SystemExit("restore mismatch")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  print(f"devices: {len(jax.devices())} x {jax.devices()[0].device_kind}, jax {jax.__version__}")
  {"forward": run_forward, "save": run_save, "restore": run_restore}[_MODE.value]()


if __name__ == "__main__":
  app.run(main)

r"""SFT entry point: masked cross-entropy on search traces / RAMP records, resumable.

  python -m masksearch_jax.train_sft --config=configs/sft_world.py --model=tiny \
      --data=runs/world/traces.jsonl --tokenizer=runs/world/tokenizer --workdir=runs/sft_world
  python -m masksearch_jax.train_sft --config=configs/slices/gpu1.py --model=1_5b \
      --init_from_hf=/ckpt/Qwen2.5-1.5B --data=traces.jsonl --workdir=runs/sft_1_5b

Every TrainConfig field is a flag of the same name (`--help` lists them); `--config` and
`--overlay` read config files (configs/). Rerunning the same command resumes from the latest
checkpoint in --workdir. `--export_step=N|latest --export_dir=DIR` only exports that saved
checkpoint to HF format (with the tokenizer) and exits.
"""
from __future__ import annotations

import sys
from typing import Sequence

from absl import app, flags, logging

from masksearch_jax.train import config as config_lib

_CONFIG = flags.DEFINE_string("config", "", "Base config file (python CONFIG dict or JSON).")
_OVERLAY = flags.DEFINE_list("overlay", [], "More config files, applied in order after --config.")
_EXPORT_STEP = flags.DEFINE_string("export_step", None,
                                   "Export this saved step ('latest' or a number) and exit.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Where --export_step writes (default "
                                  "WORKDIR/hf_step<N>).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "Multi-host: coordinator host:port (else auto-detected).")
config_lib.define_flags(module_name=sys.argv[0] if __name__ == "__main__" else __name__)


def export_saved(cfg: config_lib.TrainConfig, step: str, out_dir: str | None) -> str:
  """Restores a saved checkpoint's params onto this host's devices and writes a HF directory."""
  from masksearch_jax import tokenizer as tok_lib
  from masksearch_jax.train import sft, trainer
  tok_path = sft.tokenizer_dir(cfg)
  mcfg = sft.resolve_model(cfg, tok_lib.load(tok_path) if tok_path else None)
  step_arg = step if step == "latest" else int(step)
  return str(trainer.export_checkpoint(cfg, mcfg, step_arg, out_dir, tok_path))


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from masksearch_jax.parallel import distributed
  cfg = config_lib.load_config(_CONFIG.value, *_OVERLAY.value, **config_lib.flag_overrides())
  distributed.set_gpu_memory_fraction(cfg.gpu_memory_fraction)   # before the backend starts
  distributed.maybe_initialize(coordinator_address=_COORDINATOR.value)
  if _EXPORT_STEP.value:
    print(export_saved(cfg, _EXPORT_STEP.value, _EXPORT_DIR.value))
    return
  from masksearch_jax.train import sft
  result = sft.train(cfg)
  logging.info("done at step %d; last metrics %s", result["step"], result["metrics"])
  if result["export"]:
    print(f"exported HF checkpoint: {result['export']}")


if __name__ == "__main__":
  app.run(main)

r"""DAPO entry point: RL with search on QA examples or RAMP records, resumable.

  python -m masksearch_jax.train_rl --config=configs/rl_world.py --overlay=configs/slices/cpu.py \
      --init_from=runs/sft_world --workdir=runs/rl_world
  python -m masksearch_jax.train_rl --config=configs/rl_world.py --overlay=configs/slices/gpu1.py \
      --model=1_5b --init_from_hf=/ckpt/Qwen2.5-1.5B-Instruct \
      --tokenizer=/ckpt/Qwen2.5-1.5B-Instruct --data=train.jsonl \
      --retriever=http://localhost:8000 --workdir=runs/rl_1_5b

Every RLConfig field (TrainConfig's plus the RL ones, nested dapo / reward / optim fields flat:
`--eps_high=0.28 --answer_metric=f1 --learning_rate=1e-6`) is a flag of the same name; `--help`
lists them. Rerunning the same command resumes from the latest checkpoint in --workdir.
`--export_step=N|latest` only exports that saved checkpoint to HF format and exits.
"""
from __future__ import annotations

import sys
from typing import Sequence

from absl import app, flags, logging

from masksearch_jax.train import config as config_lib
from masksearch_jax.train.rl import RLConfig

_CONFIG = flags.DEFINE_string("config", "", "Base config file (python CONFIG dict or JSON).")
_OVERLAY = flags.DEFINE_list("overlay", [], "More config files, applied in order after --config.")
_EXPORT_STEP = flags.DEFINE_string("export_step", None,
                                   "Export this saved step ('latest' or a number) and exit.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Where --export_step writes (default "
                                  "WORKDIR/hf_step<N>).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "Multi-host: coordinator host:port (else auto-detected).")
config_lib.define_flags(cls=RLConfig,
                        module_name=sys.argv[0] if __name__ == "__main__" else __name__)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from masksearch_jax.parallel import distributed
  cfg = config_lib.load_config(_CONFIG.value, *_OVERLAY.value, cls=RLConfig,
                               **config_lib.flag_overrides(cls=RLConfig))
  distributed.set_gpu_memory_fraction(cfg.gpu_memory_fraction)   # before the backend starts
  distributed.maybe_initialize(coordinator_address=_COORDINATOR.value)
  if _EXPORT_STEP.value:
    from masksearch_jax import train_sft
    print(train_sft.export_saved(cfg, _EXPORT_STEP.value, _EXPORT_DIR.value))
    return
  from masksearch_jax.train import rl
  result = rl.run(cfg)
  logging.info("done at RL step %d; last metrics %s", result["rl_step"], result["metrics"])
  if result["export"]:
    print(f"exported HF checkpoint: {result['export']}")


if __name__ == "__main__":
  app.run(main)

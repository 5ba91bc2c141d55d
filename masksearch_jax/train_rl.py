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

from absl import app

from masksearch_jax.train import entry
from masksearch_jax.train.rl import RLConfig

_FLAGS = entry.define_flags(RLConfig, sys.argv[0] if __name__ == "__main__" else __name__)


def _train(cfg: RLConfig) -> dict:
  from masksearch_jax.train import rl
  return rl.run(cfg)


def main(argv: Sequence[str]) -> None:
  entry.main(argv, _FLAGS, _train, "rl_step")


if __name__ == "__main__":
  app.run(main)

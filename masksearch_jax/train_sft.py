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

from absl import app

from masksearch_jax.train import entry
from masksearch_jax.train.config import TrainConfig

_FLAGS = entry.define_flags(TrainConfig, sys.argv[0] if __name__ == "__main__" else __name__)


def _train(cfg: TrainConfig) -> dict:
  from masksearch_jax.train import sft
  return sft.train(cfg)


def main(argv: Sequence[str]) -> None:
  entry.main(argv, _FLAGS, _train, "step")


if __name__ == "__main__":
  app.run(main)

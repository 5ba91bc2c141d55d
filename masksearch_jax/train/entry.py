"""What the training entry points (`train_sft`, `train_rl`) share: their file / export /
multi-host flags and the start-up order.

The order matters: the config is read first (pure), then the GPU memory share is set and
`jax.distributed` started — both must precede anything that starts JAX's backend — and only then
does the run (or an export of a saved step) touch devices. One module, so that the two entry
points cannot drift apart (they had: `train_rl --export_step` imported `train_sft`, whose flags
then collided with its own).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from absl import app, flags, logging

from masksearch_jax.train import config as config_lib


@dataclasses.dataclass(frozen=True)
class EntryFlags:
  config: flags.FlagHolder
  overlay: flags.FlagHolder
  export_step: flags.FlagHolder
  export_dir: flags.FlagHolder
  coordinator: flags.FlagHolder
  cls: type


def define_flags(cls: type, module_name: str) -> EntryFlags:
  """The shared flags plus one flag per `cls` field (config.define_flags)."""
  kw = {"module_name": module_name}
  out = EntryFlags(
      config=flags.DEFINE_string("config", "", "Base config file (python CONFIG dict or JSON).", **kw),
      overlay=flags.DEFINE_list("overlay", [], "More config files, applied in order after --config.",
                                **kw),
      export_step=flags.DEFINE_string("export_step", None, "Export this saved step ('latest' or a "
                                      "number) to HF format and exit.", **kw),
      export_dir=flags.DEFINE_string("export_dir", None, "Where --export_step writes (default "
                                     "WORKDIR/hf_step<N>).", **kw),
      coordinator=flags.DEFINE_string("coordinator_address", None, "Multi-host: coordinator "
                                      "host:port (else auto-detected).", **kw),
      cls=cls)
  config_lib.define_flags(cls=cls, module_name=module_name)
  return out


def start(f: EntryFlags) -> Any:
  """Config (defaults < files < flags), GPU memory share, jax.distributed — in this order."""
  from masksearch_jax.parallel import distributed
  cfg = config_lib.load_config(f.config.value, *f.overlay.value, cls=f.cls,
                               **config_lib.flag_overrides(cls=f.cls))
  distributed.set_gpu_memory_fraction(cfg.gpu_memory_fraction)   # before the backend starts
  distributed.maybe_initialize(coordinator_address=f.coordinator.value)
  return cfg


def export_saved(cfg: config_lib.TrainConfig, step: str, out_dir: str | None) -> str:
  """Restores a saved checkpoint's params onto this host's devices and writes a HF directory."""
  from masksearch_jax import tokenizer as tok_lib
  from masksearch_jax.train import sft, trainer
  tok_path = sft.tokenizer_dir(cfg)
  mcfg = sft.resolve_model(cfg, tok_lib.load(tok_path) if tok_path else None)
  step_arg = step if step == "latest" else int(step)
  return str(trainer.export_checkpoint(cfg, mcfg, step_arg, out_dir, tok_path))


def main(argv: Sequence[str], f: EntryFlags, train: Callable[[Any], dict], step_key: str) -> None:
  """An entry point's whole `main`: start, then export a saved step or train (and export)."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cfg = start(f)
  if f.export_step.value:
    print(export_saved(cfg, f.export_step.value, f.export_dir.value))
    return
  result = train(cfg)
  logging.info("done at %s %d; last metrics %s", step_key, result[step_key], result["metrics"])
  if result["export"]:
    print(f"exported HF checkpoint: {result['export']}")

"""Run configuration: one frozen dataclass, layered from config files and absl flags.

Layers, later wins:  dataclass defaults < model file < base file < overlay files < flags.
A config file is a python module defining `CONFIG = dict(...)` or a JSON object; keys are field
names (optimizer fields may be given flat, `learning_rate=...`, or nested, `optim={...}`).
`--model=NAME` first looks for `configs/models/NAME.{py,json}` (whose `model` key then names a
preset or HF directory), then for a preset / HF directory (`model.config.get_config`).

Every field is also an absl flag of the same name (`define_flags`), defined as a string that
defaults to None, so only flags actually given override the files; values are parsed by the
field's type (`1,2,3` for tuples, `none` for optional fields, `true/false` for bools).
"""
from __future__ import annotations

import dataclasses
import json
import math
import runpy
import typing
from pathlib import Path
from typing import Any, Mapping

from masksearch_jax.train.optim import OptimConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
CURRICULA = ("mix", "steps", "loss")
# fused: SFT cross-entropy whose gradient is made chunk by chunk in the forward pass (DAPO's
# token log-probs, which need a backward through a ratio, take the chunked path for it).
LOSS_IMPLS = ("chunked", "fused", "full")
_CURRICULUM_ALIASES = {"true": "steps", "false": "mix", "none": "mix", "random": "mix"}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  # ---- model
  model: str = "tiny"                  # preset ('tiny', '0.5b', 'qwen2_5_1_5b'), HF dir, or configs/models name
  model_overrides: str = ""            # "num_layers=2,hidden_size=128": shape changes on a preset
  init_from_hf: str = ""               # HF checkpoint dir to start from ('' = random init)
  init_from: str = ""                  # a previous run's workdir (its latest checkpoint's params) or HF dir
  tokenizer: str = ""                  # HF tokenizer dir ('' = init_from_hf's); unused for pre-tokenized data
  vocab_size: int = 0                  # random init only: 0 = the preset's, raised to fit the tokenizer
  param_dtype: str = "float32"         # master weights and optimizer state
  compute_dtype: str = "bfloat16"      # matmuls
  attn_impl: str = "xla"               # xla | jax | cudnn
  remat: str = "none"                  # qwen2.REMAT_POLICIES: none | full | dots | dots_no_batch | dots_attn[_norm|_acts]
  scan_layers: bool = True            # lax.scan over layers (fast compiles) or unrolled (no copies
                                      # of saved residuals into stacked buffers: 1.5B SFT on an H200
                                      # 51.0% -> 53.2% MFU; the gpu1 slice sets False)
  # ---- parallelism and batch
  mesh: str = "data=1,fsdp=-1,tensor=1"  # axis sizes over all devices; one -1 fills the rest
  gpu_memory_fraction: float = 0.0     # share of each GPU's memory JAX may take, set before the
                                       # backend starts (0 = JAX's 0.75; the h200 slice: 0.95)
  batch_size: int = 8                  # global rows per update (all hosts, all micro-batches)
  micro_batches: int = 1               # gradient accumulation steps per update
  seq_len: int = 1024                 # packed row length
  # ---- schedule
  steps: int = 100                    # optimizer updates in total (a resumed run continues)
  optim: OptimConfig = OptimConfig()   # total_steps defaults to `steps` (see load_config)
  seed: int = 0                       # weights init and data order
  # ---- outputs
  workdir: str = "runs/sft"           # checkpoints/, metrics.jsonl, TensorBoard events, hf/
  save_every: int = 100               # steps between checkpoints (the last step always saves)
  keep_checkpoints: int = 3           # finished checkpoints kept on disk
  async_checkpoint: bool = True       # write checkpoints in the background
  log_every: int = 10                  # console line every N steps (JSONL + TensorBoard every step)
  export_hf_at_end: bool = True        # write WORKDIR/hf (weights + tokenizer) when the run ends
  export_dtype: str = "bfloat16"      # dtype of the HF export
  # ---- data
  data: tuple[str, ...] = ()           # JSONL/ArrayRecord: traces, RAMP records or pre-tokenized rows
  max_examples: int = 0                # use only the first N records (0 = all)
  num_epochs: int = 0                  # 0 = repeat forever
  shuffle: bool = True                # a new seeded order each epoch
  pack_window: int = 64                # examples packed together (first fit); 1 = one per row,
                                       # which lets attention use the causal-only fast path
  # ---- curriculum by mask count (RAMP records carry `mask_num`)
  curriculum: str = "mix"              # mix (random mix) | steps | loss  ('true'=steps, 'false'=mix)
  curriculum_stages: tuple[int, ...] = (1, 2, 3, 4)  # mask counts, one stage each, in order
  curriculum_stage_steps: int = 0      # steps mode: steps per stage (0 = steps // number of stages)
  curriculum_loss_threshold: float = 1.0  # loss mode: advance when the windowed mean loss is below
  curriculum_window: int = 20          # loss mode: steps averaged
  curriculum_max_stage_steps: int = 0  # loss mode: advance anyway after this many steps (0 = never)
  # ---- loss
  # fused: gradient made chunk by chunk in the forward pass (1.5B SFT on an H200: 48.6% MFU and
  # 18 GiB less than chunked's 47.4%; benchmarks/RESULTS.md) | chunked (from hidden states, no
  # full logits; backward reads the saved logits) | full (materialised [B, T, V] logits)
  loss_impl: str = "fused"
  token_chunk: int = 4096             # chunked / fused loss: tokens per chunk (8192: +1.7 points
                                      # of MFU on one H200, ~12 GB of chunk temporaries)
  logits_dtype: str = "float32"        # fused: what the unembedding product stores (float32 |
                                       # bfloat16: f32 softmax over bf16-rounded logits, as
                                       # transformers and MaxText train; fewer bytes per pass)
  loss_lse_impl: str = "xla"           # fused: log-sum-exp + argmax by xla | pallas (one read of
                                       # the logits, train/lse_kernel.py; +0.2 MFU points, 1 GPU)
  vocab_chunk: int = 0                 # chunked: vocab per chunk, 0 = all (fastest measured on H100)
  accuracy: bool = True                # next-token accuracy on loss tokens (fused: free; chunked:
                                       # one extra forward matmul)

  def replace(self, **kw) -> "TrainConfig":
    return dataclasses.replace(self, **kw)


# ------------------------------------------------------------------------------ value parsing
def _fields(cls) -> dict[str, tuple[Any, Any]]:
  """name -> (type, default) over cls and its nested dataclass fields (flattened)."""
  hints = typing.get_type_hints(cls)
  out = {}
  for f in dataclasses.fields(cls):
    t = hints[f.name]
    if dataclasses.is_dataclass(t):
      for name, sub in _fields(t).items():
        out[name] = sub
    else:
      out[f.name] = (t, f.default)
  return out


def _nested(cls) -> set[str]:
  """Names of the nested dataclass fields at any depth (optim, reward, reward.protocol, ...)."""
  hints = typing.get_type_hints(cls)
  out = set()
  for f in dataclasses.fields(cls):
    if dataclasses.is_dataclass(hints[f.name]):
      out |= {f.name} | _nested(hints[f.name])
  return out


def parse_value(name: str, typ: Any, value: Any) -> Any:
  """A flag string (or a file's value) -> the field's type; errors name the field."""
  origin, args = typing.get_origin(typ), typing.get_args(typ)
  if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
    inner = [a for a in args if a is not type(None)]
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "")):
      return None
    return parse_value(name, inner[0], value)
  try:
    if origin is tuple:
      items = value.split(",") if isinstance(value, str) else list(value)
      items = [x.strip() if isinstance(x, str) else x for x in items]
      return tuple(args[0](x) for x in items if x != "")
    if typ is bool:
      if isinstance(value, str):
        low = value.strip().lower()
        if low not in ("true", "false", "1", "0", "yes", "no"):
          raise ValueError(f"not a boolean: {value!r}")
        return low in ("true", "1", "yes")
      return bool(value)
    if typ is int and isinstance(value, float) and not value.is_integer():
      raise ValueError(f"not an integer: {value!r}")
    return typ(value)
  except (TypeError, ValueError) as e:
    raise ValueError(f"config field {name}: cannot read {value!r} as {typ}: {e}") from None


# ------------------------------------------------------------------------------ files and layers
def read_config_file(path: str | Path) -> dict[str, Any]:
  """A `.py` module's CONFIG dict or a `.json` object."""
  p = Path(path)
  if not p.exists():
    raise FileNotFoundError(f"config file {p} does not exist")
  if p.suffix == ".json":
    d = json.loads(p.read_text())
  else:
    d = runpy.run_path(str(p)).get("CONFIG")
  if not isinstance(d, dict):
    raise ValueError(f"config file {p}: expected a CONFIG dict (python) or a JSON object")
  return d


def model_file(name: str) -> Path | None:
  for suffix in (".py", ".json"):
    p = CONFIG_DIR / "models" / f"{name}{suffix}"
    if name and "/" not in name and p.exists():
      return p
  return None


def _flatten(d: Mapping[str, Any], cls, source: str) -> dict[str, Any]:
  """Nested dicts (optim={...}) flattened; unknown keys rejected with their source."""
  known, nested = _fields(cls), _nested(cls)
  out = {}
  for k, v in d.items():
    if k in nested and isinstance(v, Mapping):
      out.update(_flatten(v, cls, source))
    elif dataclasses.is_dataclass(v) and not isinstance(v, type):
      out.update({f.name: getattr(v, f.name) for f in dataclasses.fields(v)})
    elif k in known:
      out[k] = v
    else:
      raise ValueError(f"{source}: unknown config field {k!r}")
  return out


def build_config(values: Mapping[str, Any], cls=None):
  """Flat {field: value} -> cls, every value parsed by type. Nested dataclasses (at any depth, e.g.
  RLConfig.reward.protocol) are rebuilt from their field's own default (RLConfig's optim default
  differs from OptimConfig()), with the given sub-fields replaced."""
  cls = cls or TrainConfig
  known = _fields(cls)
  parsed = {k: parse_value(k, known[k][0], v) for k, v in values.items()}
  return _rebuild(cls, None, parsed)


def _rebuild(cls, base, parsed: Mapping[str, Any]):
  hints = typing.get_type_hints(cls)
  kw = {}
  for f in dataclasses.fields(cls):
    t = hints[f.name]
    if dataclasses.is_dataclass(t):
      names = set(_fields(t))
      sub = {k: v for k, v in parsed.items() if k in names}
      default = getattr(base, f.name) if base is not None else (
          f.default if f.default is not dataclasses.MISSING else t())
      kw[f.name] = _rebuild(t, default, sub) if sub else default
    elif f.name in parsed:
      kw[f.name] = parsed[f.name]
  if base is not None:
    return dataclasses.replace(base, **kw)
  return cls(**kw)


def load_config(base: str = "", *overlay_files: str, cls=None, **flag_overrides):
  """defaults < configs/models file of `model` < base < overlays < flag_overrides.

  `flag_overrides` values may be strings (parsed by type); None values are ignored. An optimizer
  `total_steps` not given anywhere follows `steps`.
  """
  cls = cls or TrainConfig
  explicit: dict[str, Any] = {}
  for path in [p for p in (base, *overlay_files) if p]:
    explicit.update(_flatten(read_config_file(path), cls, str(path)))
  explicit.update(_flatten({k: v for k, v in flag_overrides.items() if v is not None}, cls,
                           "flags"))
  values: dict[str, Any] = {}
  model = explicit.get("model")
  mf = model_file(str(model)) if model is not None else None
  if mf is not None:
    values.update(_flatten(read_config_file(mf), cls, str(mf)))
    explicit.pop("model")
  values.update(explicit)
  if "total_steps" in _fields(cls) and "total_steps" not in values and "steps" in values:
    values["total_steps"] = values["steps"]
  return build_config(values, cls)


def _field_comments(cls) -> dict[str, str]:
  """`name: type = default  # comment` -> {name: comment}, over the class, its bases and nested
  dataclasses (the comments are the flags' help)."""
  import inspect
  import re
  out: dict[str, str] = {}
  hints = typing.get_type_hints(cls)
  classes = [c for c in cls.__mro__ if dataclasses.is_dataclass(c)]
  classes += [t for t in hints.values() if dataclasses.is_dataclass(t)]
  for c in classes:
    try:
      src = inspect.getsource(c)
    except (OSError, TypeError):
      continue
    for m in re.finditer(r"^\s+(\w+):[^#\n]*#\s*(.+)$", src, re.M):
      out.setdefault(m.group(1), m.group(2).strip())
  return out


def define_flags(cls=None, flag_values=None, module_name: str | None = None) -> None:
  """One absl string flag per (flattened) field, default None = not given. `module_name`
  (the entry point's: `sys.argv[0]` when run as __main__) makes `--help` list them."""
  from absl import flags
  cls = cls or TrainConfig
  fv = flags.FLAGS if flag_values is None else flag_values
  comments = _field_comments(cls)
  for name, (typ, default) in _fields(cls).items():
    if name not in fv:
      shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
      tname = typ.__name__ if isinstance(typ, type) else str(typ)
      note = f"{comments[name]} " if name in comments else ""
      kw = {"module_name": module_name} if module_name else {}
      flags.DEFINE_string(name, None, f"{note}[{tname}; default {shown!r}]", flag_values=fv, **kw)


def flag_overrides(cls=None, flag_values=None) -> dict[str, str]:
  """The flags given on the command line, as {field: string}."""
  from absl import flags
  fv = flags.FLAGS if flag_values is None else flag_values
  return {n: fv[n].value for n in _fields(cls or TrainConfig) if fv[n].value is not None}


# ------------------------------------------------------------------------------ validation
def model_config(cfg: TrainConfig):
  """The Qwen2Config this run trains (preset or HF dir, plus model_overrides / vocab_size)."""
  from masksearch_jax.model.config import Qwen2Config, get_config
  m = get_config(cfg.model)
  over = {}
  hints = typing.get_type_hints(Qwen2Config)
  for item in filter(None, (s.strip() for s in cfg.model_overrides.split(","))):
    if "=" not in item:
      raise ValueError(f"model_overrides={cfg.model_overrides!r}: expected key=value items")
    k, v = (s.strip() for s in item.split("=", 1))
    if k not in hints:
      raise ValueError(f"model_overrides: unknown Qwen2Config field {k!r}")
    over[k] = parse_value(f"model_overrides.{k}", hints[k], v)
  if cfg.vocab_size:
    over["vocab_size"] = cfg.vocab_size
  return m.replace(**over) if over else m


def validate(cfg: TrainConfig, num_devices: int | None = None) -> None:
  """Raises one ValueError listing every invalid field or combination (by field name)."""
  from masksearch_jax.model import attention, qwen2
  from masksearch_jax.parallel import mesh as mesh_lib
  errors = []
  try:
    mcfg = model_config(cfg)
  except (ValueError, FileNotFoundError) as e:
    errors.append(f"model={cfg.model!r} / model_overrides={cfg.model_overrides!r}: {e}")
    mcfg = None
  for name in ("param_dtype", "compute_dtype", "export_dtype"):
    if getattr(cfg, name) not in ("float32", "bfloat16", "float16"):
      errors.append(f"{name}={getattr(cfg, name)!r} (float32 | bfloat16 | float16)")
  if cfg.attn_impl not in attention.IMPLEMENTATIONS:
    errors.append(f"attn_impl={cfg.attn_impl!r} (one of {attention.IMPLEMENTATIONS})")
  if cfg.remat not in qwen2.REMAT_POLICIES:
    errors.append(f"remat={cfg.remat!r} (one of {sorted(qwen2.REMAT_POLICIES)})")
  for name in ("batch_size", "micro_batches", "seq_len", "steps", "save_every", "keep_checkpoints",
               "log_every", "pack_window", "token_chunk"):
    if getattr(cfg, name) <= 0:
      errors.append(f"{name}={getattr(cfg, name)} must be positive")
  if not 0.0 <= cfg.gpu_memory_fraction <= 1.0:
    errors.append(f"gpu_memory_fraction={cfg.gpu_memory_fraction} must be in [0, 1] (0 = JAX's default)")
  if cfg.micro_batches > 0 and cfg.batch_size % cfg.micro_batches:
    errors.append(f"micro_batches={cfg.micro_batches} does not divide batch_size={cfg.batch_size}")
  if num_devices is not None:
    try:
      data, fsdp, tensor = mesh_lib.resolve_shape(cfg.mesh, num_devices)
      rows = cfg.batch_size // max(cfg.micro_batches, 1)
      if rows % (data * fsdp):
        errors.append(f"batch_size={cfg.batch_size} / micro_batches={cfg.micro_batches} = {rows} "
                      f"rows per micro-batch is not divisible by the data-parallel size "
                      f"{data * fsdp} (mesh={cfg.mesh!r}: data={data} x fsdp={fsdp})")
      if mcfg is not None and mcfg.num_heads % tensor:
        errors.append(f"mesh={cfg.mesh!r}: tensor={tensor} does not divide num_heads="
                      f"{mcfg.num_heads} of model={cfg.model!r}")
    except ValueError as e:
      errors.append(f"mesh={cfg.mesh!r}: {e}")
  curriculum = _CURRICULUM_ALIASES.get(cfg.curriculum.lower(), cfg.curriculum.lower())
  if curriculum not in CURRICULA:
    errors.append(f"curriculum={cfg.curriculum!r} (one of {CURRICULA}, or true/false)")
  if curriculum != "mix" and not cfg.curriculum_stages:
    errors.append(f"curriculum={cfg.curriculum!r} needs curriculum_stages")
  if cfg.loss_impl not in LOSS_IMPLS:
    errors.append(f"loss_impl={cfg.loss_impl!r} ({' | '.join(LOSS_IMPLS)})")
  if cfg.loss_lse_impl not in ("xla", "pallas"):
    errors.append(f"loss_lse_impl={cfg.loss_lse_impl!r} (xla | pallas)")
  elif cfg.loss_lse_impl == "pallas" and (cfg.loss_impl != "fused" or (num_devices or 1) > 1):
    errors.append(f"loss_lse_impl='pallas' needs loss_impl='fused' and one device (the kernel "
                  f"is not partitioned; got loss_impl={cfg.loss_impl!r}, {num_devices} devices)")
  if cfg.logits_dtype not in ("float32", "bfloat16"):
    errors.append(f"logits_dtype={cfg.logits_dtype!r} (float32 | bfloat16)")
  elif cfg.logits_dtype != "float32" and cfg.loss_impl != "fused":
    errors.append(f"logits_dtype={cfg.logits_dtype!r} needs loss_impl='fused' "
                  f"(got {cfg.loss_impl!r})")
  if cfg.init_from_hf and cfg.init_from not in ("", "none"):
    errors.append(f"init_from_hf={cfg.init_from_hf!r} and init_from={cfg.init_from!r}: give one")
  if mcfg is not None and cfg.seq_len > mcfg.max_position_embeddings:
    errors.append(f"seq_len={cfg.seq_len} exceeds the model's max_position_embeddings="
                  f"{mcfg.max_position_embeddings}")
  if errors:
    raise ValueError("invalid training config:\n  " + "\n  ".join(errors))


def curriculum_mode(cfg: TrainConfig) -> str:
  return _CURRICULUM_ALIASES.get(cfg.curriculum.lower(), cfg.curriculum.lower())


def round_up(n: int, multiple: int) -> int:
  return int(math.ceil(n / multiple) * multiple)

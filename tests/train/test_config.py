"""TrainConfig layering (defaults < model file < base < overlays < flags), typed flag parsing,
start-up validation that names the fields, and every shipped config file."""
import json
from pathlib import Path

import pytest
from absl import flags

from masksearch_jax.train import config as config_lib
from masksearch_jax.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def test_layers_later_wins(tmp_path):
  base = tmp_path / "base.py"
  base.write_text("CONFIG = dict(batch_size=16, seq_len=256, steps=50, "
                  "optim=dict(learning_rate=1e-4, warmup_steps=5))\n")
  overlay = tmp_path / "over.json"
  overlay.write_text(json.dumps({"seq_len": 512, "learning_rate": 2e-4, "data": ["a.jsonl"]}))
  cfg = config_lib.load_config(str(base), str(overlay), steps="70", mesh=None,
                               curriculum_stages="1,3")
  assert (cfg.batch_size, cfg.seq_len, cfg.steps) == (16, 512, 70)
  assert cfg.optim.learning_rate == 2e-4 and cfg.optim.warmup_steps == 5
  assert cfg.optim.total_steps == 70              # follows steps unless given
  assert cfg.mesh == TrainConfig().mesh           # None = flag not given
  assert cfg.data == ("a.jsonl",) and cfg.curriculum_stages == (1, 3)
  assert config_lib.load_config("", steps=10, total_steps=40).optim.total_steps == 40


def test_model_file_sits_under_explicit_settings(tmp_path):
  cfg = config_lib.load_config("", model="tiny_2l", seq_len=64)
  assert cfg.model == "tiny" and "num_layers=2" in cfg.model_overrides
  m = config_lib.model_config(cfg)
  assert (m.num_layers, m.hidden_size, m.num_heads) == (2, 256, 8)
  # A model file's own settings yield to explicit ones.
  assert config_lib.load_config("", model="7b").remat == "full"
  assert config_lib.load_config("", model="7b", remat="dots").remat == "dots"
  assert config_lib.load_config("", model="0.5b").model == "0.5b"   # a preset alias: no file


def test_typed_parsing_and_errors(tmp_path):
  cfg = config_lib.load_config("", accuracy="false", max_grad_norm="none", learning_rate="3e-4",
                               data="a.jsonl, b.jsonl")
  assert cfg.accuracy is False and cfg.optim.max_grad_norm is None
  assert cfg.optim.learning_rate == 3e-4 and cfg.data == ("a.jsonl", "b.jsonl")
  with pytest.raises(ValueError, match="config field batch_size: cannot read 'eight'"):
    config_lib.load_config("", batch_size="eight")
  with pytest.raises(ValueError, match="config field accuracy"):
    config_lib.load_config("", accuracy="maybe")
  bad = tmp_path / "bad.py"
  bad.write_text("CONFIG = dict(batch_sise=3)\n")
  with pytest.raises(ValueError, match=r"bad.py: unknown config field 'batch_sise'"):
    config_lib.load_config(str(bad))


def test_flags_mirror_fields():
  fv = flags.FlagValues()
  config_lib.define_flags(flag_values=fv)
  fv(["prog", "--batch_size=32", "--learning_rate=1e-3", "--curriculum=true"])
  given = config_lib.flag_overrides(flag_values=fv)
  assert given == {"batch_size": "32", "learning_rate": "1e-3", "curriculum": "true"}
  cfg = config_lib.load_config("", **given)
  assert cfg.batch_size == 32 and cfg.optim.learning_rate == 1e-3
  assert config_lib.curriculum_mode(cfg) == "steps"
  names = set(fv)
  assert {"model", "mesh", "micro_batches", "warmup_steps", "max_grad_norm", "workdir"} <= names


def test_validation_names_the_fields():
  with pytest.raises(ValueError) as e:
    config_lib.validate(TrainConfig(batch_size=12, micro_batches=4, mesh="data=2,fsdp=-1"), 8)
  assert "batch_size=12 / micro_batches=4 = 3 rows" in str(e.value)
  assert "data-parallel size 8" in str(e.value)
  with pytest.raises(ValueError) as e:
    config_lib.validate(TrainConfig(model="qwen9b", batch_size=10, micro_batches=4,
                                    curriculum="sometimes", attn_impl="flash"))
  msg = str(e.value)
  for part in ("model='qwen9b'", "micro_batches=4 does not divide batch_size=10",
               "curriculum='sometimes'", "attn_impl='flash'"):
    assert part in msg
  with pytest.raises(ValueError, match="tensor=8 does not divide num_heads=14"):
    config_lib.validate(TrainConfig(model="0.5b", mesh="data=1,fsdp=1,tensor=8"), 8)
  with pytest.raises(ValueError, match="mesh='data=3'"):
    config_lib.validate(TrainConfig(mesh="data=3"), 8)
  with pytest.raises(ValueError, match="loss_lse_impl='pallas' needs loss_impl='fused' and one"):
    config_lib.validate(TrainConfig(loss_lse_impl="pallas"), 8)
  config_lib.validate(TrainConfig(loss_lse_impl="pallas", mesh="data=1,fsdp=1,tensor=1"), 1)
  with pytest.raises(ValueError, match="logits_dtype='float16'"):
    config_lib.validate(TrainConfig(logits_dtype="float16"), 8)
  with pytest.raises(ValueError, match="logits_dtype='bfloat16' needs loss_impl='fused'"):
    config_lib.validate(TrainConfig(logits_dtype="bfloat16", loss_impl="chunked"), 8)
  with pytest.raises(ValueError, match="gpu_memory_fraction=1.5 must be in"):
    config_lib.validate(TrainConfig(gpu_memory_fraction=1.5), 8)
  config_lib.validate(TrainConfig(batch_size=16, micro_batches=2), 8)   # fine


SLICE_DEVICES = {"cpu": 2, "gpu1": 1, "h200": 1, "v4_8": 4, "v4_32": 16, "v5e_16": 16, "v5p_8": 4}
PARAMS = {"0_5b": 494_032_768, "1_5b": 1_543_714_304, "3b": 3_085_938_688, "7b": 7_615_616_512}


@pytest.mark.parametrize("slice_name", sorted(SLICE_DEVICES))
def test_shipped_slices_validate_with_every_size(slice_name):
  for model in ("tiny", "1_5b", "3b", "7b"):
    cfg = config_lib.load_config(str(ROOT / "configs" / "slices" / f"{slice_name}.py"),
                                 model=model, batch_size=32)
    config_lib.validate(cfg, SLICE_DEVICES[slice_name])


def test_model_files_are_the_published_sizes():
  for name, n in PARAMS.items():     # parameter counts of the Qwen2.5 releases on the HF hub
    assert config_lib.model_config(config_lib.load_config("", model=name)).num_params() == n
  run = config_lib.load_config(str(ROOT / "configs" / "sft_world.py"))
  config_lib.validate(run, 1)
  assert run.optim.total_steps == run.steps


def test_two_level_nested_fields_and_field_defaults():
  """RLConfig.reward.protocol fields are flags too, and a nested config keeps its field's own
  default (RLConfig's optimizer: lr 1e-6, constant) where nothing overrides it."""
  from masksearch_jax.train.rl import RLConfig
  cfg = config_lib.load_config(cls=RLConfig, think_open="<t>", answer_metric="f1")
  assert cfg.reward.protocol.think_open == "<t>" and cfg.reward.answer_metric == "f1"
  assert cfg.reward.protocol.answer_open == "<answer>"
  assert (cfg.optim.learning_rate, cfg.optim.schedule) == (1e-6, "constant")
  cfg = config_lib.load_config(cls=RLConfig, learning_rate=1e-5,
                               reward=dict(protocol=dict(answer_open="<a>")))
  assert (cfg.optim.learning_rate, cfg.optim.schedule, cfg.optim.weight_decay) == (1e-5, "constant", 0.0)
  assert cfg.reward.protocol.answer_open == "<a>"

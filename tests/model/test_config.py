"""Presets carry the official Qwen2.5 shapes; HF config.json (v4 and v5 layouts) round-trips."""
import json

import pytest
import transformers

from masksearch_jax.model import config as mcfg


@pytest.mark.parametrize("name,params_b", [("0.5b", 0.494), ("1.5b", 1.544), ("3b", 3.086),
                                           ("7b", 7.616), ("14b", 14.77), ("32b", 32.76),
                                           ("72b", 72.71)])
def test_presets_have_published_parameter_counts(name, params_b):
  # Published totals (Qwen2.5 model cards / HF safetensors metadata), in billions.
  cfg = mcfg.get_config(name)
  assert abs(cfg.num_params() / 1e9 - params_b) < 0.01 * params_b, cfg.num_params()


def test_vocab_and_tying():
  assert mcfg.get_config("3b").vocab_size == 151936 and mcfg.get_config("3b").tie_embeddings
  assert mcfg.get_config("7b").vocab_size == 152064 and not mcfg.get_config("7b").tie_embeddings


def test_hf_round_trip_and_v5_rope_parameters(tmp_path):
  cfg = mcfg.get_config("1.5b")
  d = cfg.to_hf_dict()
  assert mcfg.Qwen2Config.from_hf_dict(d).replace(name=cfg.name) == cfg
  # transformers v5 writes rope settings nested.
  v5 = transformers.Qwen2Config(**d).to_dict()
  assert mcfg.Qwen2Config.from_hf_dict(v5).rope_theta == 1e6
  d5 = dict(d)
  del d5["rope_theta"]
  d5["rope_parameters"] = {"rope_type": "default", "rope_theta": 5e5}
  (tmp_path / "config.json").write_text(json.dumps(d5))
  assert mcfg.get_config(str(tmp_path)).rope_theta == 5e5


def test_bad_configs_are_rejected():
  with pytest.raises(ValueError, match="unknown model"):
    mcfg.get_config("qwen9_999b")
  with pytest.raises(ValueError, match="num_heads=6 is not a multiple of num_kv_heads=4"):
    mcfg.PRESETS["tiny"].replace(num_heads=6, num_kv_heads=4)
  d = mcfg.get_config("tiny").to_hf_dict()
  d["rope_scaling"] = {"type": "yarn", "factor": 4.0}
  with pytest.raises(ValueError, match="rope scaling"):
    mcfg.Qwen2Config.from_hf_dict(d)

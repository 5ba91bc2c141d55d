"""HF export loads in transformers with equal logits; import round-trips bit-exactly; clear errors."""
import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers

from masksearch_jax.checkpoint import hf, safetensors_io
from masksearch_jax.model import config as mcfg, qwen2
from masksearch_jax.parallel import mesh as pmesh, rules


@pytest.mark.parametrize("name", ["tiny", "tiny_untied"])
def test_export_loads_in_transformers_with_same_logits(tmp_path, name):
  cfg = mcfg.PRESETS[name]
  params = qwen2.init_params(cfg, jax.random.PRNGKey(0), jnp.float32, std=0.1)
  # Small shards force the multi-file layout with an index.
  hf.save_hf(params, cfg, tmp_path, dtype="float32", max_shard_bytes=200_000)
  files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
  assert len(files) > 1 and (tmp_path / "model.safetensors.index.json").exists()
  model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
  names = set(json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"])
  assert ("lm_head.weight" in names) == (not cfg.tie_embeddings)
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 11))
  with torch.no_grad():
    theirs = model(torch.tensor(tokens)).logits.numpy()
  ours, _ = qwen2.apply(params, cfg, jnp.asarray(tokens), compute_dtype=jnp.float32)
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype,jdtype", [("float32", jnp.float32), ("bfloat16", jnp.bfloat16)])
def test_import_round_trips_bit_exactly(tmp_path, dtype, jdtype):
  cfg = mcfg.PRESETS["tiny_untied"]
  params = qwen2.init_params(cfg, jax.random.PRNGKey(1), jdtype, std=0.1)
  hf.save_hf(params, cfg, tmp_path, dtype=dtype)
  cfg2, loaded = hf.load_hf(tmp_path, dtype=jdtype)
  assert cfg2.num_kv_heads == cfg.num_kv_heads and cfg2.tie_embeddings == cfg.tie_embeddings
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_import_into_sharded_mesh_and_tokenizer_copied(tmp_path):
  cfg = mcfg.PRESETS["tiny"]
  params = qwen2.init_params(cfg, jax.random.PRNGKey(2), jnp.float32)
  tok = tmp_path / "tok"
  tok.mkdir()
  (tok / "tokenizer.json").write_text("{}")
  hf.save_hf(params, cfg, tmp_path / "out", dtype="float32", tokenizer_dir=tok)
  assert (tmp_path / "out" / "tokenizer.json").exists()
  mesh = pmesh.make_mesh((2, 2, 2))
  shapes = jax.eval_shape(lambda: params)
  _, loaded = hf.load_hf(tmp_path / "out", shardings=rules.param_shardings(shapes, cfg, mesh))
  assert loaded["layers"]["gate"].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_clear_errors(tmp_path):
  cfg = mcfg.PRESETS["tiny_untied"]
  params = qwen2.init_params(cfg, jax.random.PRNGKey(3), jnp.float32)
  hf.save_hf(params, cfg, tmp_path, dtype="float32")
  f = safetensors_io.SafetensorsFile(tmp_path / "model.safetensors")
  tensors = {k: np.array(f[k]) for k in f.keys()}
  # Missing tensor.
  broken = dict(tensors)
  del broken["model.layers.1.mlp.up_proj.weight"]
  safetensors_io.write_file(tmp_path / "model.safetensors", broken)
  with pytest.raises(KeyError, match="model.layers.1.mlp.up_proj.weight"):
    hf.load_hf(tmp_path)
  # Shape mismatch names tensor and both shapes.
  broken = dict(tensors)
  broken["model.norm.weight"] = np.ones((63,), np.float32)
  safetensors_io.write_file(tmp_path / "model.safetensors", broken)
  with pytest.raises(ValueError, match=r"model.norm.weight.*\(63,\).*\(64,\)"):
    hf.load_hf(tmp_path)
  # Unknown architecture.
  c = json.loads((tmp_path / "config.json").read_text())
  c["model_type"], c["architectures"] = "llama", ["LlamaForCausalLM"]
  (tmp_path / "config.json").write_text(json.dumps(c))
  with pytest.raises(ValueError, match="unknown architecture"):
    hf.load_hf(tmp_path)


def test_bf16_safetensors_readable_by_reference_library(tmp_path):
  from safetensors.torch import load_file
  x = (np.arange(12, dtype=np.float32) / 7).reshape(3, 4).astype(ml_dtypes.bfloat16)
  safetensors_io.write_file(tmp_path / "a.safetensors", {"x": x})
  t = load_file(tmp_path / "a.safetensors")["x"]
  assert t.dtype == torch.bfloat16
  np.testing.assert_array_equal(t.float().numpy(), x.astype(np.float32))

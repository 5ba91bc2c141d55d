"""The L2 prefetch kernel: lowers for CUDA through Mosaic GPU (on this GPU-less machine), is wired
into one-token decode steps only when asked, and changes no result (GPU test)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from masksearch_jax.model import config, kv_cache, l2_prefetch, qwen2

MOSAIC_CALL = "@mosaic_gpu_v2("


def _decode_step(cfg, dl, cache, tok):
  return qwen2.apply(dl, cfg, tok, cache=cache, scan_layers=False)


def _setup(b=2):
  cfg = config.get_config("tiny")
  params = qwen2.init_params(cfg, jax.random.PRNGKey(0), jnp.bfloat16)
  dl = qwen2.decode_layout(params, cfg, jnp.bfloat16, "xla")
  cache = kv_cache.init_cache(cfg, b, 16, jnp.bfloat16, per_layer=True)
  tok = jnp.ones((b, 1), jnp.int32)
  return cfg, dl, cache, tok


def test_kernel_lowers_for_cuda():
  w = jax.ShapeDtypeStruct((1536, 17920), jnp.bfloat16)
  h = jax.ShapeDtypeStruct((2, 1, 1536), jnp.bfloat16)
  exp = export.export(jax.jit(lambda w, h: l2_prefetch.prefetch_rows(w, 512, h)),
                      platforms=["cuda"])(w, h)
  assert exp.mlir_module().count(MOSAIC_CALL) == 1
  assert exp.out_avals[0].shape == () and exp.out_avals[0].dtype == jnp.float32


def test_rejects_rows_that_do_not_tile():
  w = jnp.zeros((1536, 17920), jnp.bfloat16)
  with pytest.raises(ValueError, match="multiple"):
    l2_prefetch.prefetch_rows(w, 300, w[:1])
  with pytest.raises(ValueError, match="multiple"):
    l2_prefetch.prefetch_rows(jnp.zeros((512, 300), jnp.bfloat16), 256, w[:1])


@pytest.mark.parametrize("setting,calls", [({}, 0), ({"gate_up": 64}, 2),
                                           ({"gate_up": 64, "down": 128}, 4)])
def test_decode_step_gets_one_kernel_per_layer_and_weight(monkeypatch, setting, calls):
  cfg, dl, cache, tok = _setup()
  monkeypatch.setattr(qwen2, "DECODE_PREFETCH", setting)
  monkeypatch.setattr(l2_prefetch, "available", lambda: True)
  fn = lambda dl, cache, tok: _decode_step(cfg, dl, cache, tok)
  exp = export.export(jax.jit(fn), platforms=["cuda"])(dl, cache, tok)
  assert exp.mlir_module().count(MOSAIC_CALL) == calls


def test_prefill_chunks_get_no_prefetch(monkeypatch):
  cfg, dl, cache, _ = _setup()
  monkeypatch.setattr(qwen2, "DECODE_PREFETCH", {"gate_up": 64})
  monkeypatch.setattr(l2_prefetch, "available", lambda: True)
  fn = lambda dl, cache, tok: _decode_step(cfg, dl, cache, tok)
  exp = export.export(jax.jit(fn), platforms=["cuda"])(dl, cache, jnp.ones((2, 4), jnp.int32))
  assert exp.mlir_module().count(MOSAIC_CALL) == 0


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="Mosaic GPU kernels need a GPU")
def test_gpu_decode_step_unchanged(monkeypatch):
  cfg, dl, cache, tok = _setup()
  want, _ = jax.jit(lambda *a: _decode_step(cfg, *a))(dl, cache, tok)
  monkeypatch.setattr(qwen2, "DECODE_PREFETCH", {"gate_up": 64, "down": 128})
  got, _ = jax.jit(lambda *a: _decode_step(cfg, *a))(dl, cache, tok)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

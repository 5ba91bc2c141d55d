"""All attention implementations available on this backend agree with the einsum reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from masksearch_jax.model import attention, config as mcfg, qwen2


def _available():
  impls = ["xla", "jax", "pallas"]      # pallas without a cache: cuDNN on a GPU, XLA elsewhere
  if jax.default_backend() == "gpu":
    impls.append("cudnn")
  return impls


@pytest.mark.parametrize("impl", _available())
@pytest.mark.parametrize("packed", [False, True])
def test_implementations_agree(impl, packed):
  cfg = mcfg.PRESETS["tiny"]
  params = qwen2.init_params(cfg, jax.random.PRNGKey(0), jnp.float32, std=0.1)
  gpu = jax.default_backend() == "gpu"
  dtype = jnp.bfloat16 if impl == "cudnn" or (impl == "pallas" and gpu) else jnp.float32
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 16)))
  kw = {}
  if packed:
    kw["segment_ids"] = jnp.asarray([[1] * 6 + [2] * 8 + [0] * 2, [1] * 16])
    kw["positions"] = jnp.asarray([list(range(6)) + list(range(8)) + [0, 0], list(range(16))])
  ref, _ = qwen2.apply(params, cfg, tokens, attn_impl="xla", compute_dtype=jnp.float32, **kw)
  out, _ = qwen2.apply(params, cfg, tokens, attn_impl=impl, compute_dtype=dtype, **kw)
  valid = np.asarray(kw.get("segment_ids", jnp.ones((2, 16)))) != 0
  ref, out = np.asarray(ref)[valid], np.asarray(out)[valid]
  # Against the float32 einsum reference: float32 paths agree to rounding, bf16 ones to bf16's
  # ~3 significant digits (relative error of the whole logits tensor).
  rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
  assert rel < (2e-2 if dtype == jnp.bfloat16 else 1e-6), rel


def test_unknown_implementation_is_rejected():
  q = jnp.zeros((1, 2, 2, 4))
  with pytest.raises(ValueError, match="unknown attention implementation"):
    attention.attend(q, q, q, jnp.ones((1, 2, 2), bool), impl="flash9")


def test_pallas_runs_chunks_through_cudnn_on_gpus_in_half_precision(monkeypatch):
  """impl "pallas" only changes one-token decode; its multi-token chunks take cuDNN where that
  kernel runs (a GPU, bf16/f16 operands) and XLA's attention elsewhere."""
  q16, q32 = jnp.zeros((1, 2, 2, 8), jnp.bfloat16), jnp.zeros((1, 2, 2, 8), jnp.float32)
  assert not attention._cudnn_chunks(q16) or jax.default_backend() == "gpu"
  monkeypatch.setattr(attention.jax, "default_backend", lambda: "gpu")
  assert attention._cudnn_chunks(q16) and attention._cudnn_chunks(q16.astype(jnp.float16))
  assert not attention._cudnn_chunks(q32)
  monkeypatch.setattr(attention.jax, "default_backend", lambda: "tpu")
  assert not attention._cudnn_chunks(q16)


def _one_token(dtype=jnp.bfloat16):
  rng = np.random.default_rng(3)
  q = jnp.asarray(rng.normal(size=(2, 1, 4, 16)), dtype)                 # [B, 1, H, Dh]
  k, v = (jnp.asarray(rng.normal(size=(2, 40, 2, 16)), dtype) for _ in range(2))
  mask = jnp.arange(40)[None, None, :] < jnp.asarray([17, 40])[:, None, None]   # [B, 1, S]
  return q, k, v, mask


def test_one_token_queries_run_xla_not_cudnn(monkeypatch):
  """A decode step's single query never goes to cuDNN (CUDNN_ONE_TOKEN off): on an H200 its
  one-token kernel did not repeat run to run. impl "cudnn", and impl "pallas" where it would hand
  the step to cuDNN, give attend_xla's result exactly; with the setting on, the same calls do try
  cuDNN (which this CPU lacks), so the routing is what kept it out."""
  q, k, v, mask = _one_token()
  ref = attention.attend_xla(q, k, v, mask)
  np.testing.assert_array_equal(attention.attend(q, k, v, mask, impl="cudnn"), ref)
  monkeypatch.setattr(attention.jax, "default_backend", lambda: "gpu")   # pallas -> cuDNN chunks
  np.testing.assert_array_equal(attention.attend(q, k, v, mask, impl="pallas"), ref)
  if jax.devices()[0].platform == "gpu":
    return
  monkeypatch.setattr(attention, "CUDNN_ONE_TOKEN", True)
  for impl in ("cudnn", "pallas"):
    with pytest.raises(Exception, match="[cC]u[dD][nN][nN]"):
      attention.attend(q, k, v, mask, impl=impl)

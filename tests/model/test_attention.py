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

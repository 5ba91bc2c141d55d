"""Attention kernels behind one signature, so the model never branches on hardware.

All implementations take q [B, T, H, Dh], k/v [B, S, K, Dh] (K divides H: grouped-query attention)
and a boolean mask [B, T, S] (True = may attend), and return [B, T, H, Dh] in q's dtype with the
softmax computed in float32.
  - "xla":   plain einsum + f32 softmax; runs everywhere, the reference.
  - "jax":   `jax.nn.dot_product_attention`, letting JAX pick (XLA on CPU/TPU).
  - "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`, the fused GPU kernel.
  - "pallas": one-token decode steps against the KV cache run the one-kernel Pallas decode
    attention (`attend_decode`, model/decode_attention.py); longer chunks (prefill, splices) run
    cuDNN's fused kernel on GPUs in bf16/f16 and "xla" elsewhere: a sampler setting.
`causal_only=True` promises that the mask is exactly the causal one (no padding, no packing,
no cache), which lets the fused kernels skip reading a mask at all.

Under a context mesh (`parallel.mesh.under_mesh`, set by the trainers and the sampler) the fused
kernels run per shard inside `shard_map` (rows over the data/FSDP axes, heads over `tensor`):
attention never mixes rows or heads, and cuDNN's own SPMD partitioner fails on FSDP-sharded
batches with a mask (jax 0.11.2, two H100s: `INTERNAL: custom_partitioner`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from masksearch_jax.model import cache_append, decode_attention

IMPLEMENTATIONS = ("xla", "jax", "cudnn", "pallas")
_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)


def attend_xla(q, k, v, mask):
  b, t, h, dh = q.shape
  kh = k.shape[2]
  g = h // kh
  q = q.reshape(b, t, kh, g, dh)
  scale = dh ** -0.5
  # [B, K, G, T, S] scores in f32 whatever the operand dtype.
  s = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * scale
  s = jnp.where(mask[:, None, None, :, :], s, _NEG)
  p = jax.nn.softmax(s, axis=-1)
  o = jnp.einsum("bkgts,bskd->btkgd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return o.reshape(b, t, h, dh).astype(q.dtype)


def _fused(q, k, v, mask, implementation, causal_only):
  if causal_only:
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)
  return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, :, :],
                                      implementation=implementation)


def shard_specs(mesh, batch: int, heads: int, kv_heads: int) -> tuple[P, P] | None:
  """(q/k/v/out spec, mask spec) splitting rows over the mesh's batch axes (data, fsdp) and heads
  over `tensor`, each only where it divides; None when nothing is split (no mesh, one device)."""
  if mesh is None or mesh.empty:
    return None
  size = lambda a: mesh.shape[a] if a in mesh.axis_names else 1
  rows = tuple(a for a in ("data", "fsdp") if size(a) > 1)
  n_rows = 1
  for a in rows:
    n_rows *= size(a)
  rows = rows if rows and batch % n_rows == 0 else ()
  t = size("tensor")
  head = "tensor" if t > 1 and heads % t == 0 and kv_heads % t == 0 else None
  if not rows and head is None:
    return None
  r = rows or None
  return P(r, None, head, None), P(r, None, None)


def _per_shard(fn, q, k, v, extra, *, extra_is_mask: bool):
  """fn(q, k, v, extra) inside shard_map under the context mesh (see shard_specs), else direct.
  `extra` is the [B, T, S] mask, or per-row lengths [B]."""
  mesh = jax.sharding.get_abstract_mesh()
  specs = shard_specs(mesh, q.shape[0], q.shape[2], k.shape[2])
  if specs is None:
    return fn(q, k, v, extra)
  qkv, mask_spec = specs
  extra_spec = mask_spec if extra_is_mask else P(qkv[0])
  return jax.shard_map(fn, mesh=mesh, in_specs=(qkv, qkv, qkv, extra_spec),
                       out_specs=qkv, check_vma=False)(q, k, v, extra)


# One-token queries (a decode step) through cuDNN's fused kernel. Off: they run "xla". Measured
# on an H200 (1.5B, 64 rows, session 25, benchmarks/RESULTS.md): with cuDNN's one-token kernel two
# identical greedy generations parted at the first decode steps on 54-63 of 64 rows (one step's
# logits 0.03-0.09 apart run to run), while the same prefill through cuDNN repeated bit for bit;
# through XLA every run repeats, at 27.5-27.6k against 29.3k tok/s. impl "pallas" (its own decode
# kernel, also repeatable) is the fast path for sampling.
CUDNN_ONE_TOKEN = False


def attend(q, k, v, mask, *, impl: str = "xla", causal_only: bool = False):
  """q [B, T, H, Dh], k/v [B, S, K, Dh], mask [B, T, S] bool -> [B, T, H, Dh]."""
  if impl == "pallas":                       # one-token decode: attend_decode's kernels
    impl = "cudnn" if _cudnn_chunks(q) else "xla"
  if impl in ("cudnn", "jax") and q.shape[1] == 1 and not CUDNN_ONE_TOKEN:
    impl = "xla"                             # see CUDNN_ONE_TOKEN
  if impl == "xla":
    return attend_xla(q, k, v, mask)
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"unknown attention implementation {impl!r}; choose from {IMPLEMENTATIONS}")
  implementation = "cudnn" if impl == "cudnn" else None
  fn = lambda q, k, v, m: _fused(q, k, v, m, implementation, causal_only)
  return _per_shard(fn, q, k, v, mask, extra_is_mask=True)


def _cudnn_chunks(q) -> bool:
  """impl "pallas" runs multi-token chunks through cuDNN: a GPU and a half-precision dtype (what
  cuDNN's kernel takes); XLA's attention, which writes the [B, H, T, S] scores, elsewhere."""
  return jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)


def _pallas_runs(impl: str) -> bool:
  """impl "pallas" where its Triton kernels run: a GPU, or the CPU in interpret mode (tests)."""
  return impl == "pallas" and jax.default_backend() in ("gpu", "cpu")


def _interpret() -> bool:
  """The Pallas kernels run in interpret mode on CPU (tests), compiled on a GPU."""
  return jax.default_backend() == "cpu"


def _decode_kernel_runs(impl: str, q, k_cache) -> bool:
  """_pallas_runs and a shape model/decode_attention.py takes."""
  return _pallas_runs(impl) and decode_attention.supported(q.shape, k_cache.shape)


def _unsplit(q, k_cache) -> bool:
  """No context mesh splits the batch or heads (the cache-writing kernels are not partitioned;
  the scatter path is)."""
  return shard_specs(jax.sharding.get_abstract_mesh(), q.shape[0], q.shape[2],
                     k_cache.shape[2]) is None


def decode_writes_cache(impl: str, q, k_cache) -> bool:
  """Whether attend_decode_write runs (the one-kernel append + attend): impl "pallas" on a GPU
  (CPU: interpret mode), at most decode_attention.WRITE_MAX_ROWS rows (where it was measured),
  a supported shape, q and the cache in one dtype, and no mesh that splits the batch or heads."""
  return (_decode_kernel_runs(impl, q, k_cache)
          and q.shape[0] <= decode_attention.WRITE_MAX_ROWS and q.dtype == k_cache.dtype
          and _unsplit(q, k_cache))


def decode_appends_cache(impl: str, q, k_cache) -> bool:
  """Whether append_decode runs (one kernel writes a decode step's k and v, where the model
  would scatter twice): impl "pallas" on a GPU (CPU: interpret mode), one new token, a supported
  shape, cache_append.ENABLED and no mesh that splits the batch or heads."""
  return (_pallas_runs(impl) and cache_append.ENABLED and q.shape[1] == 1
          and cache_append.supported(k_cache.shape) and _unsplit(q, k_cache))


# Above WRITE_MAX_ROWS the queries go to the attend kernel and the new k/v to the append kernel,
# each computed by an XLA fusion of its own (the query pad + RoPE 57 us and the k/v concatenation
# 64 us of a 1.96 ms 1.5B step at batch 64 on an H200; RESULTS.md, session 21). SHARED_ROWS: both
# kernels read one array (decode_attention.new_rows), one fusion a layer, as the appending kernel
# does at few rows. Measured at batch 64 (1.5B, H200, alternating processes): 32,335 / 32,584
# tok/s against 31,928 / 32,000 with two arrays (+1.0-2.0%; RESULTS.md, session 22).
SHARED_ROWS = True


def decode_shares_rows(impl: str, q, k_cache) -> bool:
  """Whether append_attend_decode runs: SHARED_ROWS, the append kernel and the decode kernel
  both run (decode_appends_cache and a supported shape), and q is in the cache's dtype."""
  return (SHARED_ROWS and decode_appends_cache(impl, q, k_cache)
          and _decode_kernel_runs(impl, q, k_cache) and q.dtype == k_cache.dtype)


def append_attend_decode(q, k_new, v_new, k_cache, v_cache, end):
  """As append_decode then attend_decode (lengths end + 1), with the queries and the new k/v in
  one array that both kernels read. Only where decode_shares_rows holds. Returns (out [B, 1, H,
  Dh], k_cache, v_cache)."""
  interpret = _interpret()
  rows = decode_attention.new_rows(q, k_new, v_new)
  kc, vc = cache_append.append_rows(rows, k_cache, v_cache, end,
                                    first=decode_attention.kv_row(k_cache.shape[2]),
                                    interpret=interpret)
  out = decode_attention.decode_attend_rows(rows, kc, vc, end + 1, num_heads=q.shape[2],
                                            interpret=interpret)
  return out, kc, vc


def append_decode(k_new, v_new, k_cache, v_cache, end):
  """k_new/v_new [B, 1, K, Dh] written into the caches [B, S, K, Dh] at slot end [B] (>= S:
  dropped), in place, by one kernel (model/cache_append.py). Only where decode_appends_cache
  holds. Returns (k_cache, v_cache)."""
  return cache_append.append(k_new, v_new, k_cache, v_cache, end,
                             interpret=_interpret())


def attend_decode_write(q, k_new, v_new, k_cache, v_cache, end):
  """One new token per row: its k/v [B, 1, K, Dh] written into the caches [B, S, K, Dh] at slot
  end [B] and attended together with slots < end, in one kernel (model/decode_attention.py).
  Only where decode_writes_cache(...) holds. Returns (out [B, 1, H, Dh], k_cache, v_cache)."""
  return decode_attention.decode_attend_write(q, k_new, v_new, k_cache, v_cache, end,
                                              interpret=_interpret())


def attend_decode(q, k, v, lengths, mask, *, impl: str = "xla"):
  """One new token per row against the cache (q [B, 1, H, Dh], k/v the cache [B, S, K, Dh],
  lengths [B]: slots < length are visible, the same as `mask`). impl="pallas" runs the one-kernel
  decode (model/decode_attention.py, a Triton kernel: on GPUs, and in interpret mode on CPU for
  tests) where its shapes allow; everything else (TPUs included) goes through `attend`."""
  if not _decode_kernel_runs(impl, q, k):
    return attend(q, k, v, mask, impl=impl)
  interpret = _interpret()
  fn = lambda q, k, v, n: decode_attention.decode_attend(q, k, v, n, interpret=interpret)
  return _per_shard(fn, q, k, v, lengths, extra_is_mask=False)

"""Decode-step projections as single Pallas (Triton) kernels with their neighbours fused in.

Why: a 1.5B decode step at batch 1 reads ~3.1 GB of weights — 0.72 ms at an H200's 4.3 TB/s —
but took 1.59 ms, and the H100 profile put the gap in ~20 small XLA kernels per layer (norms,
bias adds, RoPE, residual adds, SwiGLU, the padding of one-row products; ~1.3 us each) and in
cuBLAS reaching only 1.2-1.5 TB/s on the 4-6 MB attention projections (benchmarks/RESULTS.md).
Here each projection is one launch that reads its weight once, in row-contiguous tiles:

  x [M, K] --(RMSNorm)--> @ W^T --(+bias)(RoPE | SwiGLU)(+residual)--> [M, N]

Weights are stored transposed, w_t [N, K] (K contiguous: every program streams whole rows), which
is also the layout of a tied embedding used as the LM head. Program j owns a block of `bn` output
columns (two blocks where the epilogue pairs columns: the two RoPE halves of a head, or a gate and
its up column) and loops over K in `bk`-wide tiles. With M <= 8 rows the product is a GEMV:
element-wise products accumulated over the K tiles and summed once at the end (no tensor cores,
no row padding); with M >= 16 it is `tl.dot`.

Status, measured (benchmarks/RESULTS.md, H200): correct, but slower than XLA in the sampler — the
GEMV streams the large MLP and LM-head weights at 30-68% of the copy rate where cuBLAS reaches
70-90%. Hence opt-in (`Sampler(linear_impl="pallas")`); `benchmarks/decode_linear.py` is the tool
for tuning it.

Numerics mirror `qwen2.py` step by step (norm in f32, rounded to the compute dtype before the
scale; bias added to the rounded product; RoPE in f32), so results equal the XLA path up to the
order of the f32 accumulation. `supported` says which shapes run here; the rest stay on XLA.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from masksearch_jax.model import rope

MODES = ("plain", "rope", "swiglu")


def _largest_pow2_divisor(n: int, cap: int) -> int:
  b = 1
  while b * 2 <= cap and n % (b * 2) == 0:
    b *= 2
  return b


def blocks(m: int, k: int, n_cols: int) -> tuple[int, int]:
  """(bk, bn): K tile and output columns per program block, from the row count. With M <= 8 the
  [M, bn, bk] f32 accumulator stays at 4096 elements (32 registers a thread at 4 warps)."""
  bk = _largest_pow2_divisor(k, max(64, 512 // m) if m <= 8 else 128)
  bn = _largest_pow2_divisor(n_cols, 8 if m <= 8 else 16)
  return bk, bn


def available() -> bool:
  """Triton kernels on GPUs, Pallas interpret mode on CPU (tests); other backends keep XLA."""
  return jax.default_backend() in ("gpu", "cpu")


def supported(m: int, k: int, n: int, mode: str, head_dim: int = 0) -> bool:
  """Power-of-two rows (<= 256), K a multiple of 64, column blocks that tile N exactly."""
  if m < 1 or m > 256 or m & (m - 1) or k % 64:
    return False
  cols = {"plain": n, "swiglu": n // 2, "rope": head_dim // 2}[mode]
  if mode == "swiglu" and n % 2 or mode == "rope" and (not head_dim or n % head_dim):
    return False
  _, bn = blocks(m, k, cols)
  return bn >= (8 if m <= 8 else 16)


def _kernel(*refs, mode, m, k, bk, bn, unroll, eps, one_row_dot, has_norm, has_bias, has_res,
            half, n_rot, out_dtype, dot):
  it = iter(refs)
  x_ref, w_ref = next(it), next(it)
  scale_ref = next(it) if has_norm else None
  bias_ref = next(it) if has_bias else None
  pos_ref, freq_ref = (next(it), next(it)) if mode == "rope" else (None, None)
  res_ref = next(it) if has_res else None
  o_ref = next(it)
  j = pl.program_id(0)
  nk = k // bk
  cdt = w_ref.dtype

  if has_norm:                                  # RMS over the whole row, recomputed per program
    def sumsq(i, acc):
      xb = x_ref[:, pl.ds(i * bk, bk)].astype(jnp.float32)
      return acc + jnp.sum(xb * xb, axis=1)
    inv = jax.lax.rsqrt(jax.lax.fori_loop(0, nk, sumsq, jnp.zeros((m,), jnp.float32)) / k + eps)

  if mode == "plain":
    col_a = j * bn
  elif mode == "swiglu":                        # gate columns [0, half), up columns [half, 2 half)
    col_a = j * bn
  else:                                         # rope: block j is (head, sub-block of half a head)
    per = half // bn
    col_a = (j // per) * 2 * half + (j % per) * bn
  col_b = col_a + half                          # the paired block (unused in plain mode)

  def x_tile(i):
    xb = x_ref[:, pl.ds(i * bk, bk)]
    if has_norm:
      xn = (xb.astype(jnp.float32) * inv[:, None]).astype(xb.dtype)
      sc = scale_ref[pl.ds(i * bk, bk)].astype(xb.dtype)
      xb = (sc.astype(jnp.float32)[None, :] * xn.astype(jnp.float32)).astype(xb.dtype)
    return xb.astype(cdt)

  def product(xb, col, i):
    wb = w_ref[pl.ds(col, bn), pl.ds(i * bk, bk)]          # [bn, bk]
    if one_row_dot:                             # [1, bk] -> row 0 of 16 (tl.dot needs 16 rows)
      rows = jax.lax.broadcasted_iota(jnp.int32, (16, bk), 0)
      x16 = jnp.where(rows == 0, jnp.broadcast_to(xb, (16, bk)), jnp.zeros((16, bk), xb.dtype))
      y = jnp.dot(x16, wb.T, preferred_element_type=jnp.float32)         # [16, bn]
      return jnp.sum(y, axis=0, keepdims=True)                          # exact: rows 1.. are 0
    if dot:
      return jnp.dot(xb, wb.T, preferred_element_type=jnp.float32)      # [M, bn]
    # GEMV: element-wise products accumulate in [M, bn, bk] and are summed over K once after the
    # loop, so no cross-thread reduction sits inside the loop.
    return xb.astype(jnp.float32)[:, None, :] * wb.astype(jnp.float32)[None, :, :]

  paired = mode != "plain"

  def body(i, accs):                            # `unroll` K tiles per trip: more loads in flight
    for u in range(unroll):
      xb = x_tile(i * unroll + u)
      a = accs[0] + product(xb, col_a, i * unroll + u)
      accs = (a, accs[1] + product(xb, col_b, i * unroll + u)) if paired else (a,)
    return accs

  gemv = not dot and not one_row_dot
  zero = jnp.zeros((m, bn, bk) if gemv else (m, bn), jnp.float32)
  accs = jax.lax.fori_loop(0, nk // unroll, body, (zero, zero) if paired else (zero,))
  if gemv:
    accs = tuple(jnp.sum(a, axis=2) for a in accs)                      # [M, bn]

  def rounded(acc, col):                        # the XLA path rounds the product, then adds bias
    if out_dtype == jnp.float32 and not has_bias:
      return acc
    y = acc.astype(cdt)
    if has_bias:
      y = (y.astype(jnp.float32) + bias_ref[pl.ds(col, bn)].astype(jnp.float32)
           [None, :]).astype(cdt)
    return y

  if mode == "plain":
    y = rounded(accs[0], col_a)
    if has_res:
      r = res_ref[:, pl.ds(col_a, bn)]
      y = (r.astype(jnp.float32) + y.astype(jnp.float32)).astype(r.dtype)
    o_ref[:, pl.ds(col_a, bn)] = y.astype(o_ref.dtype)
  elif mode == "swiglu":
    g = rounded(accs[0], col_a).astype(jnp.float32)
    u = rounded(accs[1], col_b).astype(jnp.float32)
    g = (g / (1.0 + jnp.exp(-g))).astype(cdt).astype(jnp.float32)      # silu(g) in cdt, as XLA
    o_ref[:, pl.ds(col_a, bn)] = (g * u).astype(o_ref.dtype)
  else:
    x1 = rounded(accs[0], col_a).astype(jnp.float32)
    x2 = rounded(accs[1], col_b).astype(jnp.float32)
    inv_freq = freq_ref[pl.ds((j % (half // bn)) * bn, bn)]  # [bn] f32
    ang = pos_ref[...].astype(jnp.float32)[:, None] * inv_freq[None, :]
    rot = (j // (half // bn)) < n_rot                                   # q and k heads, not v
    cos = jnp.where(rot, jnp.cos(ang), 1.0)
    sin = jnp.where(rot, jnp.sin(ang), 0.0)
    o_ref[:, pl.ds(col_a, bn)] = (x1 * cos - x2 * sin).astype(o_ref.dtype)
    o_ref[:, pl.ds(col_b, bn)] = (x2 * cos + x1 * sin).astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("mode", "eps", "head_dim", "rotary_heads", "theta",
                                             "out_dtype", "interpret", "num_warps", "num_stages",
                                             "block_k", "block_n", "unroll", "one_row_dot"))
def linear(x, w_t, *, mode: str = "plain", norm_scale=None, eps: float = 1e-6, bias=None,
           residual=None, positions=None, head_dim: int = 0, rotary_heads: int = 0,
           theta: float = 1e6, out_dtype=None, interpret: bool | None = None, num_warps: int = 4,
           num_stages: int = 2, block_k: int = 0, block_n: int = 0, unroll: int = 0,
           one_row_dot: bool = False):
  """x [M, K] -> [M, N'] for w_t [N, K].

  mode "plain": (norm(x) @ w_t.T + bias) (+ residual), N' = N.
  mode "swiglu": w_t = [gate; up] ([2F, K]) -> silu(x @ gate.T) * (x @ up.T), N' = F.
  mode "rope": heads of `head_dim` columns; the first `rotary_heads` get rotate-half RoPE at
    `positions` [M] after the bias (the fused q/k/v projection: q and k heads rotate, v do not).
  block_k / block_n (0: `blocks`), unroll (K tiles per loop trip; 0: up to 8 for M <= 8, where
  Triton does not pipeline the loop, 1 with tl.dot), one_row_dot (M = 1 through tl.dot on a
  zero-padded 16-row tile) and num_warps / num_stages are tuning knobs. interpret: None runs
  Pallas interpret mode on CPU and compiles elsewhere.
  """
  if mode not in MODES:
    raise ValueError(f"mode {mode!r} not in {MODES}")
  m, k = x.shape
  n = w_t.shape[0]
  if not supported(m, k, n, mode, head_dim):
    raise ValueError(f"decode_linear: unsupported shape x {x.shape}, w_t {w_t.shape}, {mode}")
  half = {"plain": 0, "swiglu": n // 2, "rope": head_dim // 2}[mode]
  n_out = n // 2 if mode == "swiglu" else n
  bk, bn = blocks(m, k, half if half else n)
  bk, bn = block_k or bk, block_n or bn
  one_row_dot = one_row_dot and m == 1
  if k % bk or (half or n) % bn or ((m >= 16 or one_row_dot) and bn < 16):
    raise ValueError(f"block_k={bk} / block_n={bn} do not tile K={k} / {half or n} columns")
  nk = k // bk
  if not unroll:
    unroll = max(u for u in range(1, 9) if nk % u == 0) if m < 16 and not one_row_dot else 1
  if nk % unroll:
    raise ValueError(f"unroll={unroll} does not divide the {nk} K tiles")
  programs = n_out // bn if mode == "swiglu" else n // bn // (2 if mode == "rope" else 1)
  out_dtype = out_dtype or x.dtype
  args = [x, w_t] + [a for a in (norm_scale, bias) if a is not None]
  if mode == "rope":                            # the same f32 frequencies as qwen2.rope
    args += [positions.astype(jnp.int32), rope.inv_freq(head_dim, theta)]
  if residual is not None:
    args.append(residual)
  kern = functools.partial(
      _kernel, mode=mode, m=m, k=k, bk=bk, bn=bn, unroll=unroll, eps=eps, one_row_dot=one_row_dot,
      has_norm=norm_scale is not None, has_bias=bias is not None, has_res=residual is not None,
      half=half, n_rot=rotary_heads, out_dtype=jnp.dtype(out_dtype), dot=m >= 16)
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  kwargs = {}
  if not interpret:
    from jax.experimental.pallas import triton as plgpu
    kwargs["compiler_params"] = plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages)
  return pl.pallas_call(
      kern, grid=(programs,), out_shape=jax.ShapeDtypeStruct((m, n_out), out_dtype),
      interpret=interpret, name=f"decode_linear_{mode}", **kwargs)(*args)

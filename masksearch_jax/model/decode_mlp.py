"""A decode step's whole MLP block as one Pallas (Triton) kernel, sliced along the hidden units.

Why: at batch 1 the 1.5B's MLP is five XLA kernels a layer (the norm statistic, the gate/up gemm,
SwiGLU, the down gemm, the residual add; ~28 us a layer on an H200, benchmarks/RESULTS.md), and
each small one costs a fixed 1.5-4 us in a latency-bound step. Slicing the F hidden units into
P = F / bf groups needs no grid-wide barrier: program p owns hidden units [p bf, (p + 1) bf), so

  partial[p] = (silu(x @ gate[:, p]) * (x @ up[:, p])) @ down[p, :]        # [M, D] f32

and the block's output is h + sum_p partial[p] (one small XLA reduction, fused with the add).
Each program computes the row statistic of the RMSNorm itself (from the L2-resident [M, D]
input), so the norm's reduction kernel goes too. Weights stream once, through `tl.dot` on a
16-row tile (rows beyond M are zeros: no HBM cost), whose loads Triton pipelines (num_stages).

Layout ("xla_mlp" in qwen2.decode_layout): the norm gain folded into gate/up (as "xla_folded"),
whose columns are regrouped per slice, w1 [D, P, 2 bf] (the slice's gate columns, then its up
columns); down stays [F, D]. Longer chunks (prefill, splices) use the same arrays through XLA
(`mlp_xla`), a plain gemm with a reshaped output.

Numerics mirror qwen2's folded path op by op (bf16 product, then the f32 row scale, rounded;
SiLU and the gating product rounded as XLA rounds each op), so outputs equal it up to the order
of the f32 sums (tests/model/test_decode_mlp.py).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

ROWS = 16            # tl.dot's smallest tile: rows 0..M-1 real, the rest zeros
MAX_ROWS = 8         # above this the per-program partials cost more HBM traffic than they save
SLICE = 64           # default hidden units a program (decode_layout "xla_mlp")
# The model's kernel tiling (mlp_block's defaults; benchmarks set it for a process-wide A/B).
TUNING = {"num_warps": 4, "num_stages": 3, "block_k": 0, "block_n": 0}


def parse_tuning(spec: str) -> tuple[int, dict]:
  """'slice=64 bk=128 bn=128 w=4 st=3' (any subset) -> (slice, mlp_partials tuning kwargs)."""
  names = {"bk": "block_k", "bn": "block_n", "w": "num_warps", "st": "num_stages"}
  out, bf = dict(TUNING), SLICE
  for item in spec.split():
    key, _, val = item.partition("=")
    if key == "slice":
      bf = int(val)
    elif key in names:
      out[names[key]] = int(val)
    else:
      raise ValueError(f"decode_mlp tuning: unknown {key!r} in {spec!r} (slice, bk, bn, w, st)")
  return bf, out


def slice_width(f: int, cap: int | None = None) -> int:
  """The largest power of two <= cap (default SLICE) that divides F; the kernel needs >= 16, the
  XLA form of the layout takes any."""
  return _block(f, cap or SLICE)


def slice_layout(gate_up: jax.Array, bf: int = SLICE) -> jax.Array:
  """gate_up [D, 2F] ([gate | up] columns) -> w1 [D, F / bf, 2 bf] ([gate_p | up_p] a slice)."""
  d, f2 = gate_up.shape
  f = f2 // 2
  if f % bf:
    raise ValueError(f"decode_mlp: slice {bf} does not divide the {f} hidden units")
  return gate_up.reshape(d, 2, f // bf, bf).transpose(0, 2, 1, 3).reshape(d, f // bf, 2 * bf)


def mlp_act_xla(x: jax.Array, w1: jax.Array, row_scale: jax.Array | None = None) -> jax.Array:
  """silu(gate) * up [..., F] for x [..., D] through XLA (prefill, splices; the reference).
  row_scale [..., 1]: the folded norm's 1 / RMS, applied to the (rounded) product."""
  d, p, bf2 = w1.shape
  gu = jnp.einsum("...d,dpc->...pc", x, w1)
  if row_scale is not None:
    gu = (gu * row_scale[..., None]).astype(gu.dtype)
  g, u = gu[..., : bf2 // 2], gu[..., bf2 // 2:]
  return (jax.nn.silu(g) * u).reshape(*x.shape[:-1], p * bf2 // 2)


def supported(m: int, d: int, w1_shape: tuple, bk: int = 0, bn: int = 0) -> bool:
  """Rows 1..MAX_ROWS, and tiles that divide D (bk, bn) and a slice of >= 16 units."""
  bk, bn = bk or _block(d, 128), bn or _block(d, 128)
  return (1 <= m <= MAX_ROWS and w1_shape[0] == d and w1_shape[2] // 2 >= 16
          and d % bk == 0 and d % bn == 0 and bk >= 16 and bn >= 16)


def _block(n: int, cap: int) -> int:
  b = 1
  while b * 2 <= cap and n % (b * 2) == 0:
    b *= 2
  return b


def _kernel(h_ref, w1_ref, w2_ref, o_ref, *, m, d, bf, bk, bn, eps):
  p = pl.program_id(0)
  f32 = jnp.float32
  cdt = w1_ref.dtype

  def rows16(k0, width):                        # [16, width]: the M rows of h, zeros below
    r = jax.lax.broadcasted_iota(jnp.int32, (ROWS, width), 0)
    x = jnp.zeros((ROWS, width), h_ref.dtype)
    for i in range(m):
      x = jnp.where(r == i, jnp.broadcast_to(h_ref[i, pl.ds(k0, width)][None, :], x.shape), x)
    return x

  # The norm's row statistic accumulates in the same loop: with the gain folded into w1 the
  # 1 / RMS scale applies after the product, so it is not needed before the loop (a separate
  # pre-pass was a chain of unpipelined L2 round trips per program: measured 0.82x XLA).
  def gate_up(i, accs):
    x = rows16(i * bk, bk)
    xf = x.astype(f32)
    wg = w1_ref[pl.ds(i * bk, bk), p, pl.ds(0, bf)]                     # [bk, bf]
    wu = w1_ref[pl.ds(i * bk, bk), p, pl.ds(bf, bf)]
    x = x.astype(cdt)
    return (accs[0] + jnp.dot(x, wg, preferred_element_type=f32),
            accs[1] + jnp.dot(x, wu, preferred_element_type=f32),
            accs[2] + jnp.sum(xf * xf, axis=1))
  zero = jnp.zeros((ROWS, bf), f32)
  g, u, ss = jax.lax.fori_loop(0, d // bk, gate_up, (zero, zero, jnp.zeros((ROWS,), f32)))
  inv = jax.lax.rsqrt(ss / d + eps)                                      # [16]

  # As qwen2's folded path: bf16 product, times the f32 row scale, rounded; silu and gating.
  rnd = lambda v: v.astype(cdt).astype(f32)
  g = rnd(rnd(g) * inv[:, None])
  u = rnd(rnd(u) * inv[:, None])
  sig = rnd(1.0 / (1.0 + jnp.exp(-g)))
  act = (rnd(g * sig) * u).astype(cdt)                                  # [16, bf]

  rid = jax.lax.broadcasted_iota(jnp.int32, (ROWS, bn), 0)

  def down(j, carry):
    w = w2_ref[pl.ds(p * bf, bf), pl.ds(j * bn, bn)]                    # [bf, bn]
    y = jnp.dot(act, w, preferred_element_type=f32)                     # [16, bn]
    for i in range(m):                          # only the real rows go back to HBM
      o_ref[p, i, pl.ds(j * bn, bn)] = jnp.sum(jnp.where(rid == i, y, 0.0), axis=0)
    return carry
  jax.lax.fori_loop(0, d // bn, down, 0)


@functools.partial(jax.jit, static_argnames=("eps", "interpret", "num_warps", "num_stages",
                                             "block_k", "block_n"))
def mlp_partials(h, w1, w2, *, eps: float, interpret: bool | None = None, num_warps: int = 4,
                 num_stages: int = 3, block_k: int = 0, block_n: int = 0) -> jax.Array:
  """h [M, D] (the block input before its RMSNorm), w1 [D, P, 2 bf], w2 [F, D] -> the
  per-slice partial outputs [P, M, D] f32 of the down projection (sum them for the MLP)."""
  m, d = h.shape
  _, p, bf2 = w1.shape
  bk, bn = block_k or _block(d, 128), block_n or _block(d, 128)
  if not supported(m, d, w1.shape, bk, bn) or w2.shape != (p * bf2 // 2, d):
    raise ValueError(f"decode_mlp: unsupported h {h.shape}, w1 {w1.shape}, w2 {w2.shape}, "
                     f"block_k={bk}, block_n={bn}")
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  kwargs = {}
  if not interpret:
    from jax.experimental.pallas import triton as plgpu
    kwargs["compiler_params"] = plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages)
  kern = functools.partial(_kernel, m=m, d=d, bf=bf2 // 2, bk=bk, bn=bn, eps=eps)
  return pl.pallas_call(
      kern, grid=(p,), out_shape=jax.ShapeDtypeStruct((p, m, d), jnp.float32),
      interpret=interpret, name="decode_mlp", **kwargs)(h, w1, w2)


def mlp_block(h, w1, w2, *, eps: float, **tuning) -> jax.Array:
  """h [M, D] -> h + MLP(RMSNorm(h)) [M, D], the norm gain folded into w1 (see module doc)."""
  y = jnp.sum(mlp_partials(h, w1, w2, eps=eps, **{**TUNING, **tuning}), axis=0).astype(h.dtype)
  return h + y

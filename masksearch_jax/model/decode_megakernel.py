"""A whole one-token decode step of Qwen2 as ONE Pallas (Triton) kernel: every layer's q/k/v,
attention, o, MLP and the LM head, its programs meeting at grid-wide barriers between stages.

Why: a decode step at few rows is ~12 dependent kernels a layer, each paying a fixed launch
cost; one persistent launch streams the same weights at the copy rate (4.25 TB/s for the 1.5B's
layer weights, 0.834 ms with a barrier after each of their 112 stages on an H200;
benchmarks/grid_barrier.py, docs/decode_megakernel.md). Status: equal to `qwen2.apply`'s decode
step on CPU (interpret mode, one program running a 132-program work split), lowers for CUDA as
one kernel, and gives XLA's argmax on an H200 — but takes 4.39 ms a 1.5B step at 2 rows against
XLA's 1.41 ms (benchmarks/RESULTS.md, session 26): its stages are latency-bound. Not used by
the sampler.

Stages a layer (model/megakernel_stages.py), each a set of work items handed out with a grid
stride and ended by a barrier; `plan` picks the K-splits that fill the programs:
  qkv   (tile of a head's columns, K-split): h * 1/RMS(h) times the norm-folded weights
  attn  (row, kv head, key split): bias + RoPE, the new k/v into the cache, flash-decoding
        partials over the split's share of the filled slots (split 0 adds the new token)
  o     (column tile, head group): merges the key splits of its heads, times W_o
  mlp   (block of hidden units, K-split): gate and up (post-norm folded, interleaved columns)
  down  (column tile, K-split): SwiGLU of the summed gate/up partials, times W_down
then the final norm and the LM head over vocabulary tiles. Partials are f32, summed by their
consumers in a fixed order (no float atomics on data: a step repeats bit for bit).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from masksearch_jax.model import megakernel_stages as stages, rope
from masksearch_jax.model.config import Qwen2Config

ROWS = stages.ROWS                 # rows of every activation tile (tl.dot's minimum)
BLOCK_N = 64                       # output columns of a tile
BLOCK_K = 128                      # reduction step of a product
BLOCK_KEYS = 64                    # cache slots per attention step


def _tiles(cfg: Qwen2Config) -> tuple[int, int]:
  """(columns of a tile, reduction step) for this model: BLOCK_N / BLOCK_K capped by D."""
  d = cfg.hidden_size
  return min(BLOCK_N, d), min(BLOCK_K, d, cfg.intermediate_size)


def supported(cfg: Qwen2Config, batch: int, slots: int) -> bool:
  """Shapes the kernel tiles exactly: <= 16 rows, head_dim a power of two, the widths
  multiples of the tiles and the cache of the key block."""
  bn, bk = _tiles(cfg)
  d, f, dh = cfg.hidden_size, cfg.intermediate_size, cfg.dim_per_head
  return (1 <= batch <= ROWS and dh & (dh - 1) == 0 and dh >= 4
          and cfg.num_heads // cfg.num_kv_heads <= ROWS and d % bn == 0 and d % bk == 0
          and f % bn == 0 and f % bk == 0 and cfg.vocab_size % bn == 0
          and (cfg.num_heads * dh) % bn == 0 and slots % min(BLOCK_KEYS, slots) == 0)


def _tile_major(w, cols: int):
  """[L, K, N] -> [L, N / cols, K, cols]: each tile's weights one contiguous run, so that a
  program streams whole DRAM pages (a [K, N] tile strides a page per row)."""
  L, K, N = w.shape
  return w.reshape(L, K, N // cols, cols).transpose(0, 2, 1, 3)


def layout(params, cfg: Qwen2Config, dtype) -> dict:
  """The stacked weights the kernel indexes by layer, tile-major (`_tile_major`; NH = H + 2K):
  qkv [L, NH * Dh / bq, D, bq] with the input-norm gain folded in, qkv_bias [L, NH, Dh] f32,
  o [L, D / bn, H * Dh, bn], gate_up [L, F / bn, D, 2 bn] (a block's gate then up columns) with
  the post-norm gain folded in, down [L, D / bn, F, bn], final_norm [D] f32, lm [V, D]."""
  f32 = lambda x: x.astype(jnp.float32)
  ly = params["layers"]
  L, D = ly["q"].shape[:2]
  bn, _ = _tiles(cfg)
  bq = min(bn, cfg.dim_per_head)
  qkv = jnp.concatenate([f32(ly[k]) for k in ("q", "k", "v")], axis=2)          # [L, D, NH, Dh]
  qkv = (qkv * f32(ly["input_norm"])[:, :, None, None]).reshape(L, D, -1)
  bias = jnp.concatenate([f32(ly[k]) for k in ("q_bias", "k_bias", "v_bias")], axis=1)
  post = f32(ly["post_norm"])[:, :, None]
  gate_up = jnp.concatenate([_tile_major(f32(ly[k]) * post, bn) for k in ("gate", "up")], -1)
  lm = params["embed"] if cfg.tie_embeddings else params["lm_head"].T
  c = lambda x: x.astype(dtype)
  return {"qkv": c(_tile_major(qkv, bq)), "qkv_bias": bias,
          "o": c(_tile_major(ly["o"].reshape(L, -1, D), bn)), "gate_up": c(gate_up),
          "down": c(_tile_major(ly["down"], bn)), "final_norm": f32(params["final_norm"]),
          "lm": c(lm)}


@dataclasses.dataclass(frozen=True)
class Plan:
  """How each stage's work is split over the programs (static; see `plan`)."""
  programs: int
  bq: int          # q/k/v columns a tile (within one head)
  sq: int          # q/k/v K-splits
  sa: int          # key splits a (row, kv head)
  so: int          # o K-splits (head groups)
  sg: int          # gate/up K-splits
  sd: int          # down K-splits


def _splits(tiles: int, blocks: int, programs: int, cap: int) -> int:
  """K-splits (a divisor of `blocks`, <= cap) whose tiles x splits items fill `programs` with
  the least idle share in the last round; ties: fewer splits (fewer partials to sum)."""
  ds = [d for d in range(1, min(blocks, cap) + 1) if blocks % d == 0]
  waste = lambda d: math.ceil(tiles * d / programs) / (tiles * d / programs)
  return min(ds, key=lambda d: (round(waste(d), 6), d))


def plan(cfg: Qwen2Config, batch: int, slots: int, programs: int) -> Plan:
  """The work split for `programs` (the grid, or a larger plan to exercise the splits on one
  program). Caps keep the partials a consumer sums few: gate/up's are re-read by every down
  tile, so at most 4."""
  bn, bk = _tiles(cfg)
  D, F, H, K, Dh = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads,
                    cfg.dim_per_head)
  bq = min(bn, Dh)
  return Plan(programs=programs, bq=bq,
              sq=_splits((H + 2 * K) * Dh // bq, D // bk, programs, 8),
              sa=max(1, min(programs // (batch * K), slots // min(BLOCK_KEYS, slots), 64)),
              so=_splits(D // bn, H, programs, 8),
              sg=_splits(F // bn, D // bk, programs, 4),
              sd=_splits(D // bn, F // bn, programs, 8))


@functools.partial(jax.jit, static_argnames=("cfg", "programs", "plan_programs", "interpret",
                                             "num_warps", "num_stages", "skip"))
def decode_step(mp: dict, cfg: Qwen2Config, h, positions, k_cache, v_cache, end, *,
                programs: int, plan_programs: int | None = None, interpret: bool = False,
                num_warps: int = 8, num_stages: int = 2, skip: tuple[str, ...] = ()):
  """One token per row through the whole model in one kernel.

  mp: layout(...). h [B, D]: the tokens' embeddings; positions / end [B] int32 (RoPE position,
  cache slot of the new token); k_cache / v_cache [L, B, S, K, Dh] (stacked; updated in place).
  programs: the grid, all resident at once (<= the GPU's SM count: every barrier waits for all
  of them; 1 in interpret mode, which runs programs one after another). plan_programs: split the
  work as for that many programs (default: `programs`; tests run a 132-program plan on one).
  num_warps / num_stages: Triton's tiling knobs. skip: stages whose work items are skipped
  (barriers kept; the result is WRONG) — for timing the stages (benchmarks/decode_megakernel.py).
  Returns (logits [B, V] f32, k_cache, v_cache)."""
  from jax.experimental.pallas import triton as plgpu
  B, D = h.shape
  L, _, S, K, Dh = k_cache.shape
  H, V, F = cfg.num_heads, cfg.vocab_size, cfg.intermediate_size
  if not supported(cfg, B, S):
    raise ValueError(f"decode_megakernel does not tile {cfg.name!r} at {B} rows, {S} slots")
  pn = plan(cfg, B, S, plan_programs or programs)
  bn, bk = _tiles(cfg)
  pad = lambda x: jnp.zeros((ROWS,) + x.shape[1:], x.dtype).at[:B].set(x)
  inv = rope.inv_freq(Dh, cfg.rope_theta)
  kc, vc = k_cache.reshape(L, B, S, K * Dh), v_cache.reshape(L, B, S, K * Dh)
  f32, sds, NH = jnp.float32, jax.ShapeDtypeStruct, H + 2 * K
  # Every buffer a stage writes has a layer index: no address is written twice in a step, so
  # plain loads (cached in the SM's L1, which is not coherent across SMs) never see a stale
  # line, and the loops' loads can be software-pipelined. Head-indexed buffers carry ROWS
  # spare heads: a group's 16-row tile starting at any head stays in bounds (its extra rows
  # are masked).
  bias = jnp.pad(mp["qkv_bias"], ((0, 0), (0, ROWS), (0, 0)))
  out_shape = (sds(kc.shape, kc.dtype), sds(vc.shape, vc.dtype), sds((1,), f32),
               sds((L + 1, ROWS, D), f32), sds((L, ROWS, D), f32),         # a, xs: residuals
               sds((L + 1, pn.sd, ROWS, D), f32),                           # down partials
               sds((L, pn.sq, ROWS, NH + ROWS, Dh), f32),                   # q/k/v partials
               sds((L, pn.sa, ROWS, H + ROWS, Dh), f32),                    # attention acc
               sds((L, pn.sa, ROWS, H + ROWS), f32), sds((L, pn.sa, ROWS, H + ROWS), f32),
               sds((L, pn.so, ROWS, D), f32), sds((L, pn.sg, ROWS, 2 * F), f32),   # o, gate/up
               sds((ROWS, D), f32), sds((ROWS, V), f32))                    # final x, logits
  outs = pl.pallas_call(
      functools.partial(stages.kernel, cfg=cfg, batch=B, plan=pn, bn=bn, bk=bk,
                        bkv=min(BLOCK_KEYS, S), skip=frozenset(skip)),
      grid=(programs,), out_shape=out_shape,
      input_output_aliases={11: 0, 12: 1, 13: 2},
      compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
      interpret=interpret)(
          pad(h.astype(f32)), pad(positions.astype(jnp.int32)), pad(end.astype(jnp.int32)), inv,
          mp["qkv"], bias, mp["o"], mp["gate_up"], mp["down"], mp["final_norm"], mp["lm"],
          kc, vc, jnp.zeros((1,), f32))
  kc, vc, logits = outs[0], outs[1], outs[-1]
  return logits[:B], kc.reshape(k_cache.shape), vc.reshape(v_cache.shape)

"""Pure-functional Qwen2 / Qwen2.5 decoder: `init_params` builds a plain dict pytree and `apply`
is a pure function of (params, tokens, positions, segment ids, cache).

Numerics follow `transformers.Qwen2ForCausalLM`: RMSNorm in float32, rotate-half RoPE, q/k/v biases,
grouped-query attention, SwiGLU MLP. Matmuls run in `compute_dtype` (bf16 by default); attention
softmax and logits are float32. Layers are stacked on a leading axis and run with `lax.scan` (fast
compiles at any depth) or unrolled, with an optional remat policy on the layer body.

Param tree (L = layers, D = hidden, H/K = q/kv heads, Dh = head dim, F = MLP width, V = vocab):
  embed [V, D]; final_norm [D]; lm_head [D, V] (absent when embeddings are tied)
  layers/ input_norm [L, D], post_norm [L, D],
          q [L, D, H, Dh], q_bias [L, H, Dh], k/v [L, D, K, Dh], k_bias/v_bias [L, K, Dh],
          o [L, H, Dh, D], gate/up [L, D, F], down [L, F, D]
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from masksearch_jax.model import attention, decode_linear, rope as rope_lib
from masksearch_jax.model.matmul import einsum_f32_out, rows_einsum, split_k_einsum
from masksearch_jax.model.config import Qwen2Config

Params = dict[str, Any]

# How the sampler's unrolled decode layout runs the projections: "xla" (XLA products), "xla_folded"
# (XLA products with each RMSNorm's gain folded into the weights that follow it, so the norm is a
# per-row scale applied after the product: no normalised copy of the activations is written),
# "pallas" (model/decode_linear.py's fused one-token kernels).
LINEAR_IMPLS = ("xla", "xla_folded", "pallas")
# decode_layout with the XLA projections: store the weights named in DECODE_SPLIT_K_WEIGHTS
# ("qkv", "o", "down") split DECODE_SPLIT_K ways along their input dimension where it divides
# (matmul.split_k_einsum); 0 or 1: off. Read when the layout is built (benchmarks set them for a
# process-wide A/B). Measured on an H200 (1.5B): S = 4 on q/k/v and o, batch 64 +0.8-1.2%, batch 1
# no gain (splitting down too: -2.8%), so off by default (benchmarks/RESULTS.md).
DECODE_SPLIT_K = 0
DECODE_SPLIT_K_WEIGHTS = ("qkv", "o")

# Fused-attention forward primitives (JAX's cuDNN flash attention) whose outputs "dots_attn"
# saves: the attention output and its softmax statistics are the backward kernel's residuals, so
# without them the backward pass re-runs the whole attention forward of every layer.
SAVED_ATTENTION_PRIMITIVES = ("dot_product_attention_fwd_wrapper", "dot_product_attention_fwd")


def _dots_and_attention_saveable(prim, *avals, **params) -> bool:
  return (prim.name in SAVED_ATTENTION_PRIMITIVES
          or jax.checkpoint_policies.dots_with_no_batch_dims_saveable(prim, *avals, **params))


# Activations tagged with jax.ad_checkpoint.checkpoint_name in the layer: the two RMSNorm outputs
# ("norm", [B, T, D] each) and the SwiGLU product ("mlp_act", [B, T, F]), which the policies above
# recompute in the backward pass (element-wise passes over the activations).
def _dots_attention_and_named(*names: str):
  named = jax.checkpoint_policies.save_only_these_names(*names)
  return lambda prim, *avals, **params: (_dots_and_attention_saveable(prim, *avals, **params)
                                         or named(prim, *avals, **params))


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # dots_no_batch + the fused attention's forward outputs (~T*D bf16 per layer more memory).
    "dots_attn": _dots_and_attention_saveable,
    # dots_attn + the two norm outputs (~2 * T * D bf16 per layer more).
    "dots_attn_norm": _dots_attention_and_named("norm"),
    # dots_attn + the norm outputs and the SwiGLU product (~(2D + F) * T bf16 per layer more):
    # the backward pass then recomputes almost nothing (1.5B, 16 x 2048, unrolled layers on an
    # H200: 53.6% vs 53.2% MFU for dots_attn, +16 GB; with lax.scan it loses, 49.2% vs 51.0%,
    # the stacked residuals' copies grow with what is saved).
    "dots_attn_acts": _dots_attention_and_named("norm", "mlp_act"),
}


def init_params(cfg: Qwen2Config, key: jax.Array, dtype=jnp.float32, std: float = 0.02) -> Params:
  """Random params (normal(std) kernels, zero biases, unit norms), as HF's initializer does."""
  L, D, H, K, Dh, F, V = (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads,
                          cfg.dim_per_head, cfg.intermediate_size, cfg.vocab_size)
  ks = iter(jax.random.split(key, 16))
  n = lambda shape: (std * jax.random.normal(next(ks), shape, jnp.float32)).astype(dtype)
  # Biases get small random values (not zeros) so tests exercise them against the reference.
  b = lambda shape: (std * jax.random.normal(next(ks), shape, jnp.float32)).astype(dtype)
  layers = {
      "input_norm": jnp.ones((L, D), dtype), "post_norm": jnp.ones((L, D), dtype),
      "q": n((L, D, H, Dh)), "q_bias": b((L, H, Dh)),
      "k": n((L, D, K, Dh)), "k_bias": b((L, K, Dh)),
      "v": n((L, D, K, Dh)), "v_bias": b((L, K, Dh)),
      "o": n((L, H, Dh, D)),
      "gate": n((L, D, F)), "up": n((L, D, F)), "down": n((L, F, D)),
  }
  params = {"embed": n((V, D)), "layers": layers, "final_norm": jnp.ones((D,), dtype)}
  if not cfg.tie_embeddings:
    params["lm_head"] = n((D, V))
  return params


def rms_scale(x, eps):
  """1 / RMS(x) per position, f32 [..., 1]: rms_norm(x, g) == g * x * rms_scale(x) (up to rounding),
  so with g folded into the next weight the scale can be applied after the product."""
  xf = x.astype(jnp.float32)
  return jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)


def rms_norm(x, scale, eps):
  xf = x.astype(jnp.float32) * rms_scale(x, eps)
  return scale.astype(x.dtype) * xf.astype(x.dtype)


def rope(x, positions, theta):
  """Rotate-half RoPE (HF layout). x [B, T, N, Dh], positions [B, T]."""
  dh = x.shape[-1]
  inv = rope_lib.inv_freq(dh, theta)                                           # [Dh/2]
  ang = positions.astype(jnp.float32)[..., None] * inv                         # [B, T, Dh/2]
  cos = jnp.cos(jnp.concatenate([ang, ang], -1))[:, :, None, :]
  sin = jnp.sin(jnp.concatenate([ang, ang], -1))[:, :, None, :]
  xf = x.astype(jnp.float32)
  x1, x2 = xf[..., : dh // 2], xf[..., dh // 2:]
  rot = jnp.concatenate([-x2, x1], -1)
  return (xf * cos + rot * sin).astype(x.dtype)


def _attention_mask(segment_ids, cache_end, t, s):
  """Boolean [B, T, S]. Without a cache: causal within equal non-zero segments (packing).
  With a cache: query i of row b sits at slot end[b]+i and sees slots <= its own."""
  if cache_end is None:
    seg = segment_ids
    causal = jnp.tril(jnp.ones((t, t), bool))[None]
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
    return causal & same
  q_slot = cache_end[:, None] + jnp.arange(t)[None, :]                     # [B, T]
  return jnp.arange(s)[None, None, :] <= q_slot[:, :, None]


def decode_layout(params: Params, cfg: Qwen2Config, dtype, linear_impl: str = "xla") -> Params:
  """The params re-laid out for unrolled decoding, once per jitted sampler call (outside its loop).

  Layers become a list of per-layer dicts (separate buffers: slicing a stacked weight inside the
  decode loop made XLA copy every layer's weights on every step — measured as ~40% of a 1.5B
  decode step on an H100), cast to `dtype`, with q/k/v fused into one [D, (H+2K)*Dh] matmul and
  gate/up into one [D, 2F] matmul (fewer, larger kernels per step). `apply(scan_layers=False)`
  accepts this form; the result is numerically the same model. (Training in this form was
  measured slower: 1.5B SFT step on an H200, 51.8% vs 53.5% MFU; benchmarks/RESULTS.md.)

  linear_impl="xla_folded": the input / post-attention norm gains multiply the rows of qkv /
  gate_up (in f32, before the cast) and leave the layer dicts; `_qkv` / `_out_mlp` then scale
  each product's output by rms_scale(h) instead of normalising h first.

  linear_impl="pallas": the same fused matrices stored transposed ([out, in]: `qkv_t`, `o_t`,
  `gate_up_t`, `down_t`, and `lm_head_t`, which is the embedding itself when tied), the layout of
  model/decode_linear.py, whose one-token kernels then also fold in the norms, biases, RoPE,
  SwiGLU and residual adds. Longer chunks (prefill, splice) use the same matrices through XLA.
  """
  if linear_impl not in LINEAR_IMPLS:
    raise ValueError(f"linear_impl {linear_impl!r} not in {LINEAR_IMPLS}")
  c = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
  D = cfg.hidden_size
  out = {k: c(v) for k, v in params.items() if k != "layers"}
  layers = []
  fold = linear_impl == "xla_folded"
  unknown = set(DECODE_SPLIT_K_WEIGHTS) - {"qkv", "o", "down"} if DECODE_SPLIT_K > 1 else set()
  if unknown and linear_impl != "pallas":
    raise ValueError(f"DECODE_SPLIT_K_WEIGHTS: {min(unknown)!r} is not one of qkv, o, down")
  for raw in _unstacked_layers(params, cfg.num_layers):
    raw = dict(raw)
    qkv = jnp.concatenate([raw.pop(k).reshape(D, -1) for k in ("q", "k", "v")], axis=1)
    gate_up = jnp.concatenate([raw.pop("gate"), raw.pop("up")], axis=1)
    if fold:                                   # [D, out] rows scaled by the norm gain [D]
      f32 = lambda x: x.astype(jnp.float32)
      qkv = f32(qkv) * f32(raw.pop("input_norm"))[:, None]
      gate_up = f32(gate_up) * f32(raw.pop("post_norm"))[:, None]
    lp = {k: c(v) for k, v in raw.items()}
    lp["qkv"], lp["gate_up"] = c(qkv), c(gate_up)
    lp["qkv_bias"] = jnp.concatenate([lp.pop(k).reshape(-1) for k in ("q_bias", "k_bias",
                                                                      "v_bias")])
    if linear_impl == "pallas":
      lp["qkv_t"], lp["gate_up_t"] = lp.pop("qkv").T, lp.pop("gate_up").T
      lp["o_t"], lp["down_t"] = lp.pop("o").reshape(-1, D).T, lp.pop("down").T
    elif DECODE_SPLIT_K > 1:
      for name in DECODE_SPLIT_K_WEIGHTS:                   # [S, in / S, out]: split_k_einsum
        w = lp[name]
        if (w.size // w.shape[-1]) % DECODE_SPLIT_K == 0:
          lp[name + "_sk"] = lp.pop(name).reshape(DECODE_SPLIT_K, -1, w.shape[-1])
    layers.append(lp)
  out["layers"] = layers
  if linear_impl == "pallas":
    out["lm_head_t"] = out["embed"] if cfg.tie_embeddings else out.pop("lm_head").T
  return out


def _dense(x, lp, name, c, row_scale=None):
  """x [B, T, in] times layer weight `name` in any layout ([in, out], `name_t` [out, in], or
  `name_sk` [S, in / S, out], see DECODE_SPLIT_K). row_scale [B, T, 1]: a folded norm's per-row
  scale (decode_layout "xla_folded"), applied to the product."""
  if name + "_t" in lp:
    y = jnp.einsum("bti,oi->bto", x, c(lp[name + "_t"]))
  elif name + "_sk" in lp:
    y = split_k_einsum(x, c(lp[name + "_sk"]))
  else:
    w = c(lp[name])
    y = rows_einsum("bti,io->bto", x, w.reshape(-1, w.shape[-1]))
  return y if row_scale is None else (y * row_scale).astype(y.dtype)


def _projections(cfg, x, lp, c, row_scale=None):
  """q [B, T, H, Dh], k/v [B, T, K, Dh] from either param layout (row_scale: as in _dense; only
  the decode layout has folded norms)."""
  b, t, _ = x.shape
  if "qkv" in lp or "qkv_t" in lp or "qkv_sk" in lp:      # decode_layout: one fused matmul
    H, K, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head
    y = _dense(x, lp, "qkv", c, row_scale) + c(lp["qkv_bias"])
    q, k, v = jnp.split(y, [H * Dh, (H + K) * Dh], axis=-1)
    return (q.reshape(b, t, H, Dh), k.reshape(b, t, K, Dh), v.reshape(b, t, K, Dh))
  q = rows_einsum("btd,dhk->bthk", x, c(lp["q"])) + c(lp["q_bias"])
  k = rows_einsum("btd,dhk->bthk", x, c(lp["k"])) + c(lp["k_bias"])
  v = rows_einsum("btd,dhk->bthk", x, c(lp["v"])) + c(lp["v_bias"])
  return q, k, v


def _mlp_in(x, lp, c, row_scale=None):
  """silu(gate) * up [B, T, F] from either param layout (row_scale: as in _projections)."""
  if "gate_up" in lp or "gate_up_t" in lp:
    g, u = jnp.split(_dense(x, lp, "gate_up", c, row_scale), 2, axis=-1)
  else:
    g = rows_einsum("btd,df->btf", x, c(lp["gate"]))
    u = rows_einsum("btd,df->btf", x, c(lp["up"]))
  return checkpoint_name(jax.nn.silu(g) * u, "mlp_act")


def _normed(cfg, h, lp, norm: str):
  """(input of the next product, its per-row scale or None): the RMSNorm of h, or — when
  decode_layout "xla_folded" moved the gain into the weights (no `norm` key) — h itself and
  1 / RMS(h), applied after the product."""
  if norm not in lp:
    return h, rms_scale(h, cfg.rms_norm_eps)
  return checkpoint_name(rms_norm(h, lp[norm], cfg.rms_norm_eps), "norm"), None


def _fused_decode(cfg, h, lp, cache_kv) -> bool:
  """Whether this one-token step runs model/decode_linear.py's kernels (GPU; CPU interprets)."""
  b, t, D = h.shape
  if "qkv_t" not in lp or cache_kv is None or t != 1 or not decode_linear.available():
    return False
  H, K, Dh, F = cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head, cfg.intermediate_size
  ok = decode_linear.supported
  return (ok(b, D, (H + 2 * K) * Dh, "rope", Dh) and ok(b, H * Dh, D, "plain")
          and ok(b, D, 2 * F, "swiglu") and ok(b, F, D, "plain"))


def _qkv(cfg, h, lp, positions, c, fused):
  """Normed input -> q [B, T, H, Dh], k/v [B, T, K, Dh], RoPE applied to q and k."""
  b, t, _ = h.shape
  H, K, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head
  if fused:
    y = decode_linear.linear(
        h[:, 0], lp["qkv_t"], mode="rope", norm_scale=lp["input_norm"], eps=cfg.rms_norm_eps,
        bias=lp["qkv_bias"], positions=positions[:, 0], head_dim=Dh, rotary_heads=H + K,
        theta=cfg.rope_theta)[:, None]
    q, k, v = jnp.split(y, [H * Dh, (H + K) * Dh], axis=-1)
    return q.reshape(b, t, H, Dh), k.reshape(b, t, K, Dh), v.reshape(b, t, K, Dh)
  x, scale = _normed(cfg, h, lp, "input_norm")
  q, k, v = _projections(cfg, x, lp, c, scale)
  return rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta), v


def _out_mlp(cfg, h, a, lp, c, fused):
  """Attention output a [B, T, H, Dh] -> the block's output h [B, T, D] (o, residual, MLP)."""
  b, t = a.shape[:2]
  if fused:
    lin = decode_linear.linear
    hb = lin(a.reshape(b, -1), lp["o_t"], residual=h[:, 0])
    u = lin(hb, lp["gate_up_t"], mode="swiglu", norm_scale=lp["post_norm"], eps=cfg.rms_norm_eps)
    return lin(u, lp["down_t"], residual=hb)[:, None]
  if "o_t" in lp or "o_sk" in lp:
    h = h + _dense(a.reshape(b, t, -1), lp, "o", c)
  else:
    h = h + rows_einsum("bthk,hkd->btd", a, c(lp["o"]))
  x, scale = _normed(cfg, h, lp, "post_norm")
  return h + _dense(_mlp_in(x, lp, c, scale), lp, "down", c)


def _layer(cfg, h, lp, positions, mask, cache_kv, cache_end, *, impl, causal_only, dtype):
  """One decoder block. h [B, T, D]. Returns (h, (k_cache, v_cache) or None)."""
  c = lambda w: w.astype(dtype)
  fused = _fused_decode(cfg, h, lp, cache_kv)
  q, k, v = _qkv(cfg, h, lp, positions, c, fused)
  new_kv = None
  append_attend = None                       # the kernels that append k/v and attend, if any
  if cache_kv is not None and q.shape[1] == 1:
    if attention.decode_writes_cache(impl, q, cache_kv[0]):         # append + attend: one kernel
      append_attend = attention.attend_decode_write
    elif attention.decode_shares_rows(impl, q, cache_kv[0]):        # append, attend: one array
      append_attend = attention.append_attend_decode
  if append_attend is not None:
    a, kc, vc = append_attend(q, k.astype(q.dtype), v.astype(q.dtype), *cache_kv, cache_end)
    return _out_mlp(cfg, h, a, lp, c, fused), (kc, vc)
  if cache_kv is not None:
    kc, vc = cache_kv
    b, t = k.shape[:2]
    if attention.decode_appends_cache(impl, q, kc):                    # one kernel, in place
      kc, vc = attention.append_decode(k, v, kc, vc, cache_end)
    else:
      rows = jnp.arange(b)[:, None]
      slots = cache_end[:, None] + jnp.arange(t)[None, :]                   # [B, T]
      kc = kc.at[rows, slots].set(k.astype(kc.dtype), mode="drop")
      vc = vc.at[rows, slots].set(v.astype(vc.dtype), mode="drop")
    new_kv = (kc, vc)
    k, v = kc.astype(dtype), vc.astype(dtype)
  if cache_kv is not None and q.shape[1] == 1:                             # one-token decode
    a = attention.attend_decode(q, k, v, cache_end + 1, mask, impl=impl)
  else:
    a = attention.attend(q, k, v, mask, impl=impl, causal_only=causal_only)  # [B, T, H, Dh]
  return _out_mlp(cfg, h, a, lp, c, fused), new_kv


def _unstacked_layers(params: Params, num_layers: int) -> list:
  """The per-layer parameter dicts for an unrolled loop. Stacked [L, ...] leaves are split once:
  the transpose of one split is one concatenate, where indexing x[i] layer by layer would make
  the backward pass add L zero-padded [L, ...] cotangents (measured: ~23 ms of a 1.5B SFT step)."""
  layers = params["layers"]
  if isinstance(layers, (list, tuple)):                 # decode_layout: already one dict a layer
    return list(layers)
  split = jax.tree.map(lambda x: [jnp.squeeze(p, 0) for p in jnp.split(x, num_layers)], layers)
  return [jax.tree.map(lambda _, s: s[i], layers, split) for i in range(num_layers)]


def apply(params: Params, cfg: Qwen2Config, tokens: jax.Array, positions: jax.Array | None = None,
          segment_ids: jax.Array | None = None, cache: dict | None = None, *,
          attn_impl: str = "xla", compute_dtype=jnp.bfloat16, remat: str = "none",
          scan_layers: bool = True, return_hidden: bool = False):
  """Forward pass. tokens/positions/segment_ids [B, T] int32; segment id 0 marks padding.

  Without `cache`: full (optionally packed) forward; positions default to 0..T-1.
  With `cache` (see kv_cache.py): new tokens are appended per row at cache["end"].
  Returns (logits [B, T, V] float32 — or final hidden [B, T, D] if return_hidden —, new cache).
  """
  b, t = tokens.shape
  if positions is None:
    base = 0 if cache is None else cache["end"][:, None]
    positions = base + jnp.arange(t, dtype=jnp.int32)[None, :]
  # With no padding, packing or cache the mask is purely causal: fused kernels then skip it.
  causal_only = cache is None and segment_ids is None
  if segment_ids is None:
    segment_ids = jnp.ones((b, t), jnp.int32)
  cache_end = None if cache is None else cache["end"]
  # kv_cache.init_cache(per_layer=True): k/v are lists of [B, S, K, Dh], one buffer per layer.
  per_layer = cache is not None and isinstance(cache["k"], (list, tuple))
  if scan_layers and (per_layer or isinstance(params["layers"], (list, tuple))):
    raise ValueError("per-layer params (decode_layout) or a per-layer cache need "
                     "scan_layers=False")
  s = t if cache is None else cache["k"][0].shape[1] if per_layer else cache["k"].shape[2]
  mask = _attention_mask(segment_ids, cache_end, t, s)
  h = params["embed"].astype(compute_dtype)[tokens]                         # [B, T, D]

  layer = functools.partial(_layer, cfg, impl=attn_impl, causal_only=causal_only,
                            dtype=compute_dtype)
  policy = REMAT_POLICIES[remat]
  if remat != "none":
    layer = jax.checkpoint(layer, policy=policy, prevent_cse=not scan_layers)
  if cache is None:
    if scan_layers:
      def body(h, lp):
        h, _ = layer(h, lp, positions, mask, None, None)
        return h, None
      h, _ = jax.lax.scan(body, h, params["layers"])
    else:
      for lp in _unstacked_layers(params, cfg.num_layers):
        h, _ = layer(h, lp, positions, mask, None, None)
    new_cache = None
  else:
    kc, vc = cache["k"], cache["v"]
    if scan_layers:
      def body(carry, xs):
        h, kc, vc = carry
        lp, i = xs
        h, (ki, vi) = layer(h, lp, positions, mask, (kc[i], vc[i]), cache_end)
        return (h, kc.at[i].set(ki), vc.at[i].set(vi)), None
      (h, kc, vc), _ = jax.lax.scan(body, (h, kc, vc),
                                    (params["layers"], jnp.arange(cfg.num_layers)))
    else:
      kc, vc = (list(kc), list(vc)) if per_layer else (kc, vc)
      for i, lp in enumerate(_unstacked_layers(params, cfg.num_layers)):
        h, (ki, vi) = layer(h, lp, positions, mask, (kc[i], vc[i]), cache_end)
        if per_layer:
          kc[i], vc[i] = ki, vi
        else:
          kc, vc = kc.at[i].set(ki), vc.at[i].set(vi)
    new_cache = {"k": kc, "v": vc,
                 "end": cache_end + jnp.sum(segment_ids != 0, axis=1, dtype=jnp.int32)}
  if (not return_hidden and "lm_head_t" in params and cache is not None and t == 1
      and decode_linear.available()
      and decode_linear.supported(b, cfg.hidden_size, cfg.vocab_size, "plain")):
    logits = decode_linear.linear(h[:, 0], params["lm_head_t"], norm_scale=params["final_norm"],
                                  eps=cfg.rms_norm_eps, out_dtype=jnp.float32)
    return logits[:, None], new_cache
  h = rms_norm(h, params["final_norm"], cfg.rms_norm_eps)
  if return_hidden:
    return h, new_cache
  return logits_from_hidden(params, cfg, h), new_cache


def unembedding(params: Params, cfg: Qwen2Config) -> jax.Array:
  """The [D, V] output matrix (the transposed embedding when tied)."""
  if "lm_head_t" in params:                             # decode_layout(linear_impl="pallas")
    return params["lm_head_t"].T
  return params["embed"].T if cfg.tie_embeddings else params["lm_head"]


def logits_from_hidden(params: Params, cfg: Qwen2Config, h: jax.Array) -> jax.Array:
  """[B, T, D] -> float32 logits [B, T, V] (products accumulated in f32)."""
  w = unembedding(params, cfg).astype(h.dtype)
  return einsum_f32_out("btd,dv->btv", h, w)

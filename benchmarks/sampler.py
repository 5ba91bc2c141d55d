"""Sampler throughput: jitted KV-cache decode vs transformers generate vs the HBM roofline, and a
multi-turn rollout with a fixed-latency retriever stub.

  python benchmarks/sampler.py --models=0.5b,1.5b --batch_sizes=1,16,64,256 --json_out=/tmp/s.json
  python benchmarks/sampler.py --models=tiny --batch_sizes=1,4 --prompt_len=16
      --new_tokens=32 --hf=false --platform=cpu            # CPU smoke test (one line)

Per (model, batch): decode tok/s = batch * new_tokens / time of one jitted decode call producing
new_tokens per row (prefill excluded; no stops); end-to-end tok/s includes prefill and the host
loop. Roofline tok/s = batch / (bytes read per step / bandwidth), bytes = all weights once (the
tied embedding counted once, as the LM head) + the live KV cache (prompt + new/2 tokens per row,
the mean over the run). `kv_full` is the same with the whole max_len cache, which is what our
decode attention reads. Random weights, every number from this one device.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from absl import app, flags, logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # run from a checkout, uninstalled

from benchmarks.common import (StubRetriever, SyntheticTokenizer, first_difference,  # noqa: E402
                               roofline_bandwidth)

flags.DEFINE_list("models", ["0.5b", "1.5b"], "presets (model/config.py), e.g. 0.5b,1.5b,tiny")
flags.DEFINE_list("batch_sizes", ["1", "16", "64", "256"], "batch sizes")
flags.DEFINE_integer("prompt_len", 256, "prompt tokens per row")
flags.DEFINE_integer("new_tokens", 512, "generated tokens per row")
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "params / compute / cache dtype")
flags.DEFINE_enum("scan_layers", "both", ["true", "false", "both"], "layer scan in decode")
flags.DEFINE_string("attn_impl", "xla", "attention implementation (model/attention.py)")
flags.DEFINE_enum("pad_single_row", "auto", ["auto", "true", "false", "both"],
                  "batch 1 as two rows (Sampler(pad_single_row)); auto: the sampler's default; "
                  "both: one column each (batch 1 only)")
flags.DEFINE_list("linear_impls", ["xla"], "decode projections (qwen2.LINEAR_IMPLS): xla, "
                  "xla_folded (norm gains in the weights), pallas (model/decode_linear.py); the "
                  "last two unrolled only; several: one column each")
flags.DEFINE_integer("repeats", 2, "timed repeats after one warm-up (best is reported)")
flags.DEFINE_bool("hf", True, "also time transformers generate (torch, same dtype, CUDA only)")
flags.DEFINE_list("hf_batch_sizes", [], "batch sizes for transformers (default: all)")
flags.DEFINE_float("bandwidth_tbs", 0.0, "HBM copy bandwidth for the roofline (TB/s); 0: the "
                   "bandwidth measured on this device in this run: a device-to-device copy timed "
                   "by torch where it has CUDA, else XLA's elementwise loop (3.02 on an H100)")
flags.DEFINE_bool("measure_bandwidth", True, "also measure copy bandwidth on this device")
flags.DEFINE_bool("e2e", True, "also time end-to-end generate (a second compile per batch size)")
flags.DEFINE_bool("multi_turn", True, "run the multi-turn case with a retriever stub")
flags.DEFINE_integer("mt_batch", 64, "multi-turn batch size")
flags.DEFINE_integer("mt_turns", 3, "searches per row in the multi-turn case")
flags.DEFINE_integer("mt_period", 96, "policy tokens per turn (search call closes at its end)")
flags.DEFINE_integer("mt_obs_tokens", 128, "observation tokens per turn (max_tool_tokens)")
flags.DEFINE_float("retriever_latency_ms", 50.0, "fixed latency of the retriever stub")
flags.DEFINE_integer("mt_stagger", 1, "multi-turn: rows search at this many different offsets "
                     "within a turn (1: all rows at once, as in a lock-step batch)")
flags.DEFINE_list("overlap_retrieval", ["false"], "multi-turn: RolloutConfig.overlap_retrieval "
                  "settings to run (true, false): search while the other rows decode")
flags.DEFINE_list("steps_per_check", ["1"], "decode steps per on-device stop test "
                  "(RolloutConfig.steps_per_check); several values give one column each")
flags.DEFINE_integer("chunk_steps", 64, "decode steps per host check in end-to-end runs")
flags.DEFINE_float("pause_exit_fraction", 0.0, "multi-turn: end a chunk once this share of rows "
                   "paused at a tool call (RolloutConfig.pause_exit_fraction)")
flags.DEFINE_string("json_out", "", "write all results as JSON here")
flags.DEFINE_string("platform", "", "force a JAX platform (cpu for smoke tests)")
flags.DEFINE_integer("cache_write_max_rows", -1, "attn_impl=pallas: rows up to which the decode "
                     "kernel appends k/v itself (decode_attention.WRITE_MAX_ROWS; -1: as set there)")
flags.DEFINE_bool("cache_append", True, "attn_impl=pallas, rows above the cache_write limit: write "
                  "each step's k/v with one kernel (model/cache_append.py) instead of two XLA "
                  "scatters")
flags.DEFINE_integer("decode_split_k", 0, "linear_impls xla / xla_folded: store the q/k/v and o "
                     "weights split this many ways along K (qwen2.DECODE_SPLIT_K, "
                     "matmul.split_k_einsum; 0: off)")
flags.DEFINE_list("decode_split_k_weights", ["qkv", "o"], "which decode weights --decode_split_k "
                  "splits (qkv, o, down; qwen2.DECODE_SPLIT_K_WEIGHTS)")
flags.DEFINE_integer("decode_key_splits", 0, "attn_impl=pallas: programs per (row, kv head) of the "
                     "decode-attention kernel (decode_attention.KEY_SPLITS; 0: its own choice)")
flags.DEFINE_string("decode_attn_tiling", "", "attn_impl=pallas: the decode-attention kernel's "
                    "tiling 'bBLOCK wWARPS sSTAGES', any subset (decode_attention.BLOCK_KEYS, "
                    "NUM_WARPS, NUM_STAGES; benchmarks/decode_attention.py sweeps them)")
flags.DEFINE_bool("decode_shared_rows", True, "attn_impl=pallas, rows above the cache_write "
                  "limit: the append and attend kernels read the queries and new k/v from one "
                  "array (attention.SHARED_ROWS)")
flags.DEFINE_bool("cudnn_one_token", False, "attn_impl=cudnn: one-token decode steps through "
                  "cuDNN too (attention.CUDNN_ONE_TOKEN; off: through XLA)")
FLAGS = flags.FLAGS


def _best(fn, repeats):
  fn()                                                       # warm-up (compiles)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return min(times)


def roofline(cfg, batch, ctx, itemsize, bw_tbs):
  weights = cfg.num_params() * itemsize
  kv = 2 * cfg.num_layers * batch * ctx * cfg.num_kv_heads * cfg.dim_per_head * itemsize
  return batch / ((weights + kv) / (bw_tbs * 1e12))


def bench_ours(cfg, params, batch, scan, dtype, rng, steps_per_check=1, linear_impl="xla",
               pad_single_row=None):
  import numpy as np
  from masksearch_jax.protocol import DEFAULT
  from masksearch_jax.rollout import sampler as sampler_lib, types as T
  P, N = FLAGS.prompt_len, FLAGS.new_tokens
  tok = SyntheticTokenizer(cfg.vocab_size, DEFAULT)
  prompts = [list(rng.integers(16, cfg.vocab_size, P)) for _ in range(batch)]
  out = {}
  for name, chunk in (("decode", N), ("e2e", FLAGS.chunk_steps))[:2 if FLAGS.e2e else 1]:
    rcfg = T.RolloutConfig(max_len=P + N, max_new_tokens=N, prompt_buckets=(P,), chunk_steps=chunk,
                           use_tools=False, steps_per_check=steps_per_check)
    s = sampler_lib.Sampler(cfg, tok, T.SamplingConfig(temperature=0.0), rcfg, compute_dtype=dtype,
                            cache_dtype=dtype, attn_impl=FLAGS.attn_impl, scan_layers=scan,
                            linear_impl=linear_impl, pad_single_row=pad_single_row)
    if name == "decode":
      holder = {}

      def one():
        state, _ = s.start(params, prompts)
        state["length"].block_until_ready()
        t = time.perf_counter()
        state = s.engine.decode(params, state)
        state["length"].block_until_ready()
        holder["t"] = time.perf_counter() - t
        assert int(state["length"][:batch].min()) == P + N, "decode stopped early"
      one()
      ts = []
      for _ in range(FLAGS.repeats):
        one()
        ts.append(holder["t"])
      out["decode_tok_s"] = batch * N / min(ts)
    else:
      out["e2e_tok_s"] = batch * N / _best(lambda: s.generate(params, prompts), FLAGS.repeats)
  return out


def bench_hf(cfg, batch, rng):
  import torch
  import transformers
  if not torch.cuda.is_available():
    return {"hf_note": "torch has no CUDA: transformers generate skipped"}
  P, N = FLAGS.prompt_len, FLAGS.new_tokens
  dt = torch.bfloat16 if FLAGS.dtype == "bfloat16" else torch.float32
  hf_cfg = transformers.Qwen2Config(**cfg.to_hf_dict(FLAGS.dtype))
  model = transformers.Qwen2ForCausalLM(hf_cfg).to(device="cuda", dtype=dt).eval()
  ids = torch.tensor(rng.integers(16, cfg.vocab_size, (batch, P)), device="cuda")
  att = torch.ones_like(ids)

  def run():
    with torch.no_grad():
      model.generate(ids, attention_mask=att, do_sample=False, max_new_tokens=N, min_new_tokens=N,
                     pad_token_id=0)
    torch.cuda.synchronize()
  t = _best(run, 1)
  del model
  torch.cuda.empty_cache()
  return {"hf_tok_s": batch * N / t}


def bench_multi_turn(cfg, params, scan, dtype):
  import numpy as np
  from masksearch_jax.protocol import DEFAULT
  from masksearch_jax.rollout import hooks, sampler as sampler_lib, types as T
  b, turns, period = FLAGS.mt_batch, FLAGS.mt_turns, FLAGS.mt_period
  tok = SyntheticTokenizer(cfg.vocab_size, DEFAULT)
  ids = tok.tag_id
  stagger = max(1, FLAGS.mt_stagger)
  width = (turns + 1) * period + period
  # Each turn: free tokens, then a forced `<search> q q q </search>`; finally a forced answer.
  # Row i's calls come (i % stagger) * period / stagger tokens later than row 0's.
  script = np.full((b, width), -1, np.int64)
  for i in range(b):
    off = (i % stagger) * period // stagger
    for t in range(turns):
      end = (t + 1) * period + off
      script[i, end - 5:end] = [ids[DEFAULT.search_open], 100 + t, 200 + t, 300 + t,
                                ids[DEFAULT.search_close]]
    end = (turns + 1) * period + off
    script[i, end - 3:end] = [ids[DEFAULT.answer_open], 400, ids[DEFAULT.answer_close]]
  forced = hooks.forced_tokens(script)

  def hook(logits, tokens, mask, length):        # free tokens never write a tag (ids 1..8)
    return forced(logits.at[:, 1:len(ids) + 1].set(-1e9), tokens, mask, length)
  ret = StubRetriever(FLAGS.retriever_latency_ms / 1e3)
  max_len = FLAGS.prompt_len + width + turns * (FLAGS.mt_obs_tokens + 8)
  rng = np.random.default_rng(1)
  prompts = [list(rng.integers(16, cfg.vocab_size, FLAGS.prompt_len)) for _ in range(b)]
  out_rows, first = [], None
  for overlap in FLAGS.overlap_retrieval:
    rcfg = T.RolloutConfig(max_len=max_len, prompt_buckets=(FLAGS.prompt_len,),
                           chunk_steps=FLAGS.chunk_steps, max_turns=turns,
                           max_tool_tokens=FLAGS.mt_obs_tokens, top_k_docs=3,
                           pause_exit_fraction=FLAGS.pause_exit_fraction,
                           overlap_retrieval=overlap.lower() == "true")
    s = sampler_lib.Sampler(cfg, tok, T.SamplingConfig(temperature=0.0), rcfg, retriever=ret,
                            compute_dtype=dtype, cache_dtype=dtype, attn_impl=FLAGS.attn_impl,
                            scan_layers=scan, logits_hook=hook)
    warm = s.generate(params, prompts)                           # warm-up
    out = s.generate(params, prompts)
    if first is None:
      first = out
    st = dict(out.stats)
    st.update(same_tokens_as_warmup=bool(np.array_equal(out.tokens, warm.tokens)),
              tool_errors=int(np.sum(out.num_tool_errors)), **first_difference(out, first))
    st.update(batch=b, turns=turns, stagger=stagger, overlap=rcfg.overlap_retrieval,
              retriever_calls_per_rollout=st["rounds"], finish=sorted(set(out.finish_reason)),
              same_tokens_as_first=bool(np.array_equal(out.tokens, first.tokens)),
              rows_unlike_first=int(np.sum(np.any(out.tokens != first.tokens, axis=1))),
              policy_tok_s=int(out.loss_mask.sum()) / st["total_s"])
    out_rows.append(st)
  return out_rows


def apply_decode_settings() -> None:
  """The decode-kernel flags -> the module settings they A/B (read when the decode step is
  traced, so process-wide); profile_decode.py applies the same ones."""
  from masksearch_jax.model import attention, cache_append, decode_attention, qwen2
  cache_append.ENABLED = FLAGS.cache_append
  if FLAGS.cache_write_max_rows >= 0:
    decode_attention.WRITE_MAX_ROWS = FLAGS.cache_write_max_rows
  decode_attention.KEY_SPLITS = FLAGS.decode_key_splits or None
  decode_attention.set_tiling(FLAGS.decode_attn_tiling)
  attention.SHARED_ROWS = FLAGS.decode_shared_rows
  attention.CUDNN_ONE_TOKEN = FLAGS.cudnn_one_token
  qwen2.DECODE_SPLIT_K = FLAGS.decode_split_k
  qwen2.DECODE_SPLIT_K_WEIGHTS = tuple(FLAGS.decode_split_k_weights)


def main(argv):
  del argv
  if FLAGS.platform:
    os.environ["JAX_PLATFORMS"] = FLAGS.platform
  if FLAGS.hf:            # torch shares the GPU: JAX must not grab 75% of it up front
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  import jax
  import jax.numpy as jnp
  import numpy as np
  from masksearch_jax.model import config, qwen2
  apply_decode_settings()
  dtype = jnp.bfloat16 if FLAGS.dtype == "bfloat16" else jnp.float32
  itemsize = 2 if FLAGS.dtype == "bfloat16" else 4
  dev = jax.devices()[0]
  results = {"device": str(dev.device_kind), "flags": {k: str(getattr(FLAGS, k)) for k in
             ("prompt_len", "new_tokens", "dtype", "attn_impl", "chunk_steps")}, "rows": []}
  bw = FLAGS.bandwidth_tbs
  if FLAGS.measure_bandwidth or not bw:
    measured = roofline_bandwidth(dev.platform)
    logging.info("copy bandwidth (TB/s): %s", measured)
    bw = bw or measured["roofline_tbs"]
    results.update({k: v for k, v in measured.items() if k != "roofline_tbs"})
  results["roofline_tbs"] = bw
  scans = {"true": [True], "false": [False], "both": [True, False]}[FLAGS.scan_layers]
  spcs = [int(k) for k in FLAGS.steps_per_check]
  hf_bs = set(FLAGS.hf_batch_sizes or FLAGS.batch_sizes)
  ctx = FLAGS.prompt_len + FLAGS.new_tokens // 2
  for name in FLAGS.models:
    cfg = config.get_config(name)
    params = jax.jit(qwen2.init_params, static_argnums=(0,), static_argnames=("dtype",))(
        cfg, jax.random.PRNGKey(0), dtype=dtype)
    for bs in FLAGS.batch_sizes:
      batch = int(bs)
      row = {"model": name, "batch": batch,
             "roofline_tok_s": roofline(cfg, batch, ctx, itemsize, bw),
             "roofline_kv_full_tok_s": roofline(cfg, batch, FLAGS.prompt_len + FLAGS.new_tokens,
                                                itemsize, bw)}
      for scan in scans:
        for k in spcs:
          pads = {"auto": [None], "true": [True], "false": [False], "both": [False, True]}[
              FLAGS.pad_single_row] if batch == 1 else [None]
          for lin, pad in ((lin, pad) for lin in FLAGS.linear_impls for pad in pads):
            if lin != "xla" and scan:
              continue                                       # the fused kernels need unrolled layers
            try:
              r = bench_ours(cfg, params, batch, scan, dtype, np.random.default_rng(0), k, lin, pad)
            except Exception as e:                           # e.g. out of memory at a large batch
              logging.exception("ours failed: %s batch %d scan %s linear %s", name, batch, scan, lin)
              r = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            suffix = (f"_scan{int(scan)}" + (f"_k{k}" if len(spcs) > 1 else "")
                      + (f"_{lin}" if len(FLAGS.linear_impls) > 1 else "")
                      + (f"_pad{int(pad)}" if len(pads) > 1 else ""))
            row.update({f"{n}{suffix}": v for n, v in r.items()})
      if FLAGS.hf and bs in hf_bs:
        try:
          row.update(bench_hf(cfg, batch, np.random.default_rng(0)))
        except Exception as e:
          logging.exception("transformers failed")
          row["hf_note"] = f"{type(e).__name__}: {str(e)[:200]}"
      results["rows"].append(row)
      print(json.dumps(row), flush=True)
    if FLAGS.multi_turn:
      for scan in scans[:1]:
        for mt in bench_multi_turn(cfg, params, scan, dtype):
          mt.update(model=name, scan_layers=scan)
          results.setdefault("multi_turn", []).append(mt)
          print(json.dumps(mt), flush=True)
    del params
  _print_table(results)
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump(results, f, indent=1)


def _print_table(res):
  print(f"\ndevice: {res['device']}  prompt {FLAGS.prompt_len}  new {FLAGS.new_tokens}  "
        f"{FLAGS.dtype}  roofline at {res['roofline_tbs']:.2f} TB/s"
        + (f"  (XLA elementwise copy {res['measured_copy_tbs']:.2f} TB/s)"
           if "measured_copy_tbs" in res else "")
        + (f"  (torch device copy {res['torch_copy_tbs']:.2f} TB/s)" if "torch_copy_tbs" in res else ""))
  # one column per measured variant: decode/e2e x scan1 (layer scan) / scan0 (unrolled) [x k]
  cols = sorted({k for r in res["rows"] for k in r
                 if k.startswith(("decode_tok_s", "e2e_tok_s"))})
  cols += [c for c in ("hf_tok_s", "roofline_tok_s") if any(c in r for r in res["rows"])]
  print(" ".join([f"{'model':>8}", f"{'batch':>5}"] + [f"{c.replace('_tok_s', ''):>16}"
                                                      for c in cols] + [f"{'best/roof':>9}"]))
  for r in res["rows"]:
    best = max([v for k, v in r.items() if k.startswith("decode_tok_s")] or [0.0])
    vals = [f"{r[c]:16.1f}" if isinstance(r.get(c), float) else f"{'-':>16}" for c in cols]
    print(" ".join([f"{r['model']:>8}", f"{r['batch']:>5}"] + vals
                   + [f"{100 * best / r['roofline_tok_s']:8.1f}%"]))
    for k in ("hf_note",) + tuple(k for k in r if k.startswith("error")):
      if r.get(k):
        print(f"{'':>15}{k}: {r[k]}")
  for mt in res.get("multi_turn", []):
    print(f"multi-turn {mt['model']}: batch {mt['batch']}, {mt['turns']} searches/row, "
          f"stagger {mt['stagger']}, overlap {mt['overlap']}, "
          f"{mt['rounds']} retriever rounds, total {mt['total_s']:.2f}s, decode {mt['decode_s']:.2f}s, "
          f"retrieve {mt['retrieve_s']:.2f}s, splice {mt['splice_s']:.2f}s, "
          f"outside decode {100 * mt['outside_decode_share']:.1f}%")


if __name__ == "__main__":
  app.run(main)

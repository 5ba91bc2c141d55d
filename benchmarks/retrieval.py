"""Retrieval benchmark: ANN build time / queries/s / recall@k, and encoder passages/s.

  python benchmarks/retrieval.py                       # 1M x 384, ScaNN vs exact (+ faiss HNSW32)
  python benchmarks/retrieval.py --n=100000 --skip_encoder
  python benchmarks/retrieval.py --skip_ann --encoder_passages=20000 --encoder_batch=512 \
      --encoder_dtype=bfloat16                         # encoder on a GPU

Data (issue 3): N clustered unit vectors — `centres` Gaussian centres, per-coordinate noise
sigma, L2-normalised — and queries drawn the same way, fixed seed. Recall@k is measured against
the exact brute-force index. ScaNN is built once and swept over search-time settings
(leaves searched, re-ranked candidates), so one run shows the recall / speed trade-off.
faiss HNSW32 runs only where `faiss` imports (benchmark-only dependency; `--faiss_path` adds a
directory such as a `pip install --target` location to sys.path).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # pylint: disable=g-import-not-at-top

from masksearch_jax.retrieval import index as index_lib  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
flags.DEFINE_integer("n", 1_000_000, "Database vectors.")
flags.DEFINE_integer("dim", 384, "Vector dimension.")
flags.DEFINE_integer("centres", 2000, "Gaussian cluster centres.")
flags.DEFINE_float("sigma", 0.6, "Per-coordinate noise around a centre.")
flags.DEFINE_integer("queries", 1000, "Query vectors.")
flags.DEFINE_integer("k", 10, "Neighbours per query (recall@k).")
flags.DEFINE_integer("seed", 0, "Data seed.")
flags.DEFINE_integer("repeats", 3, "Timed search passes (best is reported).")
flags.DEFINE_bool("skip_ann", False, "Skip the vector index part.")
flags.DEFINE_bool("skip_exact", False, "Skip exact search (then recall is not measured).")
flags.DEFINE_bool("skip_faiss", False, "Skip faiss HNSW32 even if importable.")
flags.DEFINE_string("faiss_path", None, "Extra sys.path entry holding faiss.")
flags.DEFINE_integer("faiss_ef_construction", 40, "HNSW efConstruction (faiss default 40).")
flags.DEFINE_list("faiss_ef_search", ["16", "32", "64"], "HNSW efSearch values to sweep.")
# ScaNN build parameters (default: index.scann_params_for(n)).
flags.DEFINE_integer("num_leaves", None, "ScaNN partitions.")
flags.DEFINE_integer("training_sample_size", None, "ScaNN training sample.")
flags.DEFINE_enum("scoring", None, ["int8", "ah", "float"], "ScaNN candidate scoring.")
flags.DEFINE_integer("dims_per_block", None, "ScaNN AH dims per block (scoring=ah).")
flags.DEFINE_float("aq_threshold", None, "ScaNN anisotropic threshold.")
flags.DEFINE_integer("training_iterations", None, "ScaNN k-means iterations.")
flags.DEFINE_integer("reorder_k", None, "ScaNN default re-rank candidates.")
flags.DEFINE_integer("num_leaves_to_search", None, "ScaNN default leaves searched.")
flags.DEFINE_list("sweep_leaves", ["4", "5", "6", "8", "10"], "Leaves searched, swept.")
flags.DEFINE_list("sweep_reorder", ["20", "40"], "Re-ranked candidates, swept.")
flags.DEFINE_string("json_out", None, "Also write all rows as JSON here.")
# Encoder.
flags.DEFINE_bool("skip_encoder", False, "Skip the encoder part.")
flags.DEFINE_string("model_dir", None, "Encoder model dir (default: embedded MiniLM).")
flags.DEFINE_integer("encoder_passages", 256, "Passages to encode (timed pass).")
flags.DEFINE_integer("encoder_batch", 64, "Encoder rows per step (all devices).")
flags.DEFINE_integer("encoder_max_length", 256, "Encoder max tokens.")
flags.DEFINE_string("encoder_dtype", "float32", "Encoder compute dtype.")


def clustered(rng: np.random.Generator, centres: np.ndarray, n: int, sigma: float,
              chunk: int = 100_000) -> np.ndarray:
  """[n, d] float32 unit vectors: centre + N(0, sigma^2) noise, normalised; built in chunks."""
  out = np.empty((n, centres.shape[1]), np.float32)
  for s in range(0, n, chunk):
    m = min(chunk, n - s)
    x = centres[rng.integers(0, len(centres), m)]
    x += sigma * rng.standard_normal(x.shape, dtype=np.float32)
    out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
  return out


def recall(ref: np.ndarray | None, got: np.ndarray) -> float:
  if ref is None:
    return float("nan")
  k = ref.shape[1]
  return float(np.mean([len(set(a) & set(b[:k])) / k for a, b in zip(ref, got)]))


def timed_search(fn, repeats: int) -> tuple[np.ndarray, float, float]:
  """Best-of-`repeats` wall seconds, plus the process CPU seconds of that pass (all threads)."""
  best, best_cpu, rows = float("inf"), float("inf"), None
  for _ in range(repeats):
    t, c = time.perf_counter(), time.process_time()
    rows = fn()
    dt, dc = time.perf_counter() - t, time.process_time() - c
    if dt < best:
      best, best_cpu = dt, dc
  return rows, best, best_cpu


def _row(method: str, build: tuple[float, float], n: int, wall: float, cpu: float,
         rec: float) -> dict:
  """`q_per_cpu_s` = queries per CPU-second of this process (all threads). On a shared machine
  wall q/s understates what dedicated cores give; cores x q_per_cpu_s bounds it from above."""
  return dict(method=method, build_s=build[0], build_cpu_s=build[1], qps=n / wall,
              q_per_cpu_s=n / max(cpu, 1e-9), recall=rec)


def bench_ann(rows_out: list[dict]) -> None:
  rng = np.random.default_rng(FLAGS.seed)
  centres = rng.standard_normal((FLAGS.centres, FLAGS.dim), dtype=np.float32)
  t = time.perf_counter()
  db = clustered(rng, centres, FLAGS.n, FLAGS.sigma)
  q = clustered(rng, centres, FLAGS.queries, FLAGS.sigma)
  print(f"data: {FLAGS.n} x {FLAGS.dim}, {FLAGS.queries} queries, "
        f"generated in {time.perf_counter() - t:.1f} s", flush=True)
  k, nq = FLAGS.k, FLAGS.queries

  ref = None
  if not FLAGS.skip_exact:
    exact = index_lib.ExactIndex(db)
    (_, ref), dt, dc = timed_search(lambda: exact.search(q, k), 1)
    rows_out.append(_row("exact (numpy BLAS)", (0.0, 0.0), nq, dt, dc, 1.0))
    print(rows_out[-1], flush=True)

  overrides = dict(num_leaves=FLAGS.num_leaves, training_sample_size=FLAGS.training_sample_size,
                   scoring=FLAGS.scoring, dims_per_block=FLAGS.dims_per_block, aq_threshold=FLAGS.aq_threshold,
                   training_iterations=FLAGS.training_iterations, reorder_k=FLAGS.reorder_k,
                   num_leaves_to_search=FLAGS.num_leaves_to_search)
  params = index_lib.scann_params_for(FLAGS.n, **overrides)
  t, c = time.perf_counter(), time.process_time()
  sc = index_lib.ScannIndex.build(db, params, k=k)
  build = (time.perf_counter() - t, time.process_time() - c)
  print(f"scann build {build[0]:.1f} s ({build[1]:.1f} CPU s) with {params}", flush=True)
  (_, got), dt, dc = timed_search(lambda: sc.search(q, k), FLAGS.repeats)
  rows_out.append(_row(f"scann default (leaves {params.num_leaves_to_search}, "
                       f"reorder {params.reorder_k})", build, nq, dt, dc, recall(ref, got)))
  print(rows_out[-1], flush=True)
  if params.num_leaves:
    for leaves in map(int, FLAGS.sweep_leaves):
      for reorder in map(int, FLAGS.sweep_reorder):
        fn = lambda: sc.search(q, k, leaves_to_search=leaves, reorder_k=reorder)[1]  # pylint: disable=cell-var-from-loop
        got, dt, dc = timed_search(fn, FLAGS.repeats)
        rows_out.append(_row(f"scann leaves {leaves}, reorder {reorder}", build, nq, dt, dc,
                             recall(ref, got)))
        print(rows_out[-1], flush=True)
  del sc

  if FLAGS.skip_faiss:
    return
  if FLAGS.faiss_path:
    sys.path.insert(0, FLAGS.faiss_path)
  try:
    import faiss  # pylint: disable=g-import-not-at-top
  except ImportError:
    print("faiss not importable: skipping HNSW32 (pip install faiss-cpu, or --faiss_path)")
    return
  t, c = time.perf_counter(), time.process_time()
  hnsw = faiss.IndexHNSWFlat(FLAGS.dim, 32, faiss.METRIC_INNER_PRODUCT)
  hnsw.hnsw.efConstruction = FLAGS.faiss_ef_construction
  hnsw.add(db)
  build = (time.perf_counter() - t, time.process_time() - c)
  print(f"faiss HNSW32 build {build[0]:.1f} s ({build[1]:.1f} CPU s)", flush=True)
  for ef in map(int, FLAGS.faiss_ef_search):
    hnsw.hnsw.efSearch = ef
    got, dt, dc = timed_search(lambda: hnsw.search(q, k)[1], FLAGS.repeats)
    rows_out.append(_row(f"faiss HNSW32 efSearch {ef}", build, nq, dt, dc, recall(ref, got)))
    print(rows_out[-1], flush=True)


def _encoder_texts(n: int) -> list[str]:
  """Real Wikipedia paragraphs when the shared HotpotQA corpus is present, else synthetic."""
  path = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hotpotqa_dev100"
  texts = []
  if (path / "corpus.jsonl").exists():
    texts = [json.loads(l)["contents"] for l in open(path / "corpus.jsonl", encoding="utf-8")]
  if not texts:
    rng = np.random.default_rng(0)
    words = "the of and in a to was is for on as by with he at from his an were are".split()
    texts = [" ".join(rng.choice(words, 100)) for _ in range(512)]
  return [texts[i % len(texts)] for i in range(n)]


def bench_encoder(rows_out: list[dict]) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  from masksearch_jax.retrieval import encoder as enc_lib  # pylint: disable=g-import-not-at-top
  cfg = enc_lib.config_from_model_dir(FLAGS.model_dir, batch_size=FLAGS.encoder_batch,
                                      max_length=FLAGS.encoder_max_length,
                                      dtype=FLAGS.encoder_dtype)
  e = enc_lib.Encoder(cfg)
  texts = _encoder_texts(FLAGS.encoder_passages)
  ids = e.tokenize(texts, "passage")
  tokens = sum(len(x) for x in ids)
  t = time.perf_counter()
  e.encode_ids(ids)  # compiles every bucket shape this data needs
  first = time.perf_counter() - t
  t, c = time.perf_counter(), time.process_time()
  e.encode(texts, "passage")  # timed: tokenisation + forward + pooling, compiled
  dt, dc = time.perf_counter() - t, time.process_time() - c
  dev = jax.devices()[0]
  name = Path(cfg.model_dir).name
  name = Path(cfg.model_dir).parent.name if name == "model" else name
  rows_out.append(dict(method=f"encoder {name} {cfg.dtype} "
                       f"max_len {cfg.max_length} batch {e.batch_size}",
                       device=f"{len(jax.devices())} x {dev.device_kind}",
                       passages_per_s=len(texts) / dt, tokens_per_s=tokens / dt,
                       passages_per_cpu_s=len(texts) / dc,
                       first_pass_s=first))
  print(rows_out[-1], flush=True)


def main(argv):
  del argv
  rows: list[dict] = []
  print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
  if not FLAGS.skip_ann:
    bench_ann(rows)
  if not FLAGS.skip_encoder:
    bench_encoder(rows)
  print(f"\n| method | build s (CPU s) | queries/s wall | queries per CPU-s | "
        f"recall@{FLAGS.k} |")
  print("|---|---:|---:|---:|---:|")
  for r in rows:
    if "qps" in r:
      print(f"| {r['method']} | {r['build_s']:.1f} ({r['build_cpu_s']:.0f}) | {r['qps']:.0f} | "
            f"{r['q_per_cpu_s']:.0f} | {r['recall']:.3f} |")
  for r in rows:
    if "passages_per_s" in r:
      print(f"\n{r['method']} on {r['device']}: {r['passages_per_s']:.1f} passages/s, "
            f"{r['tokens_per_s']:.0f} tokens/s, {r['passages_per_cpu_s']:.2f} passages per CPU s "
            f"(first pass incl. compile {r['first_pass_s']:.1f} s)")
  if FLAGS.json_out:
    Path(FLAGS.json_out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
  app.run(main)

"""Corpus JSONL -> index directory (passage store, embeddings, vector index).

  python -m masksearch_jax.retrieval.build_index --corpus=wiki18.jsonl --out_dir=/data/wiki_idx

Each stage is skipped when its output is complete, and corpus encoding resumes mid-way, so an
interrupted build is rerun with the same command.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from absl import app, flags, logging

from masksearch_jax.retrieval import corpus as corpus_lib
from masksearch_jax.retrieval import embeddings as emb_lib
from masksearch_jax.retrieval import index as index_lib
from masksearch_jax.retrieval import retriever as retriever_lib
from masksearch_jax.retrieval import store as store_lib
from masksearch_jax.retrieval.encoder import Encoder, EncoderConfig, config_from_model_dir


def build_index_dir(corpus: str | Path, out_dir: str | Path, encoder_cfg: EncoderConfig, *,
                    backend: str = "scann", scann_overrides: dict | None = None,
                    skip_bad: bool = False, block_rows: int = 8192) -> dict:
  """Runs all stages; returns a summary dict (also written to `build.json`)."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  summary: dict = {"corpus": str(corpus), "backend": backend}
  t0 = time.perf_counter()
  if not store_lib.store_exists(out):
    stats = corpus_lib.ReadStats()
    n = store_lib.write_store(out, corpus_lib.iter_passages(corpus, skip_bad=skip_bad,
                                                            stats=stats))
    if stats.skipped:
      logging.warning("skipped %d bad lines of %s: %s", stats.skipped, corpus,
                      stats.skipped_by_reason)
    summary.update(passages=n, skipped=stats.skipped, skipped_by_reason=stats.skipped_by_reason)
  store = store_lib.PassageStore(out)
  if not len(store):
    raise ValueError(f"{corpus}: no passages")
  summary["store_s"] = time.perf_counter() - t0

  t1 = time.perf_counter()
  encoder = Encoder(encoder_cfg)
  emb_lib.encode_store(encoder, store, out, block_rows=block_rows)
  summary["encode_s"] = time.perf_counter() - t1
  retriever_lib.write_retriever_meta(out, encoder_cfg)

  t2 = time.perf_counter()
  emb = emb_lib.read_embeddings(out)
  params = index_lib.scann_params_for(len(emb), **(scann_overrides or {}))
  index = index_lib.build_index(emb, backend, params)
  index_lib.save_index(index, out)
  summary["index_s"] = time.perf_counter() - t2
  summary["n"] = len(emb)
  (out / "build.json").write_text(json.dumps(summary, indent=1))
  return summary


FLAGS = flags.FLAGS
if __name__ == "__main__":
  flags.DEFINE_string("corpus", None, "JSONL corpus ({id,title,text} or {id,contents}).")
  flags.DEFINE_string("out_dir", None, "Index directory to create or resume.")
  flags.DEFINE_string("model_dir", None, "HF BERT-family model dir (default: embedded MiniLM).")
  flags.DEFINE_enum("pooling", None, ["mean", "cls"], "Override the model dir's pooling.")
  flags.DEFINE_bool("normalize", None, "Override L2 normalisation.")
  flags.DEFINE_integer("max_length", None, "Override max tokens per text.")
  flags.DEFINE_string("query_prefix", None, "E5: 'query: '.")
  flags.DEFINE_string("passage_prefix", None, "E5: 'passage: '.")
  flags.DEFINE_integer("batch_size", 128, "Encoder rows per step (all devices together).")
  flags.DEFINE_string("dtype", None, "Encoder compute dtype (float32 / bfloat16).")
  flags.DEFINE_integer("block_rows", 8192, "Rows per durable embedding write.")
  flags.DEFINE_enum("backend", "scann", ["scann", "exact"], "Vector index.")
  flags.DEFINE_integer("num_leaves", None, "ScaNN partitions (0 = none; default ~sqrt(N)).")
  flags.DEFINE_integer("num_leaves_to_search", None, "ScaNN partitions searched per query.")
  flags.DEFINE_integer("training_sample_size", None, "ScaNN k-means / AH training sample.")
  flags.DEFINE_enum("scoring", None, ["int8", "ah", "float"], "ScaNN candidate scoring.")
  flags.DEFINE_integer("dims_per_block", None, "ScaNN AH dims per block (scoring=ah).")
  flags.DEFINE_float("aq_threshold", None, "ScaNN anisotropic quantisation threshold.")
  flags.DEFINE_integer("reorder_k", None, "ScaNN candidates re-scored exactly.")
  flags.DEFINE_bool("skip_bad_lines", False, "Skip and count bad corpus lines instead of failing.")


def main(argv):
  del argv
  if not FLAGS.corpus or not FLAGS.out_dir:
    raise app.UsageError("--corpus and --out_dir are required")
  cfg = config_from_model_dir(
      FLAGS.model_dir, pooling=FLAGS.pooling, normalize=FLAGS.normalize,
      max_length=FLAGS.max_length, query_prefix=FLAGS.query_prefix,
      passage_prefix=FLAGS.passage_prefix, batch_size=FLAGS.batch_size, dtype=FLAGS.dtype)
  scann = {k: getattr(FLAGS, k) for k in ("num_leaves", "num_leaves_to_search",
                                          "training_sample_size", "scoring", "dims_per_block",
                                          "aq_threshold", "reorder_k")}
  summary = build_index_dir(FLAGS.corpus, FLAGS.out_dir, cfg, backend=FLAGS.backend,
                            scann_overrides=scann, skip_bad=FLAGS.skip_bad_lines,
                            block_rows=FLAGS.block_rows)
  print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  app.run(main)

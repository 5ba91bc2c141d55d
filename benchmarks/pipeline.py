r"""Input-pipeline throughput: examples/s and packed tokens/s on the CPU.

Tells how far the grain pipeline (read JSONL -> shuffle -> BPE tokenize ->
first-fit pack -> batch) stays ahead of a training step. The tokenizer is a
byte-level BPE trained in-script with `tokenizers` on the same text (no
download); a real Qwen tokenizer is of the same family and similar speed.

  python -m benchmarks.pipeline --cores=2 --num_threads=0,2 --num_workers=2
  python -m benchmarks.pipeline --data=/path/to/ramp.jsonl --text_field=query
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import random
import tempfile
import time

from absl import app
from absl import flags

from masksearch_jax.data import pipeline

_DEFAULT_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" /
                 "hotpotqa_dev100" / "corpus.jsonl")

_DATA = flags.DEFINE_string(
    "data", None, "JSONL input; default: ../shared/data/hotpotqa_dev100/"
    "corpus.jsonl if present, else synthetic text.")
_TEXT_FIELD = flags.DEFINE_string("text_field", "contents", "record field to tokenize")
_SYNTHETIC = flags.DEFINE_integer("synthetic_records", 2000,
                                  "records to generate when no data is found")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 2048, "packed row length")
_BATCH = flags.DEFINE_integer("batch_size", 8, "rows per batch")
_EPOCHS = flags.DEFINE_integer("epochs", 10, "passes over the data per run")
_WINDOW = flags.DEFINE_integer("pack_window", 256, "examples per packing window")
_THREADS = flags.DEFINE_list("num_threads", ["0", "2"], "grain read threads to try")
_WORKERS = flags.DEFINE_list("num_workers", ["2"], "grain worker processes to try "
                             "(each with num_threads=0)")
_VOCAB = flags.DEFINE_integer("vocab_size", 8192, "BPE vocabulary to train")
_TOKENIZER_JSON = flags.DEFINE_string(
    "tokenizer_json", None, "an HF tokenizer.json (e.g. a Qwen2.5 checkpoint's) "
    "to use instead of training a BPE in-script")
_CORES = flags.DEFINE_integer("cores", 2, "pin the process to this many CPU cores (0: all)")


def _texts(path: str | None, field: str, n_synth: int) -> tuple[list[str], str]:
  if path is None and _DEFAULT_DATA.exists():
    path = str(_DEFAULT_DATA)
  if path is not None:
    src = pipeline.open_source([path])
    return [src[i][field] for i in range(len(src))], path
  rng = random.Random(0)
  words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
           for _ in range(5000)]
  texts = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 300)))
           for _ in range(n_synth)]
  return texts, f"synthetic ({n_synth} records)"


def _train_tokenizer(texts: list[str], vocab_size: int):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer)
  return tok


def _run(path: str, encode, threads: int, workers: int) -> dict[str, float]:
  cfg = pipeline.PipelineConfig(
      paths=(path,), seq_len=_SEQ_LEN.value, batch_size=_BATCH.value, seed=0,
      num_epochs=_EPOCHS.value, pack_window=_WINDOW.value, process_index=0,
      process_count=1, num_threads=threads, num_workers=workers)
  start = time.perf_counter()
  it = pipeline.make_iterator(cfg, encode)
  next(it)  # start-up (worker spawn, first window) is timed separately
  first_s = time.perf_counter() - start
  batches = examples = real_tokens = 0
  start = time.perf_counter()
  for b in it:
    batches += 1
    examples += int(b["segment_ids"].max(axis=1).sum())
    real_tokens += int((b["segment_ids"] > 0).sum())
  secs = time.perf_counter() - start
  if workers:
    it.close()
  slots = batches * _BATCH.value * _SEQ_LEN.value
  return {"examples/s": examples / secs, "tokens/s": real_tokens / secs,
          "batches/s": batches / secs, "fill": real_tokens / max(1, slots),
          "examples": examples, "secs": secs, "first_s": first_s}


def main(argv):
  del argv
  if _CORES.value:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: _CORES.value])
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  texts, source_name = _texts(_DATA.value, _TEXT_FIELD.value, _SYNTHETIC.value)
  start = time.perf_counter()
  if _TOKENIZER_JSON.value:
    from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
    tok = Tokenizer.from_file(_TOKENIZER_JSON.value)
    tok_name = f"{_TOKENIZER_JSON.value} (vocab {tok.get_vocab_size()})"
  else:
    tok = _train_tokenizer(texts, _VOCAB.value)
    tok_name = f"in-script BPE vocab {tok.get_vocab_size()}"
  train_s = time.perf_counter() - start

  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "data.jsonl")
    with open(path, "w") as f:
      for t in texts:
        f.write(json.dumps({"text": t}) + "\n")

    def encode_bpe(record):
      ids = tok.encode(record["text"]).ids
      return ids, [0] * min(16, len(ids)) + [1] * max(0, len(ids) - 16)

    def encode_bytes(record):  # no tokenizer: the pipeline's own overhead
      ids = list(record["text"].encode()[:512])
      return ids, [1] * len(ids)

    start = time.perf_counter()
    n_tok = sum(len(tok.encode(t).ids) for t in texts)
    enc_s = time.perf_counter() - start

    print(f"\ndata: {source_name}; {len(texts)} records x {_EPOCHS.value} epochs; "
          f"tokenizer {tok_name}, ready in {train_s:.1f}s; "
          f"mean {n_tok / len(texts):.0f} tokens/record; cores={len(os.sched_getaffinity(0))}")
    print(f"tokenizer alone: {len(texts) / enc_s:,.0f} examples/s, {n_tok / enc_s:,.0f} tokens/s\n")
    print(f"| encode | threads | workers | seq_len x batch | examples/s | packed tokens/s | "
          f"batches/s | fill | examples | secs | first batch s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    settings = ([(int(t), 0) for t in _THREADS.value] +
                [(0, int(w)) for w in _WORKERS.value if int(w) > 0])
    for name, fn in (("bpe", encode_bpe), ("bytes[:512]", encode_bytes)):
      for threads, workers in settings:
        r = _run(path, fn, threads, workers)
        print(f"| {name} | {threads} | {workers} | {_SEQ_LEN.value} x {_BATCH.value} | "
              f"{r['examples/s']:,.0f} | {r['tokens/s']:,.0f} | {r['batches/s']:.1f} | "
              f"{r['fill']:.3f} | {r['examples']} | {r['secs']:.1f} | {r['first_s']:.2f} |",
              flush=True)


if __name__ == "__main__":
  app.run(main)

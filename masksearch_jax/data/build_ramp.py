"""Builds RAMP samples from corpora: `python -m masksearch_jax.data.build_ramp --corpus=a.jsonl,b.jsonl
--out=DIR`.

Streams paragraphs in chunks to a process pool and writes results in input order (`imap`), so
memory stays bounded by `workers * chunk_size` paragraphs and, since every paragraph is seeded by
its own key, the output is byte-identical for any `--workers`.

Writes DIR/ramp.jsonl (all samples, corpus order), DIR/ramp_k{1..4}.jsonl (curriculum buckets by
mask_num) and DIR/stats.json.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import multiprocessing
import os
from pathlib import Path
from typing import Iterator, Sequence

from absl import app, flags, logging
import tqdm

from masksearch_jax.data import passages, ramp, spans

_CORPUS = flags.DEFINE_list("corpus", None, "Corpus files: KILT pages or JSONL passages.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_LAYOUT = flags.DEFINE_enum("layout", "auto", ["auto", "kilt", "jsonl"], "Corpus layout.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of span choice (per paragraph, worker-independent).")
_WORKERS = flags.DEFINE_integer("workers", max(1, (os.cpu_count() or 1) - 1), "Worker processes.")
_CHUNK = flags.DEFINE_integer("chunk_size", 256, "Paragraphs per task sent to a worker.")
_MAX_PARAGRAPHS = flags.DEFINE_integer("max_paragraphs", 0, "Stop after this many (0 = all).")
_MIN_MASKS = flags.DEFINE_integer("min_masks", 1, "Smallest k.")
_MAX_MASKS = flags.DEFINE_integer("max_masks", 4, "Largest k (MaskSearch: 4).")
_K_MODE = flags.DEFINE_enum("k_mode", "uniform", ["uniform", "each"],
                            "uniform: one sample per paragraph; each: one per feasible k.")
_LENGTH_UNIT = flags.DEFINE_enum("length_unit", "words", ["words", "chars"], "Span weight unit.")
_MIN_WORDS = flags.DEFINE_integer("min_words", 12, "Drop shorter paragraphs.")
_SINGLE_NAMES = flags.DEFINE_bool("single_names", False,
                                  "Rule tagger also tags single capitalised words.")
_TAGGER = flags.DEFINE_enum("tagger", "rule", ["rule", "llm"],
                            "Span tagger: rule-based (no model) or an LLM prompted for spans.")
_TAGGER_MODEL = flags.DEFINE_string(
    "tagger_model", None, "For --tagger=llm: hf:/path/to/Qwen2.5 checkpoint (run through our "
    "sampler) or openai:http://host:port (an OpenAI-compatible endpoint).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")

_STATE: dict = {}


def _init(tagger: spans.SpanTagger, cfg: ramp.RampConfig) -> None:
  _STATE["tagger"], _STATE["cfg"] = tagger, cfg


def _work(chunk: Sequence[passages.Paragraph]) -> tuple[int, list[tuple[int, str]]]:
  """Runs in a worker: (paragraph count, [(mask_num, json line)])."""
  tagger, cfg = _STATE["tagger"], _STATE["cfg"]
  lines = []
  if hasattr(tagger, "tag_batch"):      # model taggers: one batched generate call per chunk
    tags = tagger.tag_batch([p.text for p in chunk], [p.title for p in chunk])
  else:
    tags = [tagger.tag(p.text, p.title) for p in chunk]
  for par, par_tags in zip(chunk, tags):
    for rec in ramp.make_samples(par, par_tags, cfg):
      lines.append((rec["mask_num"], json.dumps(rec, ensure_ascii=False)))
  return len(chunk), lines


def _chunks(paths: Sequence[str], layout: str, pf: passages.ParagraphFilter, size: int,
            limit: int) -> Iterator[list[passages.Paragraph]]:
  it = itertools.chain.from_iterable(passages.iter_paragraphs(p, layout=layout, cfg=pf)
                                     for p in paths)
  if limit:
    it = itertools.islice(it, limit)
  while chunk := list(itertools.islice(it, size)):
    yield chunk


def build(paths: Sequence[str], out_dir: str | Path, *, tagger: spans.SpanTagger,
          cfg: ramp.RampConfig, pf: passages.ParagraphFilter = passages.ParagraphFilter(),
          layout: str = "auto", workers: int = 1, chunk_size: int = 256,
          max_paragraphs: int = 0, progress: bool = False) -> dict:
  """Library entry (tests and the world call this); returns the stats written to stats.json."""
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  for p in paths:
    if not Path(p).is_file():
      raise FileNotFoundError(f"--corpus file not found: {p}")
  chunks = _chunks(paths, layout, pf, chunk_size, max_paragraphs)
  counts = {"paragraphs": 0, "samples": 0, "by_mask_num": {}}
  with contextlib.ExitStack() as stack:
    if workers > 1:
      # spawn: workers must not inherit a forked JAX/absl state.
      pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(
          workers, initializer=_init, initargs=(tagger, cfg)))
      results = pool.imap(_work, chunks)
    else:
      _init(tagger, cfg)
      results = map(_work, chunks)
    files = {k: stack.enter_context(open(ramp.bucket_path(out_dir, k), "w", encoding="utf-8"))
             for k in range(cfg.min_masks, cfg.max_masks + 1)}
    f_all = stack.enter_context(open(out_dir / "ramp.jsonl", "w", encoding="utf-8"))
    bar = stack.enter_context(tqdm.tqdm(unit="par", disable=not progress, desc="ramp"))
    for n, lines in results:
      counts["paragraphs"] += n
      for k, line in lines:
        f_all.write(line + "\n")
        files[k].write(line + "\n")
        counts["samples"] += 1
        counts["by_mask_num"][str(k)] = counts["by_mask_num"].get(str(k), 0) + 1
      bar.update(n)
      bar.set_postfix(samples=counts["samples"])
  counts["by_mask_num"] = dict(sorted(counts["by_mask_num"].items()))
  counts["config"] = {"seed": cfg.seed, "min_masks": cfg.min_masks, "max_masks": cfg.max_masks,
                      "k_mode": cfg.k_mode, "length_unit": cfg.length_unit}
  (out_dir / "stats.json").write_text(json.dumps(counts, indent=1) + "\n")
  return counts


def main(argv: Sequence[str]) -> None:
  del argv
  if not _CORPUS.value or not _OUT.value:
    raise app.UsageError("--corpus and --out are required")
  cfg = ramp.RampConfig(seed=_SEED.value, min_masks=_MIN_MASKS.value, max_masks=_MAX_MASKS.value,
                        k_mode=_K_MODE.value, length_unit=_LENGTH_UNIT.value)
  workers = _WORKERS.value
  if _TAGGER.value == "llm":
    if not _TAGGER_MODEL.value:
      raise app.UsageError("--tagger=llm needs --tagger_model=hf:/dir or openai:http://host:port")
    from masksearch_jax.agents import llm
    gen = llm.make_generator(_TAGGER_MODEL.value)
    tagger = spans.LLMTagger(generate=lambda prompts: list(gen.generate(prompts, max_new_tokens=256)))
    workers = 1      # the model lives in this process; batching happens per chunk instead
  else:
    tagger = spans.RuleTagger(single_names=_SINGLE_NAMES.value)
  stats = build(_CORPUS.value, _OUT.value, tagger=tagger,
                cfg=cfg, pf=passages.ParagraphFilter(min_words=_MIN_WORDS.value),
                layout=_LAYOUT.value, workers=workers, chunk_size=_CHUNK.value,
                max_paragraphs=_MAX_PARAGRAPHS.value, progress=_PROGRESS.value)
  logging.info("wrote %s: %s", _OUT.value, stats)
  print(json.dumps(stats))


if __name__ == "__main__":
  app.run(main)

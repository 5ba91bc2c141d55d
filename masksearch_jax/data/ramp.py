"""RAMP samples (Retrieval-Augmented Mask Prediction, MaskSearch §2): mask k salient spans of a
paragraph; the policy must search to fill them.

Published choices: k in 1..4; spans drawn without replacement with weights that grow with span
length, numeric spans (dates, numbers) weighted as the heaviest non-numeric span (so numbers, short
but hard to guess, are not starved); samples whose text starts with a mask are dropped. Our choices
(flags of `RampConfig`): length in words, one sample per paragraph with k uniform over the feasible
range (`k_mode="uniform"`; `"each"` emits every k), and the answer format `span1; span2`.

Determinism: each paragraph's draw is seeded by (seed, paragraph key), so the output does not depend
on how paragraphs are sharded over workers.
"""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Iterable, Sequence

from masksearch_jax.data.passages import Paragraph
from masksearch_jax.data.spans import Span, SpanTagger
from masksearch_jax.protocol import DEFAULT, Protocol

MASK = "[mask]"
ANSWER_SEP = "; "


def instruction(protocol: Protocol = DEFAULT, mask: str = MASK, sep: str = ANSWER_SEP) -> str:
  """The fill-in instruction (Search-R1-style tool description + the RAMP task); ends where the
  masked text begins, so `query = instruction() + masked`."""
  p = protocol
  return (
      f"Fill in every {mask} in the text below. You must conduct reasoning inside {p.think_open} "
      f"and {p.think_close} first every time you get new information. If you lack some knowledge, "
      f"you can call a search engine by {p.search_open} query {p.search_close} and it will return "
      f"the top searched results between {p.info_open} and {p.info_close}. You can search as many "
      f"times as you want. When you know every masked span, give them in order, separated by "
      f"'{sep.strip()}', inside {p.answer_open} and {p.answer_close}, without explanations. For "
      f"example, {p.answer_open} Paris{sep}1889 {p.answer_close}.\nText: ")


@dataclasses.dataclass(frozen=True)
class RampConfig:
  seed: int = 0
  min_masks: int = 1
  max_masks: int = 4
  k_mode: str = "uniform"  # uniform: one sample, k ~ U{min..min(max, #spans)}; each: one per k
  length_unit: str = "words"  # words | chars: what "longer spans weigh more" measures
  mask: str = MASK


def span_weights(spans: Sequence[Span], length_unit: str = "words") -> list[float]:
  """Length for non-numeric spans; numeric spans get the largest non-numeric weight (1 if none)."""
  def length(s: Span) -> float:
    return float(len(s.text.split()) if length_unit == "words" else len(s.text))
  if length_unit not in ("words", "chars"):
    raise ValueError(f"length_unit must be 'words' or 'chars', got {length_unit!r}")
  non_numeric = [length(s) for s in spans if not s.is_numeric]
  top = max(non_numeric, default=1.0)
  return [top if s.is_numeric else length(s) for s in spans]


def choose_spans(spans: Sequence[Span], k: int, rng: random.Random,
                 length_unit: str = "words") -> list[Span]:
  """k distinct spans drawn without replacement, probability proportional to weight; by position."""
  pool = list({(s.start, s.end): s for s in spans}.values())
  if k > len(pool):
    raise ValueError(f"cannot choose {k} spans from {len(pool)}")
  chosen = []
  for _ in range(k):
    w = span_weights(pool, length_unit)  # numeric weight tracks the remaining pool
    i = rng.choices(range(len(pool)), weights=w, k=1)[0]
    chosen.append(pool.pop(i))
  return sorted(chosen, key=lambda s: s.start)


def apply_masks(text: str, spans: Sequence[Span], mask: str = MASK) -> str:
  out, pos = [], 0
  for s in sorted(spans, key=lambda s: s.start):
    if s.start < pos:
      raise ValueError(f"overlapping spans at {s.start}: {s.text!r}")
    out += [text[pos:s.start], mask]
    pos = s.end
  return "".join(out + [text[pos:]])


def unmask(masked: str, masks: Sequence[str], mask: str = MASK) -> str:
  """Inverse of `apply_masks`: fills the masks in order; raises when the counts disagree."""
  parts = masked.split(mask)
  if len(parts) != len(masks) + 1:
    raise ValueError(f"{len(parts) - 1} masks in text but {len(masks)} answers")
  return "".join(p + m for p, m in zip(parts, list(masks) + [""]))


def masked_text(record: dict, protocol: Protocol = DEFAULT) -> str:
  """The masked paragraph inside a record's query."""
  prefix = instruction(protocol)
  if not record["query"].startswith(prefix):
    raise ValueError(f"record {record.get('id')!r}: query does not start with the instruction")
  return record["query"][len(prefix):]


def format_answer(masks: Sequence[str]) -> str:
  return ANSWER_SEP.join(masks)


def parse_answer(answer: str) -> list[str]:
  return [a.strip() for a in answer.split(ANSWER_SEP.strip())]


def make_samples(par: Paragraph, spans: Sequence[Span], cfg: RampConfig = RampConfig(),
                 protocol: Protocol = DEFAULT) -> list[dict]:
  """0..n samples for one paragraph (already tagged); seeded by (cfg.seed, par.key)."""
  if cfg.mask in par.text or len(spans) < cfg.min_masks:
    return []
  top = min(cfg.max_masks, len(spans))
  if cfg.k_mode == "uniform":
    ks = [random.Random(f"{cfg.seed}|{par.key}|k").randint(cfg.min_masks, top)]
  elif cfg.k_mode == "each":
    ks = list(range(cfg.min_masks, top + 1))
  else:
    raise ValueError(f"k_mode must be 'uniform' or 'each', got {cfg.k_mode!r}")
  out = []
  for k in ks:
    rng = random.Random(f"{cfg.seed}|{par.key}|{k}")
    chosen = choose_spans(spans, k, rng, cfg.length_unit)
    masked = apply_masks(par.text, chosen, cfg.mask)
    if masked.startswith(cfg.mask):
      continue
    out.append({"id": f"{par.source}:{par.key}:k{k}", "query": instruction(protocol) + masked,
                "answer": par.text, "masks": [s.text for s in chosen], "mask_num": k,
                "title": par.title, "source": par.source})
  return out


def build(paragraphs: Iterable[Paragraph], tagger: SpanTagger,
          cfg: RampConfig = RampConfig()) -> list[dict]:
  """In-memory RAMP for small corpora (the world, tests); `build_ramp` streams large ones."""
  out = []
  for par in paragraphs:
    out += make_samples(par, tagger.tag(par.text, par.title), cfg)
  return out


# ------------------------------------------------------------------------------------- curriculum
def bucket_by_mask_num(records: Iterable[dict]) -> dict[int, list[dict]]:
  buckets: dict[int, list[dict]] = {}
  for r in records:
    buckets.setdefault(int(r["mask_num"]), []).append(r)
  return dict(sorted(buckets.items()))


def curriculum(records: Iterable[dict], mode: str = "staged", seed: int = 0) -> list[dict]:
  """`staged`: k=1 first, then 2, … (each stage shuffled); `mixed`: one shuffled pool."""
  rng = random.Random(seed)
  if mode == "mixed":
    out = list(records)
    rng.shuffle(out)
    return out
  if mode != "staged":
    raise ValueError(f"curriculum mode must be 'staged' or 'mixed', got {mode!r}")
  out = []
  for _, bucket in bucket_by_mask_num(records).items():
    bucket = list(bucket)
    rng.shuffle(bucket)
    out += bucket
  return out


def bucket_path(out_dir: str | Path, k: int) -> Path:
  """Where `build_ramp` writes the samples with mask_num == k (all samples: `ramp.jsonl`)."""
  return Path(out_dir) / f"ramp_k{k}.jsonl"

"""RAMP masking: weights as published, sampling law, exact reconstruction on real Wikipedia."""
import collections
import random
from pathlib import Path

import pytest

from masksearch_jax.data import passages, ramp, spans
from masksearch_jax.data.spans import Span

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
CORPORA = [DATA / "r1searcher/wiki_samples/filtered_kilt_sample_100.jsonl",
           DATA / "hotpotqa_dev100/corpus.jsonl"]


def test_span_weights_as_published():
  s = [Span("New York City", 0, 13, "name"), Span("Paris", 20, 25, "name"),
       Span("1889", 30, 34, "date"), Span("12 km", 40, 45, "number")]
  assert ramp.span_weights(s) == [3.0, 1.0, 3.0, 3.0]  # numbers weigh as the heaviest non-number
  assert ramp.span_weights(s, "chars") == [13.0, 5.0, 13.0, 13.0]
  assert ramp.span_weights(s[2:]) == [1.0, 1.0]


def test_choose_spans_follows_weights():
  s = [Span("Paris", 0, 5, "name"), Span("New York City", 10, 23, "name")]
  rng = random.Random(0)
  n = 4000
  hits = sum(ramp.choose_spans(s, 1, rng)[0].text == "New York City" for _ in range(n))
  assert abs(hits / n - 0.75) < 0.03  # weight 3 vs 1
  both = ramp.choose_spans(s, 2, rng)
  assert [x.text for x in both] == ["Paris", "New York City"]  # no duplicates, by position
  with pytest.raises(ValueError):
    ramp.choose_spans(s, 3, rng)


def test_apply_and_unmask_hand_worked():
  text = "Ed Wood is a 1994 film by Tim Burton."
  s = [Span("1994", 13, 17, "date"), Span("Tim Burton", 26, 36, "name")]
  masked = ramp.apply_masks(text, s)
  assert masked == "Ed Wood is a [mask] film by [mask]."
  assert ramp.unmask(masked, ["1994", "Tim Burton"]) == text
  with pytest.raises(ValueError, match="2 masks in text but 1"):
    ramp.unmask(masked, ["1994"])
  assert ramp.parse_answer(ramp.format_answer(["1994", "Tim Burton"])) == ["1994", "Tim Burton"]


def _par(key, text, title="Ed Wood"):
  return passages.Paragraph(key, title, text, "test")


def test_make_samples_drops_leading_mask_and_is_seeded():
  par = _par("a", "Tim Burton directed it.")
  s = [Span("Tim Burton", 0, 10, "name")]
  assert ramp.make_samples(par, s) == []  # the only sample would start with [mask]
  text = "Ed Wood is a 1994 film by Tim Burton, starring Johnny Depp and Martin Landau in 1995."
  par = _par("b", text)
  tagged = spans.RuleTagger().tag(text, "Ed Wood")
  cfg = ramp.RampConfig(seed=3, k_mode="each")
  a, b = ramp.make_samples(par, tagged, cfg), ramp.make_samples(par, tagged, cfg)
  assert a == b and [r["mask_num"] for r in a] == [1, 2, 3, 4]
  draws = {tuple(ramp.make_samples(par, tagged, ramp.RampConfig(seed=sd))[0]["masks"])
           for sd in range(30)}
  assert len(draws) > 5  # the seed matters


def _check_record(r):
  masked = ramp.masked_text(r)
  assert not masked.startswith(ramp.MASK)
  assert r["mask_num"] == len(r["masks"]) == masked.count(ramp.MASK)
  assert 1 <= r["mask_num"] <= 4 and len(set(r["masks"])) == r["mask_num"]
  assert ramp.unmask(masked, r["masks"]) == r["answer"]  # reconstructs exactly
  # Each mask sits where its span was: walk the masked text and the answer in parallel.
  parts, pos = masked.split(ramp.MASK), 0
  for part, m in zip(parts, r["masks"]):
    assert r["answer"].startswith(part, pos)
    pos += len(part)
    assert r["answer"].startswith(m, pos)
    pos += len(m)
  assert r["answer"][pos:] == parts[-1]


@pytest.mark.parametrize("path", CORPORA, ids=["kilt", "hotpotqa"])
def test_real_wikipedia_samples(path):
  if not path.exists():
    pytest.skip(f"shared data absent: {path}")
  recs = ramp.build(passages.iter_paragraphs(path), spans.RuleTagger())
  assert len(recs) > 500
  for r in recs:
    _check_record(r)
    assert r["source"] == path.stem and r["title"]
  counts = collections.Counter(r["mask_num"] for r in recs)
  assert set(counts) == {1, 2, 3, 4}


def test_curriculum():
  recs = [{"id": i, "mask_num": k} for i, k in enumerate([3, 1, 4, 2, 1, 3, 2, 4, 1])]
  staged = ramp.curriculum(recs, "staged", seed=1)
  assert [r["mask_num"] for r in staged] == sorted(r["mask_num"] for r in recs)
  mixed = ramp.curriculum(recs, "mixed", seed=1)
  assert sorted(r["id"] for r in mixed) == list(range(9))
  assert {k: len(v) for k, v in ramp.bucket_by_mask_num(recs).items()} == {1: 3, 2: 2, 3: 2, 4: 2}

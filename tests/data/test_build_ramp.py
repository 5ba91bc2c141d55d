"""build_ramp CLI: worker-count independence, buckets, --help."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from masksearch_jax.data import build_ramp, passages, ramp, spans

ROOT = Path(__file__).resolve().parents[2]
HOTPOT = ROOT / ".." / "shared" / "data" / "hotpotqa_dev100" / "corpus.jsonl"


def test_same_output_for_any_worker_count(tmp_path):
  if not HOTPOT.exists():
    pytest.skip(f"shared data absent: {HOTPOT}")
  kw = dict(tagger=spans.RuleTagger(), cfg=ramp.RampConfig(seed=5), max_paragraphs=300,
            chunk_size=32)
  s1 = build_ramp.build([str(HOTPOT)], tmp_path / "w1", workers=1, **kw)
  s2 = build_ramp.build([str(HOTPOT)], tmp_path / "w2", workers=2, **kw)
  assert s1 == s2 and s1["paragraphs"] == 300
  all1 = (tmp_path / "w1" / "ramp.jsonl").read_bytes()
  assert all1 == (tmp_path / "w2" / "ramp.jsonl").read_bytes()
  recs = [json.loads(l) for l in all1.decode().splitlines()]
  assert len(recs) == s1["samples"] > 100
  for k in range(1, 5):
    bucket = [json.loads(l) for l in ramp.bucket_path(tmp_path / "w1", k).read_text().splitlines()]
    assert bucket == [r for r in recs if r["mask_num"] == k]
    assert s1["by_mask_num"][str(k)] == len(bucket)


def test_missing_corpus_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    build_ramp.build([str(tmp_path / "nope.jsonl")], tmp_path / "o", tagger=spans.RuleTagger(),
                     cfg=ramp.RampConfig())


def test_cli_help():
  r = subprocess.run([sys.executable, "-m", "masksearch_jax.data.build_ramp", "--help"], cwd=ROOT,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode in (0, 1) and "--corpus" in r.stdout  # absl exits 1 after --help


def test_llm_tagger_batches_per_chunk_and_masks_only_returned_spans(tmp_path):
  corpus = tmp_path / "c.jsonl"
  corpus.write_text(json.dumps({"id": "1", "title": "Orvale", "text":
      "Orvale is a harbour town founded by Mira Ostrand in 1712 on the Velt river, and the town "
      "later became the seat of the Ostrand trading company for two centuries."}) + "\n")
  calls = []

  def fake_llm(prompts):          # what a model might answer: fenced JSON, one span not in text
    calls.append(len(prompts))
    return ['```json\n["Mira Ostrand", "1712", "Atlantis"]\n```' for _ in prompts]

  stats = build_ramp.build([str(corpus)], tmp_path / "out", tagger=spans.LLMTagger(fake_llm),
                           cfg=ramp.RampConfig(seed=0, min_masks=1, max_masks=2),
                           pf=passages.ParagraphFilter(min_words=5))
  assert calls == [1]                                  # one batched call for the chunk
  recs = [json.loads(l) for l in (tmp_path / "out" / "ramp.jsonl").read_text().splitlines()]
  assert stats["samples"] == len(recs) >= 1
  for r in recs:
    assert set(r["masks"]) <= {"Mira Ostrand", "1712"}  # the invented span is never masked
    masked = r["answer"]
    for m in r["masks"]:
      masked = masked.replace(m, "[mask]", 1)
    assert masked in r["query"] and masked != r["answer"]

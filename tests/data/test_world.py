"""The embedded world: determinism, facts stated where questions need them, files, CLI."""
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from masksearch_jax.data import ramp, world, world_search

ROOT = Path(__file__).resolve().parents[2]
CFG = world.WorldConfig(seed=7, n_people=40, n_places=10, n_orgs=8, n_works=40, n_questions=200)


@pytest.fixture(scope="module")
def built():
  ents = world.generate(CFG)
  return ents, world.render(ents, CFG.seed), world.questions(ents, CFG)


def _has(needle, text):
  return re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", text) is not None


def test_deterministic_and_seeded(built):
  ents, corpus, qs = built
  assert world.generate(CFG) == ents and world.render(ents, CFG.seed) == corpus
  assert world.questions(ents, CFG) == qs
  other = world.render(world.generate(world.WorldConfig(seed=8, n_people=40, n_places=10,
                                                        n_orgs=8, n_works=40)))
  people = lambda c: {p["title"] for p in c if p["id"].startswith("person/")}
  assert len(people(other) & people(corpus)) <= 2  # invented names differ by seed
  assert [p["text"] for p in other] != [p["text"] for p in corpus]


def test_passages(built):
  ents, corpus, _ = built
  assert len(corpus) == 40 + 10 + 8 + 40 == len(ents)
  titles = [p["title"] for p in corpus]
  assert len(set(titles)) == len(titles)
  for p in corpus:
    assert set(p) == {"id", "title", "text"} and p["title"] in p["text"]
  # Varied wording: the first sentences of people are not all one template.
  firsts = {re.sub(r"[A-Z][\w]+|\d+", "X", p["text"].split(".")[0]) for p in corpus
            if p["id"].startswith("person/")}
  assert len(firsts) >= 3


def test_questions_are_answerable_from_passages(built):
  ents, corpus, qs = built
  text_of = {p["id"]: p["text"] for p in corpus}
  kinds = {q["type"] for q in qs}
  assert kinds == {"1hop", "2hop"} and len(qs) == 200
  assert len({q["question"] for q in qs}) == len(qs)
  for q in qs:
    assert q["golden_answers"] == [q["hops"][-1]["answer"]]
    assert q["hops"][0]["subject"] in q["question"]
    for a, b in zip(q["hops"], q["hops"][1:]):
      assert b["subject"] == a["answer"]  # the chain: hop 2 is about what hop 1 found
    for h in q["hops"]:
      # the fact is stated, verbatim, in the subject's own passage
      assert _has(h["answer"], text_of[h["subject_id"]]), (q, text_of[h["subject_id"]])
      assert ents[h["subject_id"]]["name"] == h["subject"]


def test_split_disjoint(built):
  _, _, qs = built
  train, test = world.split(qs, 0.25, seed=1)
  assert {q["id"] for q in train}.isdisjoint({q["id"] for q in test})
  assert len(train) + len(test) == len(qs) and 20 < len(test) < 80


def test_build_files_fast(tmp_path):
  t0 = time.time()
  counts = world.build(tmp_path, CFG, tokenizer_vocab=800)
  assert time.time() - t0 < 30
  rows = {n: [json.loads(l) for l in (tmp_path / n).read_text().splitlines()]
          for n in ("corpus.jsonl", "questions_train.jsonl", "questions_test.jsonl", "ramp.jsonl")}
  assert len(rows["corpus.jsonl"]) == counts["passages"] == 98
  assert len(rows["questions_train.jsonl"]) + len(rows["questions_test.jsonl"]) == 200
  assert counts["ramp_samples"] == len(rows["ramp.jsonl"]) > 80
  for r in rows["ramp.jsonl"]:
    assert ramp.unmask(ramp.masked_text(r), r["masks"]) == r["answer"]
    assert not any(m.lower() in r["title"].lower() for m in r["masks"])
  assert (tmp_path / "tokenizer" / "tokenizer.json").exists()


def test_lexical_retriever_finds_people_by_name(built):
  _, corpus, _ = built
  r = world_search.LexicalRetriever(corpus)
  people = [p for p in corpus if p["id"].startswith("person/")]
  res = r.search([p["title"] for p in people], 3)
  assert all(len(h) == 3 for h in res)
  assert all(h[0].title == p["title"] for h, p in zip(res, people))
  assert all(h[0].score >= h[1].score >= h[2].score for h in res)


def test_cli_help():
  r = subprocess.run([sys.executable, "-m", "masksearch_jax.data.world", "--help"], cwd=ROOT,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode in (0, 1) and "--n_people" in r.stdout  # absl exits 1 after --help

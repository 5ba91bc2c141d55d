"""The scripted oracle: correct answers, real retrieved text in every observation, rejection."""
import re

import pytest

from masksearch_jax import tokenizer as tok_lib
from masksearch_jax.agents import oracle
from masksearch_jax.data import ramp, traces, world
from masksearch_jax.protocol import DEFAULT, Hit, format_observation

CFG = world.WorldConfig(seed=3, n_people=40, n_places=10, n_orgs=8, n_works=40, n_questions=120)


class KeywordRetriever:
  """Test retriever: rank by count of shared lowercase words (ties: corpus order)."""

  def __init__(self, corpus):
    self.docs = corpus
    self.words = [set(re.findall(r"\w+", f"{d['title']} {d['text']}".lower())) for d in corpus]
    self.calls = []

  def search(self, queries, k):
    out = []
    for q in queries:
      self.calls.append(q)
      qw = set(re.findall(r"\w+", q.lower()))
      order = sorted(range(len(self.docs)), key=lambda i: (-len(qw & self.words[i]), i))[:k]
      out.append([Hit(self.docs[i]["id"], self.docs[i]["title"], self.docs[i]["text"],
                      float(len(qw & self.words[i]))) for i in order])
    return out


class EmptyRetriever:
  def search(self, queries, k):
    return [[] for _ in queries]


@pytest.fixture(scope="module")
def world_data():
  ents = world.generate(CFG)
  corpus = world.render(ents, CFG.seed)
  return corpus, world.questions(ents, CFG), world.ramp_samples(corpus, CFG.seed)


def _replay(response, fresh, k):
  """Every observation must be exactly what a fresh retriever returns for the preceding query."""
  blocks = response.split(DEFAULT.search_open)[1:]
  for b in blocks:
    query = b.split(DEFAULT.search_close)[0].strip()
    expected = format_observation(fresh.search([query], k)[0])
    assert b.split(DEFAULT.search_close, 1)[1].startswith(expected)
  return len(blocks)


def test_questions(world_data):
  corpus, qs, _ = world_data
  retriever = KeywordRetriever(corpus)
  cfg = oracle.OracleConfig(k=3)
  got, stats = oracle.generate(qs, retriever, cfg)
  fresh = KeywordRetriever(corpus)
  assert stats["items"] == len(qs) and stats["acceptance_rate"] >= 0.9
  by_id = {q["id"]: q for q in qs}
  assert {t.meta["type"] for t in got} == {"1hop", "2hop"}
  for t in got:
    q = by_id[t.meta["id"]]
    assert DEFAULT.extract_answer(t.response) == q["golden_answers"][0]
    assert q["question"] in t.prompt and t.gold == q["golden_answers"]
    n = _replay(t.response, fresh, cfg.k)
    assert n == t.meta["num_searches"] >= len(q["hops"])
    info = "".join(re.findall(r"<information>(.*?)</information>", t.response, re.S))
    for h in q["hops"]:
      assert h["answer"] in info  # every fact stated was retrieved
    # Well-formed protocol: tags balanced, answer last.
    for a, b in ((DEFAULT.think_open, DEFAULT.think_close), (DEFAULT.search_open,
                 DEFAULT.search_close), (DEFAULT.info_open, DEFAULT.info_close)):
      assert t.response.count(a) == t.response.count(b) >= 1
    assert t.response.rstrip().endswith(DEFAULT.answer_close)


def test_ramp_samples(world_data):
  corpus, _, recs = world_data
  got, stats = oracle.generate(recs, KeywordRetriever(corpus))
  fresh = KeywordRetriever(corpus)
  assert stats["acceptance_rate"] >= 0.9
  by_id = {r["id"]: r for r in recs}
  for t in got:
    r = by_id[t.meta["id"]]
    assert t.prompt == r["query"] and t.gold == r["masks"]
    assert ramp.parse_answer(DEFAULT.extract_answer(t.response)) == r["masks"]
    info = "".join(re.findall(r"<information>(.*?)</information>", t.response, re.S))
    assert r["answer"] in info  # the original paragraph was retrieved
    _replay(t.response, fresh, 3)


def test_rejects_when_search_finds_nothing(world_data):
  _, qs, recs = world_data
  assert oracle.answer_question(qs[0], EmptyRetriever()) is None
  assert oracle.fill_masks(recs[0], EmptyRetriever()) is None
  _, stats = oracle.generate(qs[:5], EmptyRetriever())
  assert stats == {"items": 5, "accepted": 0, "acceptance_rate": 0.0}


def test_traces_encode(world_data, tmp_path):
  corpus, qs, _ = world_data
  tok = tok_lib.load(tok_lib.train_bpe([p["text"] for p in corpus], tmp_path, vocab_size=800))
  t = oracle.answer_question(next(q for q in qs if q["type"] == "2hop"), KeywordRetriever(corpus))
  tokens, mask = traces.encode(t, tok)
  assert tok.decode(tokens[mask == 1][:-1].tolist()) == traces.strip_observations(t.response)
  assert DEFAULT.extract_answer(tok.decode(tokens[mask == 1].tolist())) == t.gold[0]


def test_traces_pass_the_reward_format_check(world_data):
  rewards = pytest.importorskip("masksearch_jax.rl.rewards")
  corpus, qs, recs = world_data
  got, _ = oracle.generate(qs[:40] + recs[:40], KeywordRetriever(corpus))
  assert len(got) >= 72
  for t in got:
    res = rewards.check_format(t.response)
    assert res.ok, (res.reason, t.response)
    assert res.num_searches == t.meta["num_searches"]


def test_ramp_on_real_wikipedia_paragraphs():
  from pathlib import Path
  from masksearch_jax.data import passages, spans
  path = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "hotpotqa_dev100" / \
      "corpus.jsonl"
  if not path.exists():
    pytest.skip(f"shared data absent: {path}")
  pars = list(passages.iter_paragraphs(path))
  docs = [{"id": p.key, "title": p.title, "text": p.text} for p in pars]
  recs = ramp.build(pars[:60], spans.RuleTagger())
  got, stats = oracle.generate(recs, KeywordRetriever(docs))
  fresh = KeywordRetriever(docs)
  assert stats["acceptance_rate"] >= 0.8, stats
  for t in got:
    assert ramp.parse_answer(DEFAULT.extract_answer(t.response)) == t.gold
    _replay(t.response, fresh, 3)

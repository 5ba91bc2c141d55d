"""The host-side protocol rules (tools.py) and the device stop-id matcher, on hand-made inputs."""
from __future__ import annotations

import numpy as np
import pytest

from masksearch_jax import protocol as proto
from masksearch_jax.rollout import engine, tools
from masksearch_jax.rollout import types as T
from tests.rollout import fixtures as fx

RC = T.RolloutConfig(max_turns=2, stop_strings=("###",))


def _decide(text, device_reason=None, turns=0, rc=RC):
  tok = fx.tokenizer()
  return tools.decide(tok, tok.encode(text, add_special_tokens=False), device_reason, turns, rc,
                      proto.DEFAULT)


@pytest.mark.parametrize("text,device_reason,turns,action,reason,query", [
    ("think <search> the river </search>", "ids", 0, "search", None, "the river"),
    ("<search> the river </search>", "ids", 2, "finish", T.MAX_TURNS, None),
    ("<search>   </search>", "ids", 0, "error_obs", None, None),
    ("<search> a <answer> b </search>", "ids", 0, "finish", T.MALFORMED, None),
    ("the river </search>", "ids", 0, "finish", T.MALFORMED, None),
    ("<answer> paris </answer>", "ids", 0, "finish", T.ANSWER, None),
    ("paris </answer>", "ids", 0, "finish", T.MALFORMED, None),
    ("<search> never closed", T.LENGTH, 0, "finish", T.MALFORMED, None),
    ("<search> never closed", T.EOS, 0, "finish", T.MALFORMED, None),
    ("plain text", T.EOS, 0, "finish", T.EOS, None),
    ("plain text", T.LENGTH, 0, "finish", T.LENGTH, None),
    ("plain text", None, 0, "continue", None, None),
    ("<search> still open", None, 0, "continue", None, None),
    ("a ### <search> q </search>", "ids", 0, "finish", T.STOP, None),   # earliest stop wins
    ("<answer> a </answer> <search> q </search>", "ids", 0, "finish", T.ANSWER, None),
])
def test_decide_rules(text, device_reason, turns, action, reason, query):
  d = _decide(text, device_reason, turns)
  assert (d.action, d.reason, d.query) == (action, reason, query)


def test_query_with_invalid_utf8_is_sent_with_replacement_characters():
  """The documented rule: text decodes with U+FFFD for invalid bytes, and the query goes out as it
  is (a byte-level token 0xff inside the query neither crashes nor ends the rollout)."""
  tok = fx.tokenizer()
  enc = lambda t: tok.encode(t, add_special_tokens=False)
  ids = enc("<search> old") + [197] + enc(" town </search>")           # 197: the byte 0xff
  d = tools.decide(tok, ids, "ids", 0, RC, proto.DEFAULT)
  assert d.action == "search" and "\ufffd" in d.query
  assert d.query.replace("\ufffd", "").split() == ["old", "town"]


def test_cut_is_shortest_prefix_containing_the_stop():
  tok = fx.tokenizer()
  ids = tok.encode("<search> q </search> the old town", add_special_tokens=False)
  d = tools.decide(tok, ids, None, 0, RC, proto.DEFAULT)
  assert d.action == "search" and tok.decode(ids[:d.cut]) == "<search> q </search>"


def test_without_tools_tags_are_plain_text():
  rc = T.RolloutConfig(use_tools=False)
  assert _decide("<search> q </search>", None, rc=rc).action == "continue"
  assert _decide("<search> q", T.EOS, rc=rc).reason == T.EOS


def test_observation_budget_keeps_the_closing_tag():
  tok = fx.tokenizer()
  hits = [proto.Hit("1", "t", "the capital of france is paris " * 5, 1.0)] * 3
  text = proto.format_observation(hits)
  full = tok.encode(text, add_special_tokens=False)
  for budget in (len(full), 40, 25):
    ids = tools.observation_ids(tok, text, budget, proto.DEFAULT)
    assert len(ids) <= budget
    out = tok.decode(ids)
    assert out.startswith("\n\n<information>Doc 1(Title: t)") and out.endswith("</information>\n\n")
  assert tools.observation_ids(tok, text, len(full), proto.DEFAULT) == full
  assert len(tools.observation_ids(tok, text, 3, proto.DEFAULT)) == 3     # wrapper cannot fit


def test_call_retriever_failures_are_values():
  class Bad:
    def search(self, queries, k):
      return [[]]                                      # wrong length for two queries
  hits, err = tools.call_retriever(Bad(), ["a", "b"], 3, 1.0)
  assert hits is None and "wrong length" in err
  hits, err = tools.call_retriever(fx.FakeRetriever(fail=True), ["a"], 3, 1.0)
  assert hits is None and err == "RuntimeError: index offline"
  hits, err = tools.call_retriever(fx.FakeRetriever(), ["a", "b"], 2, 1.0)
  assert err is None and [len(h) for h in hits] == [2, 2] and hits[1][0].id == "b-0"


def test_a_stuck_retriever_gets_one_call_in_flight():
  """After a timeout the worker keeps running; later calls wait for it up to the timeout, then
  answer 'busy' at once — no second concurrent search, no pile of threads — and resume once it
  returns."""
  import threading
  release = threading.Event()

  class Stuck:
    def __init__(self):
      self.entered = 0

    def search(self, queries, k):
      self.entered += 1
      release.wait(5.0)
      return [[] for _ in queries]

  r = Stuck()
  hits, err = tools.call_retriever(r, ["a"], 1, 0.05)
  assert hits is None and "timed out after 0.05s" in err
  before = threading.active_count()
  for _ in range(3):
    hits, err = tools.call_retriever(r, ["b"], 1, 0.05)
    assert hits is None and "busy" in err
  assert r.entered == 1 and threading.active_count() == before
  release.set()
  hits, err = tools.call_retriever(r, ["c", "d"], 1, 2.0)     # waits for the old worker, then runs
  assert err is None and hits == [[], []] and r.entered == 2
  other = fx.FakeRetriever()                                  # other retrievers are not affected
  assert tools.call_retriever(other, ["e"], 1, 1.0)[1] is None
  assert id(r) not in tools._WORKERS                          # finished workers are forgotten


def test_safe_decode_never_raises():
  tok = fx.tokenizer()
  assert tools.safe_decode(tok, [197]) == "\ufffd"               # lone 0xff byte
  assert isinstance(tools.safe_decode(tok, [10 ** 7, 5]), str)   # unknown id


def test_stop_ids_matched_only_on_policy_tokens():
  tokens = np.array([[1, 2, 7, 8, 0, 0], [7, 8, 3, 0, 0, 0], [5, 7, 8, 0, 0, 0]], np.int32)
  mask = np.array([[0, 1, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0]], np.int32)
  length = np.array([4, 3, 3], np.int32)
  got = engine.stop_ids_matched(tokens, mask, length, ((7, 8), (9,)))
  # row 0 ends with 7 8 written by the policy; row 1 ends with 3; row 2's 7 is a prompt token.
  np.testing.assert_array_equal(np.asarray(got), [True, False, False])
  got = engine.stop_ids_matched(tokens, mask, np.array([2, 2, 1], np.int32), ((2,), (1, 2, 7)))
  np.testing.assert_array_equal(np.asarray(got), [True, False, False])


def test_stop_straddling_a_chunk_boundary_is_found():
  tok = fx.tokenizer()
  rc = T.RolloutConfig(stop_strings=("pa la",), use_tools=False)
  ids = tok.encode("kappa lambda alpha", add_special_tokens=False)   # k ap pa Ġ l am ...
  for checked in (0, 3, 4, 5):                                       # earlier chunks ended there
    d = tools.decide(tok, ids[:6 + (checked > 4)], None, 0, rc, proto.DEFAULT, checked=checked)
    assert (d.action, d.reason, d.cut) == ("finish", T.STOP, 6), checked
  assert tools.decide(tok, ids[:5], None, 0, rc, proto.DEFAULT, checked=3).action == "continue"


def test_stop_id_sequences_cover_both_spellings():
  tok = fx.tokenizer()
  seqs = tools.stop_id_sequences(tok, T.RolloutConfig(stop_strings=("pa la",)), proto.DEFAULT)
  assert (fx.tid("</search>"),) in seqs and (fx.tid("</answer>"),) in seqs
  assert tuple(tok.encode("pa la", add_special_tokens=False)) in seqs
  assert tuple(tok.encode(" pa la", add_special_tokens=False)) in seqs
  assert len(seqs) == len(set(seqs))

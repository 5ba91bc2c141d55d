"""The multi-agent loop with scripted agents: trace format, judge filter, turn limit, fallbacks."""
import re

import pytest

from masksearch_jax.agents import multi_agent as ma
from masksearch_jax.agents import prompts
from masksearch_jax.data import traces
from masksearch_jax.protocol import DEFAULT, format_observation
from masksearch_jax.rl import rewards
from tests.agents import fakes


def _run(gen, records=(fakes.QUESTION,), judge=None, **cfg):
  ret = fakes.KeywordRetriever()
  acc, results, stats = ma.generate(list(records), gen, ret, ma.AgentConfig(**cfg), judge=judge)
  return acc, results, stats, ret


def test_two_hop_trace_is_well_formed_and_accepted():
  gen = fakes.script()
  acc, results, stats, ret = _run(gen)
  assert stats["accepted"] == 1 and stats["acceptance_rate"] == 1.0
  t = acc[0]
  fr = rewards.check_format(t.response)
  assert fr.ok, fr.reason
  assert fr.num_searches == 2
  assert DEFAULT.extract_answer(t.response) == "Springfield"
  # The searches are the planner's query, then the observer's follow-up, in order.
  assert re.findall(r"<search> (.*?) </search>", t.response) == ["Acme Corp founder",
                                                                 "Jane Roe birthplace"]
  # Each observation is exactly what the retriever returned, in the shared observation format.
  assert format_observation([fakes.DOCS["acme"], fakes.DOCS["noise"]]) in t.response
  assert format_observation([fakes.DOCS["roe"], fakes.DOCS["noise"]]) in t.response
  assert ret.calls == [["Acme Corp founder"], ["Jane Roe birthplace"]]
  # The prompt is the student's prompt; the plan is in the first thought.
  assert t.prompt == traces.question_prompt(fakes.QUESTION["question"])
  assert "find who founded Acme Corp" in t.response.split("<search>")[0]
  assert t.gold == ["Springfield"] and t.meta["observer_turns"] == 2
  assert stats["calls"] == {"planner": 1, "rewriter": 2, "observer": 2}
  # The observer on turn 2 saw the first search's passage.
  assert "founded by Jane Roe" in gen.prompts["observer"][1]
  # The trace survives the JSONL round trip the SFT trainer reads.
  assert traces.Trace.from_json(t.to_json()) == t


def test_wrong_answer_is_rejected_by_the_metric():
  acc, results, stats, _ = _run(fakes.script(observer=fakes.two_hop_observer("Shelbyville")))
  assert acc == [] and stats["rejected"] == {"wrong_answer": 1}
  r = results[0]
  assert r.trace is not None and not r.accepted and r.trace.meta["answer_score"] == 0.0
  assert rewards.check_format(r.trace.response).ok   # well formed, only wrong


def test_lm_judge_accepts_a_paraphrase_and_rejects_a_wrong_answer():
  seen = []

  def judge_gen(prompt):
    seen.append(prompt)
    return "Yes." if "Springfield, Illinois" in prompt else "No, that is a different town."

  judge = rewards.LMJudge(judge_gen)
  acc, _, _, _ = _run(fakes.script(observer=fakes.two_hop_observer("Springfield, Illinois")),
                      judge=judge)
  assert len(acc) == 1 and acc[0].meta["judge"] is True
  assert "Springfield" in seen[0] and fakes.QUESTION["question"] in seen[0]
  acc, results, stats, _ = _run(fakes.script(observer=fakes.two_hop_observer("Shelbyville")),
                                judge=judge)
  assert acc == [] and stats["rejected"] == {"judge_rejected": 1}
  # An exact answer never needs the judge.
  seen.clear()
  acc, _, _, _ = _run(fakes.script(), judge=judge)
  assert len(acc) == 1 and seen == []


def test_observer_turn_limit_is_enforced():
  n = [0]

  def never_answers(p):
    n[0] += 1
    return f"THOUGHT: not yet.\nSEARCH: Acme Corp query {n[0]}"

  gen = fakes.script(observer=never_answers)
  acc, results, stats, ret = _run(gen, max_observer_turns=5)
  assert acc == [] and results[0].reason == "max_turns" and results[0].trace is None
  assert stats["calls"]["observer"] == 5
  assert [fakes.turn_of(p) for p in gen.prompts["observer"]] == [1, 2, 3, 4, 5]
  assert "last turn: you must answer" in gen.prompts["observer"][-1]
  assert "SEARCH:" not in gen.prompts["observer"][-1]
  assert len(ret.calls) == 5                    # one retrieval round per observer turn


def test_search_budget_makes_the_next_turn_the_last():
  gen = fakes.script(observer=lambda p: "THOUGHT: more.\nSEARCH: acme a\nSEARCH: acme b")
  acc, results, stats, ret = _run(gen, max_searches=3, max_observer_turns=5)
  assert results[0].reason == "max_turns"
  assert sum(len(c) for c in ret.calls) == 3    # 1 (planner) + 2; then the observer had to answer
  assert stats["calls"]["observer"] == 2


def test_malformed_planner_falls_back_to_the_question():
  gen = fakes.script(planner=lambda p: "I am not sure what you mean {\"plan\": [unclosed")
  acc, results, stats, ret = _run(gen, max_retries=2)
  assert stats["calls"]["planner"] == 3          # first try + 2 retries, then the fallback
  assert gen.temperatures[0] == 0.0 and gen.temperatures[1] > 0.0   # retries sample
  assert ret.calls[0] == [fakes.QUESTION["question"]]
  assert results[0].fallbacks == ("planner",) and stats["fallbacks"] == {"planner": 1}
  # The episode still runs: the observer's follow-up finds the answer.
  assert len(acc) == 1 and rewards.check_format(acc[0].response).ok


def test_a_failing_prompt_costs_only_its_own_episode():
  from masksearch_jax.agents import llm
  other = {"id": "q2", "question": "POISON Where was the founder of Acme Corp born?",
           "golden_answers": ["Springfield"]}
  inner = fakes.script()

  class Flaky:
    def generate(self, ps, **kw):
      if any("POISON" in p for p in ps):
        raise llm.GenerationError("HTTP 400: context too long")
      return inner.generate(ps, **kw)

  acc, results, stats, _ = _run(Flaky(), records=[fakes.QUESTION, other], max_retries=0)
  assert [r.accepted for r in results] == [True, False]
  assert results[1].fallbacks == ("planner", "rewriter")   # both fell back; the observer drops it
  assert results[1].reason == "observer_unparseable"
  assert set(stats["seconds"]) >= {"total", "planner", "observer", "retriever"}


def test_generator_that_keeps_failing_stops_the_run():
  from masksearch_jax.agents import llm

  class Dead:
    def generate(self, ps, **kw):
      raise llm.GenerationError("http://x: gave up")

  with pytest.raises(llm.GenerationError, match="gave up"):
    _run(Dead(), max_generator_failures=3)


def test_observer_history_keeps_the_newest_searches_within_budget():
  agent = ma.MultiAgent(fakes.script(), fakes.KeywordRetriever(),
                        ma.AgentConfig(history_steps=3, history_chars=250))
  e = ma.Episode(ma.task_from_record(fakes.QUESTION, 0))
  e.steps = [ma.Step("t", f"query {i}", [fakes.DOCS["acme"]]) for i in range(5)]
  h = agent._history(e)
  assert "[5] search: query 4" in h and "[4] search: query 3" in h
  assert "query 2" not in h and len(h) <= 250     # 3 allowed by count, 2 (~106 chars each) fit


def test_unparseable_observer_drops_the_episode_after_retries():
  gen = fakes.script(observer=lambda p: "hmm")
  acc, results, stats, _ = _run(gen, max_retries=1)
  assert acc == [] and results[0].reason == "observer_unparseable"
  assert stats["calls"]["observer"] == 2


def test_rewriter_expands_queries_and_deduplicates():
  gen = fakes.script(rewriter=lambda p: "QUERY: Acme Corp founder\n- QUERY: **Acme Corp** history\n"
                                        "QUERY: acme corp founder")
  acc, _, _, ret = _run(gen)
  assert ret.calls[0] == ["Acme Corp founder", "Acme Corp history"]
  assert rewards.check_format(acc[0].response).num_searches == 3


def test_tags_in_model_text_cannot_break_the_trace():
  planner = lambda p: ("PLAN: look it up </think><answer>x</answer>\n"
                       "QUERY: Acme Corp founder</search>")
  observer = lambda p: ("THOUGHT: <search>done</search>\nANSWER: <answer>Springfield</answer>"
                        if fakes.turn_of(p) > 1 else "THOUGHT: ok\nSEARCH: Jane Roe")
  acc, results, _, _ = _run(fakes.script(planner=planner, observer=observer))
  assert results[0].accepted, results[0].reason
  assert rewards.check_format(acc[0].response).ok


def test_batch_runs_roles_in_lockstep_and_keeps_order():
  other = {"id": "q2", "question": "Who founded Acme Corp?", "golden_answers": ["Jane Roe"]}

  def observer(p):
    if "Who founded" in fakes.task_of(p):
      return "THOUGHT: the passage names the founder.\nANSWER: Jane Roe"
    return fakes.two_hop_observer()(p)

  gen = fakes.script(observer=observer)
  acc, results, stats, ret = _run(gen, records=[fakes.QUESTION, other])
  assert [r.task.id for r in results] == ["q1", "q2"] and all(r.accepted for r in results)
  assert [t.meta["observer_turns"] for t in acc] == [2, 1]
  # One generator call per role per round: planner(2), rewriter(2), observer(2), rewriter, observer.
  assert gen.batches == [("planner",) * 2, ("rewriter",) * 2, ("observer",) * 2, ("rewriter",),
                         ("observer",)]
  assert ret.calls[0] == ["Acme Corp founder", "Acme Corp founder"]


def test_ramp_record_is_scored_per_mask():
  rec = {"id": "r1", "query": "Fill in: [mask] was founded by [mask].",
         "masks": ["Acme Corp", "Jane Roe"], "mask_num": 2}
  for answer, ok in (("Acme Corp; Jane Roe", True), ("Acme Corp; John Doe", False)):
    gen = fakes.script(observer=lambda p, a=answer: f"THOUGHT: found.\nANSWER: {a}")
    acc, results, _, _ = _run(gen, records=[rec])
    assert results[0].accepted is ok
    assert results[0].trace.prompt == rec["query"] and results[0].trace.gold == rec["masks"]
  # A RAMP planner fallback searches the masked text without its masks.
  gen = fakes.script(planner=lambda p: "no idea", observer=lambda p: "THOUGHT: x\nANSWER: y")
  _, _, _, ret = _run(gen, records=[rec])
  assert ret.calls[0] == ["Fill in: was founded by ."]


def test_bad_record_names_the_field():
  with pytest.raises(ValueError, match="record #0 .*question"):
    ma.task_from_record({"id": "x", "text": "no question"}, 0)
  with pytest.raises(ValueError, match=r"record #3 \(3\): field 'masks' must be a list"):
    ma.task_from_record({"query": "[mask] b", "masks": "not a list"}, 3)   # RL refuses it too


def test_task_from_record_reads_what_rl_reads():
  qa = ma.task_from_record({"question": " who? ", "golden_answers": ["x"]}, 7)
  assert (qa.id, qa.kind, qa.task, qa.question, qa.gold.answers) == ("7", "qa", "who?", "who?", ("x",))
  assert "who?" in qa.prompt
  ramp = ma.task_from_record({"id": "r", "query": "[mask] b", "masks": ["a"]}, 0)
  assert (ramp.kind, ramp.task, ramp.prompt, ramp.gold.masks) == ("ramp", "[mask] b", "[mask] b", ("a",))


@pytest.mark.parametrize("text,want", [
    ("PLAN: a then b\nQUERY: one\nQUERY 2: two", ("a then b", ["one", "two"])),
    ("1. **Plan:** split it\n2) **Query**: \"one\"\n* query: two", ("split it", ["one", "two"])),
    ('Sure! {"plan": "p", "queries": ["x", "y", "z", "w"]}', ("p", ["x", "y", "z"])),
    ("PLAN: only a plan", None),
    ("__import__('os').system('echo no')", None),
])
def test_parse_planner(text, want):
  got = prompts.parse_planner(text, max_queries=3)
  assert (None if got is None else (got.plan, got.queries)) == want


def test_parse_observer_prefers_answer_and_joins_continued_thoughts():
  r = prompts.parse_observer("THOUGHT: line one\nline two\nSEARCH: q\nANSWER: a", 3)
  assert (r.thought, r.searches, r.answer) == ("line one line two", [], "a")
  assert prompts.parse_observer("THOUGHT: nothing decided", 3) is None


def test_real_hotpotqa_passages_render_into_valid_traces():
  """Real Wikipedia text in the observations (BM25 over HotpotQA's paragraphs) keeps the format."""
  import json
  from pathlib import Path
  from masksearch_jax.data import world_search
  from masksearch_jax.retrieval import corpus as corpus_lib
  data = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "hotpotqa_dev100"
  if not (data / "corpus.jsonl").exists():
    pytest.skip("shared data not present")
  docs = [{"id": p.id, "title": p.title, "text": p.text}
          for p in corpus_lib.iter_passages(data / "corpus.jsonl")]
  recs = [json.loads(l) for l in (data / "questions.jsonl").read_text().splitlines()[:8]]
  gold = {r["question"]: r["golden_answers"][0] for r in recs}
  gen = fakes.script(planner=lambda p: f"PLAN: look it up.\nQUERY: {fakes.task_of(p)}",
                     observer=lambda p: "THOUGHT: the passages say so.\nANSWER: "
                                        + gold[fakes.task_of(p)])
  ret = world_search.LexicalRetriever(docs)
  acc, results, stats = ma.generate(recs, gen, ret, ma.AgentConfig(top_k=3), batch_size=4)
  assert stats["accepted"] == 8, [r.reason for r in results]
  for t, r in zip(acc, recs):
    fr = rewards.check_format(t.response)
    assert fr.ok and fr.num_searches == 1, fr.reason
    assert format_observation(ret.search([r["question"]], 3)[0]) in t.response
    assert DEFAULT.extract_answer(t.response) == r["golden_answers"][0]

"""Eval runs on a tiny random model whose outputs a logits hook scripts, with a fake retriever.

Expected scores are worked by hand from the scripted answers; the summary is also recomputed
from the written JSONL, so a wrong aggregation, row order or padding shows up.
"""
from __future__ import annotations

import json
import re

import jax
import numpy as np
import pytest

from masksearch_jax import tokenizer as tok_lib
from masksearch_jax.data import ramp, traces
from masksearch_jax.eval import datasets, metrics, report
from masksearch_jax.eval import run as run_lib
from masksearch_jax.model import config, qwen2
from tests.rollout import fixtures as fx

_TEXTS = ["What is the capital of France? Paris is the capital.", "Rome Roma Italy city of",
          "New York City York search think answer information", "the a an of in 1889 1890",
          traces.question_prompt("Which?"), ramp.instruction(), "Doc 1(Title: t0) the 0"] * 5


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
  return tok_lib.train_bpe(_TEXTS, tmp_path_factory.mktemp("tok"), vocab_size=800)


@pytest.fixture(scope="module")
def policy(tok_dir):
  tok = tok_lib.load(tok_dir)
  cfg = config.get_config("tiny", vocab_size=len(tok))
  params = qwen2.init_params(cfg, jax.random.PRNGKey(0))
  return run_lib.Policy(cfg, params, tok, "tiny")


_EXAMPLES = [
    datasets.QAExample("a", "What is the capital of France?", ["Paris"], "toy"),
    datasets.QAExample("b", "What is the capital of Italy?", ["Rome", "Roma"], "toy"),
    datasets.QAExample("c", "Which city is big?", ["New York City"], "toy"),
]
_ANSWERS = ["Paris", "the city of Rome", "York"]
# Hand-worked (SQuAD normalisation): recall, EM, F1 per example.
_EXPECTED = [(1.0, 1.0, 1.0), (1.0, 0.0, 0.5), (1 / 3, 0.0, 0.5)]


def _hook(tok, answers, query="capital"):
  """Row i: think, one search, then answer i and <|im_end|>; padded rows repeat the last."""
  ids = lambda s: tok_lib.encode(tok, s)
  rows = [ids(f"<think> look </think><search> {query} </search>") + ids(f"<answer> {a} </answer>")
          + [tok_lib.eos_id(tok)] for a in answers]
  width = max(map(len, rows))
  script = np.full((4, width), -1, np.int64)
  for i in range(4):
    r = rows[min(i, len(rows) - 1)]
    script[i, :len(r)] = r
  return fx.script_hook(script)


def _cfg(mode="agent"):
  return run_lib.EvalConfig(mode=mode, batch_size=4, max_len=384, max_new_tokens=160,
                            chunk_steps=16, max_tool_tokens=64)


def _read(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def agent(policy):
  """(sampler, retriever) in agent mode, shared by tests (one compile)."""
  ret = fx.FakeRetriever()
  return run_lib.make_sampler(policy, _cfg(), ret, logits_hook=_hook(policy.tokenizer, _ANSWERS)), ret


def test_agent_eval_writes_records_and_summary(policy, agent, tmp_path):
  sampler, ret = agent
  ret.calls.clear()
  summary = run_lib.evaluate(policy, {"toy": _EXAMPLES}, _cfg(), tmp_path, ret, sampler=sampler)

  recs = _read(tmp_path / "predictions" / "toy.jsonl")
  assert [r["id"] for r in recs] == ["a", "b", "c"]
  assert ret.calls == [["capital"] * 4]                  # one retrieval round, padded row included
  for r, ex, ans, (rec, em, f1) in zip(recs, _EXAMPLES, _ANSWERS, _EXPECTED):
    assert r["prompt"] == traces.question_prompt(ex.question)   # the trace / RL prompt
    assert r["gold"] == ex.golden_answers and r["question"] == ex.question
    # The trajectory holds the search, the observation of the fake hits and the answer.
    assert "<search> capital </search>" in r["response"] and "Doc 1(Title: t0)" in r["response"]
    assert re.search(r"<answer>(.*?)</answer>", r["response"]).group(1).strip() == ans
    assert r["prediction"] == ans and r["finish_reason"] == "answer"
    assert r["searches"] == 1 and r["queries"] == ["capital"]
    assert r["reward"]["recall"] == pytest.approx(rec)
    assert r["reward"]["em"] == pytest.approx(em) and r["reward"]["f1"] == pytest.approx(f1)
    # Independent recomputation from the JSONL prediction.
    assert r["reward"]["f1"] == pytest.approx(metrics.f1(r["prediction"], r["gold"]))

  disk = json.loads((tmp_path / "summary.json").read_text())
  want = {"recall": 7 / 9, "em": 1 / 3, "f1": 2 / 3, "searches": 1.0, "n": 3.0}
  for key, val in want.items():
    assert disk["toy"][key] == pytest.approx(val), key
    assert summary["toy"][key] == pytest.approx(val), key
  from_jsonl = {"recall": np.mean([metrics.token_recall(r["prediction"], r["gold"]) for r in recs]),
                "em": np.mean([metrics.exact_match(r["prediction"], r["gold"]) for r in recs])}
  assert disk["toy"]["recall"] == pytest.approx(from_jsonl["recall"])
  assert disk["toy"]["em"] == pytest.approx(from_jsonl["em"])
  md = (tmp_path / "summary.md").read_text()
  assert "| toy | 77.78 | 33.33 | 66.67 | 1.00 | 3 |" in md


def test_closed_book_never_searches(policy, tmp_path):
  ret = fx.FakeRetriever()
  cfg = _cfg("closed_book")
  sampler = run_lib.make_sampler(policy, cfg, None, logits_hook=_hook(policy.tokenizer, _ANSWERS))
  run_lib.evaluate(policy, {"toy": _EXAMPLES}, cfg, tmp_path, ret, sampler=sampler)
  recs = _read(tmp_path / "predictions" / "toy.jsonl")
  assert ret.calls == []
  assert all(r["searches"] == 0 and "search engine" not in r["prompt"] for r in recs)
  # No tool: the <search> text is just text; generation stops at </answer>.
  assert [r["prediction"] for r in recs] == _ANSWERS
  assert "<information>" not in recs[0]["response"]


def test_rag_pe_puts_passages_in_prompt(policy, tmp_path):
  ret = fx.FakeRetriever()
  cfg = _cfg("rag_pe")
  sampler = run_lib.make_sampler(policy, cfg, None, logits_hook=_hook(policy.tokenizer, _ANSWERS))
  summary = run_lib.evaluate(policy, {"toy": _EXAMPLES}, cfg, tmp_path, ret, sampler=sampler)
  recs = _read(tmp_path / "predictions" / "toy.jsonl")
  assert ret.calls == [[ex.question for ex in _EXAMPLES]]
  assert f"Doc 1(Title: t0) the {_EXAMPLES[1].question} 0" in recs[1]["prompt"]
  assert summary["toy"]["searches"] == 1.0


def test_ramp_records_score_per_mask(policy, agent, tmp_path):
  rec = {"id": "r0", "query": ramp.instruction() + "[mask] was built in [mask].",
         "masks": ["Paris", "1889"], "mask_num": 2, "answer": "Paris was built in 1889."}
  path = tmp_path / "ramp_k2.jsonl"
  path.write_text(json.dumps(rec) + "\n")
  sets = run_lib.load_eval_sets([f"ramp_mask2={path}"])
  (ex,) = sets["ramp_mask2"]
  assert ex.golden_answers == ["Paris", "1889"] and ex.question == "[mask] was built in [mask]."
  # Span-wise: mask 1 right, mask 2 wrong -> 0.5; a missing second span also 0.5.
  assert run_lib.score("Paris; 1890", ex)["recall"] == pytest.approx(0.5)
  assert run_lib.score("paris", ex)["em"] == pytest.approx(0.5)
  assert run_lib.score("", ex)["f1"] == 0.0
  sampler, ret = agent          # row 0 of the script answers "Paris": mask 1 only
  run_lib.evaluate(policy, sets, _cfg(), tmp_path / "out", ret, sampler=sampler)
  (r,) = _read(tmp_path / "out" / "predictions" / "ramp_mask2.jsonl")
  assert r["prompt"] == rec["query"] and r["prediction"] == "Paris"
  assert r["reward"]["em"] == 0.5 and r["reward"]["recall"] == 0.5


def test_bad_eval_set_paths_and_layouts(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    run_lib.load_eval_sets([f"x={tmp_path}/nope.jsonl"])
  bad = tmp_path / "odd.jsonl"
  bad.write_text(json.dumps({"q": "?", "a": "!"}) + "\n")
  with pytest.raises(datasets.DatasetFormatError, match=r"found fields \['a', 'q'\]"):
    run_lib.load_eval_sets([str(bad)])
  with pytest.raises(ValueError, match="unknown eval mode"):
    run_lib.EvalConfig(mode="oracle")
  with pytest.raises(report.SummaryError):
    report.validate({"x": {"recall": 2.0, "em": 0, "f1": 0, "searches": 0}})


def test_cli_on_hf_checkpoint_with_lexical_retriever(policy, tok_dir, tmp_path):
  from masksearch_jax import evaluate
  from masksearch_jax.checkpoint import hf
  ckpt = hf.save_hf(policy.params, policy.cfg, tmp_path / "run" / "hf", dtype="float32",
                    tokenizer_dir=tok_dir)
  corpus = tmp_path / "corpus.jsonl"
  corpus.write_text("".join(json.dumps({"id": str(i), "title": f"T{i}", "text": t}) + "\n"
                            for i, t in enumerate(_TEXTS[:4])))
  qa = tmp_path / "qa.jsonl"
  qa.write_text("".join(json.dumps({"id": ex.id, "question": ex.question,
                                    "golden_answers": ex.golden_answers}) + "\n"
                        for ex in _EXAMPLES))
  out = tmp_path / "eval"
  summary = evaluate.run_cli(["evaluate", f"--checkpoint={tmp_path / 'run'}",
                              f"--index=lexical:{corpus}", f"--eval_sets=toy={qa}", f"--out={out}",
                              "--limit=2", "--batch_size=2", "--max_len=384",
                              "--max_new_tokens=24"])
  recs = _read(out / "predictions" / "toy.jsonl")
  assert [r["id"] for r in recs] == ["a", "b"] and summary["toy"]["n"] == 2
  want = np.mean([metrics.f1(r["prediction"], r["gold"]) for r in recs])
  assert json.loads((out / "summary.json").read_text())["toy"]["f1"] == pytest.approx(want)
  with pytest.raises(ValueError, match="needs --tokenizer"):
    evaluate.load_policy(tmp_path)          # neither HF files nor a tokenizer for orbax
  with pytest.raises(FileNotFoundError, match="missing.jsonl"):
    evaluate.run_cli(["evaluate", f"--checkpoint={ckpt}", "--mode=closed_book",
                      f"--eval_sets={tmp_path}/missing.jsonl"])

"""The CLI end to end: a questions file, a BM25 corpus, an OpenAI-compatible stub for every role."""
import json

import pytest
from absl import app, flags

from masksearch_jax.agents import generate_traces as gt
from masksearch_jax.rl import rewards
from tests.agents import chat_server, fakes


def _flags(argv):
  fv = flags.FlagValues()
  gt.define_flags(fv)
  fv(["generate_traces"] + argv)
  return fv


def _files(tmp_path):
  corpus = tmp_path / "corpus.jsonl"
  corpus.write_text("".join(json.dumps({"id": h.id, "title": h.title, "text": h.text}) + "\n"
                            for h in fakes.DOCS.values()))
  questions = tmp_path / "questions.jsonl"
  wrong = {"id": "q2", "question": "Where was the founder of Acme Corp born, really?",
           "golden_answers": ["Shelbyville"]}
  questions.write_text(json.dumps(fakes.QUESTION) + "\n" + json.dumps(wrong) + "\n")
  return corpus, questions


def test_cli_writes_accepted_and_rejected(tmp_path):
  corpus, questions = _files(tmp_path)
  script = {"planner": fakes.good_planner, "rewriter": fakes.echo_rewriter,
            "observer": fakes.two_hop_observer()}

  def reply(body, n):
    p = body["messages"][-1]["content"]
    return 200, chat_server.completion(script[fakes.role_of(p)](p)), 0.0

  out, bad = tmp_path / "out" / "traces.jsonl", tmp_path / "rejected.jsonl"
  with chat_server.serve(reply) as (url, reqs):
    fv = _flags([f"--questions={questions}", f"--corpus={corpus}", f"--generator=openai:{url}",
                 f"--out={out}", f"--rejected_out={bad}", "--batch_size=2", "--http_workers=2"])
    summary = gt.run(fv)
  assert summary["items"] == 2 and summary["accepted"] == 1 and summary["acceptance_rate"] == 0.5
  assert summary["rejected"] == {"wrong_answer": 1}
  got = [json.loads(l) for l in out.read_text().splitlines()]
  assert [g["meta"]["id"] for g in got] == ["q1"]
  assert rewards.check_format(got[0]["response"]).ok
  assert "founded by Jane Roe" in got[0]["response"]          # BM25 found the right passage
  rej = [json.loads(l) for l in bad.read_text().splitlines()]
  assert [(r["id"], r["reason"]) for r in rej] == [("q2", "wrong_answer")]
  assert len(reqs) == summary["calls"]["planner"] + summary["calls"]["rewriter"] + \
      summary["calls"]["observer"]


def test_cli_needs_exactly_one_retriever(tmp_path):
  corpus, questions = _files(tmp_path)
  fv = _flags([f"--questions={questions}", f"--corpus={corpus}", "--index_dir=x",
               "--generator=openai:http://127.0.0.1:9", f"--out={tmp_path / 'o.jsonl'}"])
  with pytest.raises(app.UsageError, match="exactly one"):
    gt.run(fv)


def test_load_records_reads_ramp_and_reports_bad_lines(tmp_path):
  p = tmp_path / "ramp.jsonl"
  p.write_text(json.dumps({"query": "q [mask]", "masks": ["a"], "mask_num": 1}) + "\n{oops\n")
  with pytest.raises(ValueError, match="ramp.jsonl:2"):
    gt.load_records(str(p))
  assert gt.load_records(str(p), limit=1)[0]["masks"] == ["a"]

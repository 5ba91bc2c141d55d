"""RL prompt loading: QA and RAMP records normalised, errors name file:line, resumable order."""
from __future__ import annotations

import json

import pytest

from masksearch_jax.data import traces
from masksearch_jax.rl import prompts


def _write(path, rows):
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return path


def test_qa_and_ramp_records(tmp_path):
  p = _write(tmp_path / "a.jsonl", [
      {"id": "q1", "question": "Who?", "golden_answers": ["Ann", "Anne"]},
      {"id": "r1", "query": "fill [mask] in", "masks": ["this"], "mask_num": 1},
      {"id": "q2", "prompt": "raw prompt", "answer": "x"}])
  qa, ramp, raw = prompts.load_examples([p])
  assert qa["prompt"] == traces.question_prompt("Who?")       # the SFT traces' wording
  assert qa["gold"]["gold_answers"] == ["Ann", "Anne"] and qa["mask_num"] == 0
  assert ramp["prompt"] == "fill [mask] in" and ramp["gold"]["masks"] == ["this"]
  assert ramp["mask_num"] == 1
  assert raw["prompt"] == "raw prompt" and raw["gold"]["gold_answers"] == ["x"]


@pytest.mark.parametrize("row, needle", [
    ('{"id": 1, "question": "q"}', "a.jsonl:2: QA example has no non-empty golden_answers"),
    ('{"masks": ["a"]}', "a.jsonl:2: RAMP record needs a string field 'query'"),
    ('{"question": 3, "answer": "x"}', "a.jsonl:2: QA example needs a non-empty string 'question'"),
    ('{"question": "  ", "answer": "x"}', "a.jsonl:2: QA example needs a non-empty string"),
    ("{not json", "a.jsonl:2: invalid JSON"),
])
def test_errors_name_file_and_line(tmp_path, row, needle):
  p = _write(tmp_path / "a.jsonl", [{"question": "ok", "answer": "y"}, row])
  with pytest.raises(ValueError, match=needle):
    prompts.load_examples([p])


def test_staged_order_and_resume():
  exs = [{"id": f"{k}-{i}", "mask_num": k} for k in (2, 1, 3) for i in range(3)]
  s = prompts.PromptStream(exs, "staged", seed=4)
  first = s.take(9)
  assert [e["mask_num"] for e in first] == [1] * 3 + [2] * 3 + [3] * 3
  nxt = s.take(5)                                  # second epoch, reshuffled within stages
  resumed = prompts.PromptStream(exs, "staged", seed=4, position=9)
  assert [e["id"] for e in resumed.take(5)] == [e["id"] for e in nxt]
  assert s.state() == {"position": 14}
  mixed = prompts.PromptStream(exs, "mixed", seed=4).take(9)
  assert sorted(e["id"] for e in mixed) == sorted(e["id"] for e in exs)
  with pytest.raises(ValueError, match="curriculum"):
    prompts.PromptStream(exs, "sorted")

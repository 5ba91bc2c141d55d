"""Eval-set readers on every real file in shared/data plus small synthetic (bad) files."""
import json
from pathlib import Path

import pytest

from masksearch_jax.eval import datasets as ds

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _real(rel):
  p = DATA / rel
  if not p.exists():
    pytest.skip(f"shared data absent: {p}")
  return p


def test_flashrag_nq():
  ex = ds.load_eval_set(_real("flashrag/nq_quickstart_test.jsonl"))
  assert len(ex) == 17  # SOURCE.txt says 16 (wc -l); the last line has no newline
  assert ex[0].id == "test_0" and ex[0].question == "who got the first nobel prize in physics"
  assert ex[0].golden_answers == ["Wilhelm Conrad Röntgen"]
  assert ex[2].golden_answers == ["Olivia", "MFSK"]
  assert ex[0].source == "nq_quickstart_test"


def test_hotpotqa_questions_jsonl():
  ex = ds.load_eval_set(_real("hotpotqa_dev100/questions.jsonl"))
  assert len(ex) == 100
  assert ex[0].id == "hotpot_dev_0" and ex[0].golden_answers == ["yes"]
  assert ex[0].meta["supporting_titles"] == ["Ed Wood", "Scott Derrickson"]


def test_hotpotqa_official_json_matches_derived_questions():
  off = ds.load_eval_set(_real("hotpotqa_dev100/hotpot_dev_distractor_first100.json"), source="hotpotqa")
  derived = ds.load_eval_set(_real("hotpotqa_dev100/questions.jsonl"))
  assert len(off) == 100
  assert [e.question for e in off] == [e.question for e in derived]
  assert [e.golden_answers for e in off] == [e.golden_answers for e in derived]
  assert off[1].golden_answers == ["Chief of Protocol"]
  assert off[0].id == "hotpotqa_0" and "context" not in off[0].meta and off[0].meta["level"] == "hard"


def test_r1searcher_training_sets():
  s1 = ds.load_eval_set(_real("r1searcher/training_set/stage_1.jsonl"))
  s2 = ds.load_eval_set(_real("r1searcher/training_set/stage_2.jsonl"))
  assert (len(s1), len(s2)) == (350, 8148)
  assert s1[0].id == "37653" and s1[0].golden_answers == ["U.S. Route 22"]
  assert s2[0].id == "1" and s2[0].question == "Jonathan Glazer and Robert Rodriguez both work as what?"
  assert s2[0].golden_answers == ["filmmaker"] and s2[0].source == "stage_2"


def test_freshqa_csv_multi_answers():
  ex = ds.load_eval_set(_real("freshqa_2023/freshqa.csv"))
  assert len(ex) == 600
  first = ex[0]
  assert first.id == "0" and first.question == "What is the name of the first animal to land on the moon?"
  assert first.golden_answers == ["No animal has ever landed on the moon yet.",
                                  "Since humans are animals, one could say Neil Armstrong."]
  assert first.meta["split"] == "TEST" and first.meta["false_premise"] == "TRUE"
  assert sum(e.meta["split"] == "DEV" for e in ex) == 100


def test_freshqa_with_preamble_rows(tmp_path):
  p = tmp_path / "fresh.csv"
  p.write_text(
      "FreshQA sheet,,,\n"
      "\"Note: answers as of this week\",,,\n"
      "id,split,question,answer_0,answer_1,note\n"
      "7,DEV,\"Who, exactly?\",Ada,\"Lovelace, Ada\",\n"
      ",,,,,\n"
      "8,TEST,Which year?,1999,,x\n", encoding="utf-8")
  ex = ds.load_eval_set(p)
  assert [(e.id, e.question, e.golden_answers) for e in ex] == [
      ("7", "Who, exactly?", ["Ada", "Lovelace, Ada"]), ("8", "Which year?", ["1999"])]
  assert ex[1].meta == {"split": "TEST", "note": "x"}


def test_verl_rows_as_jsonl(tmp_path):
  p = tmp_path / "train.jsonl"
  rows = [
      {"data_source": "nq", "prompt": [{"role": "system", "content": "sys"},
                                       {"role": "user", "content": "Who wrote Hamlet?"}],
       "reward_model": {"style": "rule", "ground_truth": {"target": ["Shakespeare", "W. Shakespeare"]}},
       "extra_info": {"index": 3, "split": "train"}},
      {"data_source": "hotpotqa", "prompt": "plain prompt?", "reward_model": {"ground_truth": "x"}},
  ]
  p.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
  ex = ds.load_eval_set(p)
  assert ex[0] .question == "Who wrote Hamlet?" and ex[0].golden_answers == ["Shakespeare", "W. Shakespeare"]
  assert ex[0].source == "nq" and ex[0].id == "3"
  assert ex[1].question == "plain prompt?" and ex[1].golden_answers == ["x"] and ex[1].id == "1"


def test_verl_parquet(tmp_path):
  pa = pytest.importorskip("pyarrow")
  import pyarrow.parquet as pq
  rows = [{"data_source": "nq", "prompt": [{"role": "user", "content": "Q1?"}],
           "reward_model": {"ground_truth": {"target": ["a1"]}}}]
  p = tmp_path / "t.parquet"
  pq.write_table(pa.Table.from_pylist(rows), p)
  ex = ds.load_eval_set(p)
  assert ex[0].question == "Q1?" and ex[0].golden_answers == ["a1"]


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch):
  import builtins
  real_import = builtins.__import__

  def fake_import(name, *a, **k):
    if name.startswith(("pyarrow", "pandas")):
      raise ImportError(name)
    return real_import(name, *a, **k)

  monkeypatch.setattr(builtins, "__import__", fake_import)
  p = tmp_path / "t.parquet"
  p.write_bytes(b"PAR1")
  with pytest.raises(ds.DatasetFormatError, match="pyarrow"):
    ds.load_eval_set(p)


def test_unknown_layout_names_found_fields(tmp_path):
  p = tmp_path / "bad.jsonl"
  p.write_text('{"query": "q", "label": "a"}\n', encoding="utf-8")
  with pytest.raises(ds.DatasetFormatError) as e:
    ds.load_eval_set(p)
  assert "bad.jsonl:1" in str(e.value) and "['label', 'query']" in str(e.value)


def test_bad_record_names_line_and_field(tmp_path):
  p = tmp_path / "x.jsonl"
  p.write_text('{"id": 1, "question": "q?", "golden_answers": ["a"]}\n\n'
               '{"id": 2, "question": "", "golden_answers": ["b"]}\n', encoding="utf-8")
  with pytest.raises(ds.DatasetFormatError, match=r"x.jsonl:3: field 'question'"):
    ds.load_eval_set(p)
  p.write_text('{"id": 1, "question": "q?", "golden_answers": []}\n', encoding="utf-8")
  with pytest.raises(ds.DatasetFormatError, match=r"x.jsonl:1: golden_answers: no non-empty"):
    ds.load_eval_set(p)
  p.write_text('{"id": 1, "question": "q?", "golden_answers": ["a"]}\n{"id": 2, "question": "q2?"}\n')
  with pytest.raises(ds.DatasetFormatError, match=r"x.jsonl:2: record layout differs.*\['id', 'question'\]"):
    ds.load_eval_set(p)
  p.write_text('{"id": 1, "question": "q?", "golden_answers": ["a"]}\n{"id": 2,\n')
  with pytest.raises(ds.DatasetFormatError, match=r"x.jsonl:2: invalid JSON"):
    ds.load_eval_set(p)


def test_bad_csv_and_suffix(tmp_path):
  p = tmp_path / "x.csv"
  p.write_text("q,a\nwho?,me\n", encoding="utf-8")
  with pytest.raises(ds.DatasetFormatError, match=r"first row has fields \['q', 'a'\]"):
    ds.load_eval_set(p)
  t = tmp_path / "x.txt"
  t.write_text("hi")
  with pytest.raises(ds.DatasetFormatError, match="unknown file type"):
    ds.load_eval_set(t)
  with pytest.raises(FileNotFoundError):
    ds.load_eval_set(tmp_path / "nope.jsonl")


def test_json_array_and_limit(tmp_path):
  p = tmp_path / "arr.json"
  p.write_text(json.dumps([{"idx": 5, "question": "q?", "answer": ["a", " b "]}] * 3))
  ex = ds.load_eval_set(p, source="mine", limit=2)
  assert len(ex) == 2 and ex[0] == ds.QAExample("5", "q?", ["a", "b"], "mine", {})


def test_parse_eval_spec():
  assert ds.parse_eval_spec("nq=/a/b.jsonl") == ("nq", "/a/b.jsonl")
  assert ds.parse_eval_spec("/a/b=c.jsonl") == (None, "/a/b=c.jsonl")
  assert ds.parse_eval_spec("b.jsonl") == (None, "b.jsonl")


def test_default_source_uses_folder_for_generic_names():
  assert ds.default_source(Path("/d/nq/test.jsonl")) == "nq"
  assert ds.default_source(Path("/d/nq/bamboogle.jsonl")) == "bamboogle"

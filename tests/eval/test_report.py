"""Summary table: hand-worked averages and x100 formatting, file round trip, clear errors."""
import json

import pytest

from masksearch_jax.eval import report

S = {"hotpotqa": {"recall": 0.5, "em": 0.25, "f1": 0.4, "searches": 2.0, "n": 4},
     "nq": {"recall": 0.7, "em": 0.5, "f1": 0.6, "searches": 1.0, "n": 2}}


def test_average_row_is_unweighted_mean():
  avg = report.with_average(S)["average"]
  assert avg["recall"] == pytest.approx(0.6) and avg["em"] == pytest.approx(0.375)
  assert avg["f1"] == pytest.approx(0.5) and avg["searches"] == pytest.approx(1.5) and avg["n"] == 6
  assert "average" not in report.with_average({"nq": S["nq"]})


def test_markdown_shows_scores_x100():
  md = report.to_markdown(S, title="eval")
  lines = md.splitlines()
  assert lines[0] == "### eval"
  assert "| hotpotqa | 50.00 | 25.00 | 40.00 | 2.00 | 4 |" in lines
  assert "| **average** | 60.00 | 37.50 | 50.00 | 1.50 | 6 |" in lines
  assert lines[3].startswith("|---|---:")


def test_text_table_aligned():
  txt = report.to_text(S).splitlines()
  assert txt[0].split() == ["dataset", "recall", "EM", "F1", "searches", "n"]
  assert txt[2].split() == ["hotpotqa", "50.00", "25.00", "40.00", "2.00", "4"]
  assert len({len(l) for l in txt}) == 1  # fixed width


def test_write_and_load_round_trip(tmp_path):
  paths = report.write_summary(S, tmp_path / "eval")
  data = json.loads(paths["json"].read_text())
  assert data["average"]["recall"] == pytest.approx(0.6)
  assert report.load_summary(paths["json"])["nq"]["em"] == 0.5
  assert "| nq | 70.00" in paths["md"].read_text()


@pytest.mark.parametrize("bad,msg", [
    ({}, "non-empty"),
    ({"nq": {"recall": 0.5, "em": 0.1, "f1": 0.2}}, "lacks 'searches'"),
    ({"nq": {"recall": 55.0, "em": 0.1, "f1": 0.2, "searches": 1}}, "outside"),
    ({"nq": {"recall": float("nan"), "em": 0.1, "f1": 0.2, "searches": 1}}, "finite"),
    ({"nq": {"recall": "0.5", "em": 0.1, "f1": 0.2, "searches": 1}}, "'recall'"),
    ({"nq": [1, 2]}, "not a mapping"),
])
def test_validation_errors(bad, msg):
  with pytest.raises(report.SummaryError, match=msg):
    report.validate(bad)


def test_load_bad_json_names_file(tmp_path):
  p = tmp_path / "summary.json"
  p.write_text("{oops")
  with pytest.raises(report.SummaryError, match="summary.json: invalid JSON"):
    report.load_summary(p)

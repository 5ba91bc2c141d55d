"""Response splitting (lossless, turn numbering, truncated tags) and rollout/metrics parsing."""
import json
from pathlib import Path

import pytest

from masksearch_jax.protocol import Hit, Protocol, format_observation, format_error_observation
from masksearch_jax.viewer import curves, trajectory as tr

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def test_split_hand_worked():
  obs = format_observation([Hit("1", "Paris", "Capital of France.", 1.0), Hit("2", "Lyon (city)", "Second city.", .5)])
  text = "<think>need to look</think>\n<search> capital of France </search>" + obs + "So it is Paris.<answer> Paris </answer>"
  segs = tr.split_response(text)
  assert [(s.kind, s.text, s.turn) for s in segs] == [
      ("think", "need to look", 0), ("search", "capital of France", 0),
      ("information", "Doc 1(Title: Paris) Capital of France.\nDoc 2(Title: Lyon (city)) Second city.", 0),
      ("text", "So it is Paris.", 1), ("answer", "Paris", 1)]
  assert [(h.id, h.title, h.text) for h in segs[2].hits] == [("1", "Paris", "Capital of France."),
                                                             ("2", "Lyon (city)", "Second city.")]


def test_truncated_and_error_observation():
  text = "<think>a</think>" + format_error_observation("timeout") + "<search> unfinished q"
  segs = tr.split_response(text)
  assert [(s.kind, s.closed) for s in segs] == [("think", True), ("information", True), ("search", False)]
  assert segs[1].hits == () and segs[1].text == "Search failed: timeout"
  assert segs[2].text == "unfinished q" and segs[2].turn == 1


def test_custom_protocol_tags():
  p = Protocol(think_open="[T]", think_close="[/T]")
  assert [s.kind for s in tr.split_response("[T]x[/T]<answer>y</answer>", p)] == ["think", "answer"]


def test_real_searchr1_case():
  p = DATA / "searchr1" / "example_case.txt"
  if not p.exists():
    pytest.skip("shared data absent")
  text = p.read_text(encoding="utf-8")
  first = text.split("<|im_start|>assistant", 1)[1].split("<|im_start|>system", 1)[0]
  segs = tr.split_response(first)
  assert [s.kind for s in segs if s.kind != "text"] == ["think", "search", "information", "search",
                                                        "information", "answer"]
  assert segs[-1].text == "Charger"
  info = [s for s in segs if s.kind == "information"]
  assert [len(s.hits) for s in info] == [3, 3] and info[0].hits[0].title == '"Paul Walker"'
  assert segs[1].text == "Paul Walker's cars in Fast and Furious"


def test_parse_rollout_and_errors(tmp_path):
  r = tr.parse_rollout({"id": 1, "response": "x", "reward": 0.5, "gold": "a", "step": 3}, "f:1")
  assert (r.id, r.source, r.gold, r.reward, r.extra) == ("1", "unknown", ["a"], {"total": 0.5}, {"step": 3})
  with pytest.raises(ValueError, match="f:2: missing field 'reward'"):
    tr.parse_rollout({"response": "x"}, "f:2")
  with pytest.raises(ValueError, match=r"f:3: reward.format is 'x'"):
    tr.parse_rollout({"response": "x", "reward": {"total": 1, "format": "x"}}, "f:3")
  p = tmp_path / "r.jsonl"
  p.write_text('{"response": "a", "reward": 1}\n\n{bad\n')
  with pytest.raises(ValueError, match=r"r.jsonl:3: invalid JSON"):
    tr.load_rollouts(p)
  assert len(tr.load_rollouts(p, limit=1)) == 1


def test_metrics_and_svg(tmp_path):
  p = tmp_path / "m.jsonl"
  rows = [{"step": s, "loss": 4.0 - s, "reward/mean": s / 10, "note": "x", "bad": float("nan")} for s in range(4)]
  p.write_text("\n".join(json.dumps(r) for r in rows))
  series = curves.load_metrics(p)
  assert set(series) == {"loss", "reward/mean"} and series["loss"] == [(0, 4), (1, 3), (2, 2), (3, 1)]
  svg = curves.svg_chart("loss", series["loss"], width=320, height=180)
  # plot box x in [48, 310], y in [22, 154]: the loss falls from top-left to bottom-right.
  assert 'points="48.0,22.0 135.3,66.0 222.7,110.0 310.0,154.0"' in svg
  assert "last 1" in svg
  long = [(float(i), float(i)) for i in range(5001)]
  # stride ceil(5001/1000) = 6: indices 0, 6, ..., 4998 (834 points) plus the last one.
  assert 'data-points="835"' in curves.svg_chart("x", long)
  p.write_text('{"step": "a", "loss": 1}\n')
  with pytest.raises(ValueError, match="m.jsonl:1: field 'step'"):
    curves.load_metrics(p)

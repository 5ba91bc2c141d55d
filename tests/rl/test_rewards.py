"""Hand-worked cases for the format check, answer overlap, length penalty, judge and combination."""
from pathlib import Path

import numpy as np
import pytest

from masksearch_jax.protocol import DEFAULT, Hit, format_observation
from masksearch_jax.rl import rewards as rw

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
OBS = format_observation([Hit("1", "Paris", "Paris is the capital of France. <think>", 1.0)])


def _resp(answer, searches=1):
  body = "<think>I should look it up.</think>"
  for i in range(searches):
    body += f"\n<search> capital of France {i} </search>{OBS}<think>Found it.</think>"
  return body + f"\n<answer> {answer} </answer>\n"


# ----------------------------------------------------------------------------- format

def test_valid_formats():
  for n in (0, 1, 3):
    r = rw.check_format(_resp("Paris", n))
    assert r.ok, r.reason
    assert r.num_searches == n
  assert rw.check_format("<think></think><answer>x</answer>").ok  # empty thought is allowed


@pytest.mark.parametrize("text, reason", [
    ("Sure! <think>a</think><answer>x</answer>", "outside tags"),
    ("<search>q</search><information>d</information><think>a</think><answer>x</answer>",
     "search block at char 0 after start"),
    ("<think>a</think><search>q</search><information>d</information><answer>x</answer>",
     "answer block"),                                                  # no think after info
    ("<think>a</think><search>q</search><think>b</think><answer>x</answer>",
     "think block"),                                                   # search without info
    ("<think>a <search>q</search></think><answer>x</answer>", "<search> at char 9 inside"),
    ("<think>a</think><answer>x", "unclosed answer"),
    ("<think>a</think><answer>x</answer> and more", "after the answer"),
    ("<think>a</think><answer>x</answer><answer>y</answer>", "expected nothing"),
    ("<think>a</think><answer>  </answer>", "empty answer"),
    ("<think>a</think><search> </search><information>d</information><think>b</think>"
     "<answer>x</answer>", "empty search"),
    ("<think>a</think></think><answer>x</answer>", "unexpected closing tag </think>"),
    ("<think>a</think><search>q</search><information>d", "unclosed information"),
    ("<think>a</think>", "ended without an answer"),
    ("", "ended without an answer"),
])
def test_invalid_formats(text, reason):
  r = rw.check_format(text)
  assert not r.ok
  assert reason in r.reason, r.reason


def test_real_search_r1_trajectory_is_not_strict():
  path = DATA / "searchr1" / "example_case.txt"
  if not path.exists():
    pytest.skip("shared data not present")
  text = path.read_text()
  first = text.split("<|im_start|>assistant\n")[1].split("<|im_start|>")[0]
  r = rw.check_format(first)
  assert not r.ok and "outside tags" in r.reason  # it reasons in free text between blocks
  assert r.num_searches == 1
  assert DEFAULT.extract_answer(first) == "Charger"


# ----------------------------------------------------------------------------- answer

def _score(answer, gold, **kw):
  return rw.answer_score(answer, rw.as_gold(gold, 0), rw.RewardConfig(**kw))


def test_recall_and_length_penalty_hand_worked():
  assert _score("Paris", ["Paris"]) == 1.0
  # recall 1; 2 tokens vs 1 gold token, allowed = max(ceil(2*1), 1+1) = 2 -> factor 1
  assert _score("Barack Obama", "Obama") == 1.0
  # recall 1/2; 1 token, no penalty
  assert _score("Obama", "Barack Obama") == 0.5
  assert _score(None, "Paris") == 0.0


def test_recall_hacking_is_penalised():
  hacked = "London, Paris, Berlin, Rome, Madrid"
  # recall 1, but 5 tokens with allowed 2 -> 2/5
  assert _score(hacked, "Paris") == pytest.approx(0.4)
  assert _score(hacked, "Paris", length_penalty=False) == 1.0  # what the penalty prevents
  assert _score(hacked, "Paris") < 0.5 * _score("Paris", "Paris")
  # F1 of the hacked answer: P = 1/5, R = 1 -> 1/3; EM 0
  assert _score(hacked, "Paris", answer_metric="f1") == pytest.approx(1 / 3)
  assert _score(hacked, "Paris", answer_metric="em") == 0.0
  # a 3-token gold allows max(6, 4) = 6 tokens; normalised pred [b c new york city and d e]
  # has 8 tokens -> recall 1 x 6/8
  assert _score("a b c the new york city and d e", "new york city") == pytest.approx(6 / 8)


def test_ramp_spans_in_order():
  gold = {"masks": ["Andrew Barto", "1970"]}
  assert _score("Andrew Barto; 1970", gold) == 1.0
  assert _score("Andrew Barto; 1975", gold) == 0.5
  assert _score("1970; Andrew Barto", gold) == 0.0     # order matters
  assert _score("Andrew Barto", gold) == 0.5           # missing span scores 0
  assert _score("Andrew Barto; 1970; extra", gold) == 1.0
  assert _score("Barto; 1970", gold) == pytest.approx(0.75)
  assert _score("Andrew Barto | 1970", gold, span_separator="|") == 1.0


def test_gold_parsing_errors_name_fields():
  with pytest.raises(ValueError, match=r"gold #0 .*fields found: \['id', 'question'\]"):
    rw.compute_rewards(["x"], [{"id": 1, "question": "q"}], rw.RewardConfig())
  with pytest.raises(ValueError, match="answer_metric"):
    rw.RewardConfig(answer_metric="bleu")


# ----------------------------------------------------------------------------- judge

@pytest.mark.parametrize("reply, verdict", [
    ("Yes.", True), ("yes, it matches", True), ("No, wrong person", False),
    ("The answer is correct.", True), ("It is not correct.", False),
    ("This isn't right", False), ("<think>maybe yes</think>No", False),
    ("Incorrect", False), ("I cannot tell", None), ("", None),
    ("Partly correct but also wrong", None),
])
def test_parse_verdict(reply, verdict):
  assert rw.parse_verdict(reply) is verdict


class _FakeJudge:
  def __init__(self):
    self.calls = []

  def judge(self, question, gold, prediction):
    self.calls.append((question, list(gold), prediction))
    return prediction.lower() == "paris"


def test_judge_reward_and_lm_judge():
  j = _FakeJudge()
  assert isinstance(j, rw.Judge)
  cfg = rw.RewardConfig(format_weight=0.0, answer_weight=0.0, judge_weight=1.0)
  out = rw.compute_rewards([_resp("Paris"), _resp("Lyon"), "no answer"],
                           [{"question": "capital?", "gold_answers": ["Paris"]}] * 3, cfg,
                           judge=j)
  np.testing.assert_array_equal(out["judge"], [1.0, 0.0, 0.0])
  np.testing.assert_array_equal(out["total"], [1.0, 0.0, 0.0])
  assert j.calls[0] == ("capital?", ["Paris"], "Paris") and len(j.calls) == 2
  with pytest.raises(ValueError, match="no judge"):
    rw.compute_rewards(["x"], ["y"], cfg)
  prompts = []
  lm = rw.LMJudge(generate=lambda p: prompts.append(p) or "Yes, same answer.")
  assert lm.judge("q?", ["Paris", "City of Light"], "paris") is True
  assert "Paris | City of Light" in prompts[0] and "q?" in prompts[0]
  assert rw.LMJudge(generate=lambda p: "hmm").judge("q", ["a"], "b") is False


# ----------------------------------------------------------------------------- combination

def test_compute_rewards_hand_worked():
  responses = [_resp("Paris"), _resp("Lyon, Paris, Nice, Lille, Metz"), "Paris",
               "<think>x</think> <answer>Paris</answer> trailing"]
  golds = [["Paris"], "Paris", ["Paris"], {"gold_answers": ["Paris"]}]
  out = rw.compute_rewards(responses, golds, rw.RewardConfig(format_weight=0.5))
  np.testing.assert_array_equal(out["format"], [1, 1, 0, 0])
  # 3rd: no answer tag -> 0; 4th: answer tag closed -> scored despite the bad format
  np.testing.assert_allclose(out["answer"], [1.0, 0.4, 0.0, 1.0])
  np.testing.assert_allclose(out["total"], [1.5, 0.9, 0.0, 1.0])
  np.testing.assert_array_equal(out["num_searches"], [1, 1, 0, 0])
  gated = rw.compute_rewards(responses, golds, rw.RewardConfig(answer_requires_format=True))
  np.testing.assert_allclose(gated["answer"], [1.0, 0.4, 0.0, 0.0])
  assert out["total"].dtype == np.float32
  assert set(out) == {"format", "answer", "num_searches", "total"}


def test_compute_rewards_overlong():
  cfg = rw.RewardConfig(format_weight=0.0, overlong_max_tokens=10, overlong_buffer=4)
  out = rw.compute_rewards([_resp("Paris")] * 5, ["Paris"] * 5, cfg,
                           num_model_tokens=[6, 7, 8, 10, 12])
  # L_max - L_cache = 6: [0, (6-7)/4, (6-8)/4, (6-10)/4, -1]
  np.testing.assert_allclose(out["overlong"], [0.0, -0.25, -0.5, -1.0, -1.0])
  np.testing.assert_allclose(out["total"], [1.0, 0.75, 0.5, 0.0, 0.0])
  with pytest.raises(ValueError, match="num_model_tokens"):
    rw.compute_rewards(["x"], ["y"], cfg)

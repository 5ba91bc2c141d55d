"""Hand-worked cases for the SQuAD/HotpotQA normalisation and EM / F1 / token recall."""
import json
from pathlib import Path

import pytest

from masksearch_jax.eval import metrics as m

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.mark.parametrize("raw, expected", [
    ("The  Quick, Brown fox!", "quick brown fox"),
    ("The-End", "theend"),            # punctuation removed first, so "the" is no longer a word
    ("A.B.C.", "abc"),
    ("an apple a day", "apple day"),
    ("Theory of the Anthem", "theory of anthem"),  # "the" inside "Theory" is kept
    ("U.S.A.", "usa"),
    ("it's", "its"),
    ("Paul\u2019s car", "paul\u2019s car"),  # only ASCII punctuation is stripped (official)
    ("the", ""),
    ("\tNew\nYork  ", "new york"),
    ("\u00c0 la carte", "\u00e0 la carte"),
    ("a-ha", "aha"),
    ("THE   a  An", ""),
    ("1,000,000", "1000000"),
])
def test_normalize_answer(raw, expected):
  assert m.normalize_answer(raw) == expected


def test_exact_match_multi_gold():
  assert m.exact_match("The Eiffel Tower.", ["Paris", "eiffel tower"]) == 1.0
  assert m.exact_match("Eiffel", ["Paris", "eiffel tower"]) == 0.0
  assert m.exact_match("the", "a") == 1.0  # both normalise to ""


def test_f1_hand_worked():
  # pred tokens [cat, sat, on, mat], gold [cat, on, mat]: P = 3/4, R = 1, F1 = 6/7
  assert m.f1("the cat sat on the mat", "a cat on a mat") == pytest.approx(6 / 7)
  # multiset counts: [new, new, york] vs [new, york] -> common 2, P = 2/3, R = 1, F1 = 0.8
  assert m.f1("new new york", "New York") == pytest.approx(0.8)
  assert m.f1("Obama", ["Barack Obama", "George Bush"]) == pytest.approx(2 / 3)
  assert m.f1("London", "Paris") == 0.0


def test_f1_yes_no_special_case():
  assert m.f1("yes", "Yes.") == 1.0
  assert m.f1("yes it is", "yes") == 0.0       # gold is special and differs
  assert m.f1("no", "no way") == 0.0           # prediction is special and differs (plain F1: 2/3)
  assert m.f1("noanswer", "no answer") == 0.0
  assert m.f1("no", ["no way", "No"]) == 1.0


def test_token_recall():
  assert m.token_recall("Barack Obama was the president", "President Barack Obama") == 1.0
  assert m.token_recall("Obama", "Barack Obama") == 0.5
  assert m.token_recall("Obama", ["Barack Obama", "obama."]) == 1.0
  # multiset: gold [new, new, york], pred [new, york] -> 2/3
  assert m.token_recall("new york", "new new york") == pytest.approx(2 / 3)
  assert m.token_recall("yes no", "yes") == 0.0  # HotpotQA rule also guards recall
  assert m.token_recall("anything", "the") == 0.0


def test_bad_golds_raise():
  with pytest.raises(ValueError, match="empty list"):
    m.f1("x", [])
  with pytest.raises(TypeError, match="strings"):
    m.exact_match("x", [3])


def test_real_flashrag_golds_score_themselves():
  path = DATA / "flashrag"
  files = sorted(path.glob("*.jsonl")) if path.exists() else []
  if not files:
    pytest.skip("shared data not present")
  rows = [json.loads(l) for l in files[0].read_text().splitlines() if l.strip()]
  for row in rows:
    golds = row["golden_answers"]
    for g in golds:
      assert m.exact_match(g, golds) == 1.0
      assert m.f1(g.upper() + ".", golds) == 1.0
      assert m.token_recall("Answer: " + g, golds) == 1.0

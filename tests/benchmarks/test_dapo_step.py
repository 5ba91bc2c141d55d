"""The DAPO benchmark's pure helpers: segment sizes, the forced trace, shares, the tokenizer."""
import numpy as np
import pytest

from benchmarks import dapo_step
from masksearch_jax.protocol import DEFAULT
from masksearch_jax.rl import rewards

TAGS = {t: i + 1 for i, t in enumerate(DEFAULT.all_tags)}   # think 1/2, search 3/4, info 5/6,
                                                            # answer 7/8


def test_turn_period_fits_segments_and_observations():
  assert dapo_step.turn_period(512, 2, 128) == 85          # (512 - 2 * 128) // 3
  assert dapo_step.turn_period(96, 2, 16) == 21            # (96 - 32) // 3
  assert dapo_step.turn_period(40, 0, 128) == 40
  with pytest.raises(ValueError, match="need >= 8"):
    dapo_step.turn_period(20, 2, 16)                       # (20 - 32) // 3 = -4


def test_forced_script_one_turn():
  got = dapo_step.forced_script(rows=3, group_size=2, period=8, turns=1, tag_id=TAGS)
  search = [1, -1, -1, 2, 3, 100, 200, 4]
  want = np.array([search + [1, -1, -1, -1, 2, 7, 400, 8],
                   search + [1, -1, -1, -1, 2, 7, 401, 8],
                   search + [1, -1, -1, -1, 2, 7, 400, 8]])   # row 2 opens the next group
  np.testing.assert_array_equal(got, want)


def test_forced_trace_passes_the_format_check():
  tok = dapo_step.SyntheticTokenizer(512)
  row = dapo_step.forced_script(1, 2, 8, 1, tok.tag_id)[0]
  ids = np.where(row < 0, 20, row)
  text = (tok.decode(ids[:8]) + "<information> doc</information>" + tok.decode(ids[8:]))
  assert text.endswith("<answer> w400</answer>")
  assert rewards.check_format(text).ok


def test_shares():
  assert dapo_step.shares({"a": 1.0, "b": 3.0}) == {"a": 25.0, "b": 75.0}
  assert dapo_step.shares({"a": 0.0}) == {"a": 0.0}


def test_synthetic_tokenizer():
  tok = dapo_step.SyntheticTokenizer(512)
  ids = tok.encode("<think>a b</think>")
  assert ids[0] == 1 and ids[-1] == 2 and len(ids) == 4
  assert all(16 <= i < 512 for i in ids[1:3])
  assert tok.decode([1, 20, 0, 9, 2]) == "<think> w20</think>"   # pad / eos decode to nothing
  assert tok.convert_tokens_to_ids("<|im_end|>") is None

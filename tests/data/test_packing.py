"""Hand-worked tests of first-fit packing."""

import numpy as np
import pytest

from masksearch_jax.data import packing


def _ex(tokens, mask=None):
  tokens = np.array(tokens, np.int32)
  mask = np.ones_like(tokens) if mask is None else np.array(mask, np.int32)
  return tokens, mask


def test_first_fit_hand_worked():
  # seq_len 6. A(4) opens row 0 (room 2); B(3) does not fit -> row 1 (room 3);
  # C(2) fits row 0 (room 0); D(3) fits row 1 (room 0); E(1) opens row 2.
  examples = [
      _ex([11, 12, 13, 14], [0, 0, 1, 1]),
      _ex([21, 22, 23], [0, 1, 1]),
      _ex([31, 32], [1, 0]),
      _ex([41, 42, 43]),
      _ex([51]),
  ]
  rows, stats = packing.pack_examples(examples, 6, pad_id=-1)
  np.testing.assert_array_equal(rows["tokens"], [
      [11, 12, 13, 14, 31, 32],
      [21, 22, 23, 41, 42, 43],
      [51, -1, -1, -1, -1, -1],
  ])
  np.testing.assert_array_equal(rows["loss_mask"], [
      [0, 0, 1, 1, 1, 0],
      [0, 1, 1, 1, 1, 1],
      [1, 0, 0, 0, 0, 0],
  ])
  np.testing.assert_array_equal(rows["segment_ids"], [
      [1, 1, 1, 1, 2, 2],
      [1, 1, 1, 2, 2, 2],
      [1, 0, 0, 0, 0, 0],
  ])
  np.testing.assert_array_equal(rows["positions"], [
      [0, 1, 2, 3, 0, 1],
      [0, 1, 2, 0, 1, 2],
      [0, 0, 0, 0, 0, 0],
  ])
  for v in rows.values():
    assert v.dtype == np.int32 and v.shape == (3, 6)
  assert (stats.examples, stats.rows, stats.real_tokens) == (5, 3, 13)
  assert stats.truncated == stats.dropped == stats.empty == 0


def test_overlong_truncate_and_drop():
  examples = [_ex([1, 2, 3, 4, 5], [1, 1, 1, 0, 0]), _ex([7, 8])]
  rows, stats = packing.pack_examples(examples, 4)
  # The truncated example fills row 0 entirely; [7, 8] needs a new row.
  np.testing.assert_array_equal(rows["tokens"], [[1, 2, 3, 4], [7, 8, 0, 0]])
  np.testing.assert_array_equal(rows["loss_mask"], [[1, 1, 1, 0], [1, 1, 0, 0]])
  assert (stats.truncated, stats.dropped, stats.tokens_lost) == (1, 0, 1)

  rows, stats = packing.pack_examples(examples, 4, overlong="drop")
  np.testing.assert_array_equal(rows["tokens"], [[7, 8, 0, 0]])
  assert (stats.truncated, stats.dropped, stats.tokens_lost) == (0, 1, 5)


def test_empty_examples_skipped_and_no_rows():
  rows, stats = packing.pack_examples([_ex([]), _ex([])], 4)
  assert rows["tokens"].shape == (0, 4)
  assert stats.empty == 2 and stats.rows == 0


def test_segments_never_exceed_row_and_tokens_preserved():
  rng = np.random.default_rng(0)
  examples = [_ex(rng.integers(1, 100, size=n)) for n in rng.integers(1, 17, 50)]
  rows, _ = packing.pack_examples(examples, 16)
  # Every example appears intact as one segment (independent reconstruction).
  got = []
  for r in range(rows["tokens"].shape[0]):
    seg = rows["segment_ids"][r]
    for s in range(1, seg.max() + 1):
      idx = np.nonzero(seg == s)[0]
      assert np.all(np.diff(idx) == 1)  # contiguous
      np.testing.assert_array_equal(rows["positions"][r, idx], np.arange(len(idx)))
      got.append(tuple(rows["tokens"][r, idx]))
  assert sorted(got) == sorted(tuple(t) for t, _ in examples)


def test_bad_input_names_example():
  with pytest.raises(ValueError, match="example 1: tokens has length 2 but loss_mask has length 3"):
    packing.pack_examples([_ex([1]), (np.array([1, 2]), np.array([1, 1, 1]))], 4)
  with pytest.raises(ValueError, match="overlong"):
    packing.pack_examples([_ex([1])], 4, overlong="wrap")

"""Dynamic sampling: group filtering and the fill loop with its round cap."""
import numpy as np
import pytest

from masksearch_jax.rl import dynamic_sampling as ds


def test_informative_groups():
  r = [1, 1, 1, 0, 1, 0, 0.5, 0.5, 0.5]
  np.testing.assert_array_equal(ds.informative_groups(r, 3), [False, True, False])
  with pytest.raises(ValueError, match="group_size=4"):
    ds.informative_groups(r, 4)


def _rounds(per_round):
  """Round i yields groups named (i, j); rewards all-equal where per_round[i][j] is False."""
  calls = []

  def gen(i):
    calls.append(i)
    flags = per_round[i]
    rewards = np.array([[0.0, 1.0] if f else [1.0, 1.0] for f in flags])
    return ds.Round(groups=[(i, j) for j in range(len(flags))], rewards=rewards)
  return gen, calls


def test_fill_batch_keeps_generating_until_full():
  gen, calls = _rounds([[True, False, False], [False, False, False], [True, True, True]])
  groups, stats = ds.fill_batch(gen, num_groups=3, max_rounds=5)
  assert groups == [(0, 0), (2, 0), (2, 1)]
  assert calls == [0, 1, 2]
  assert stats == ds.FillStats(rounds=3, groups_generated=9, groups_kept=4)


def test_fill_batch_cap_raises_with_counts():
  gen, calls = _rounds([[True, False], [False, False], [True, True]])
  with pytest.raises(ds.DynamicSamplingError,
                     match=r"after 2 generation rounds only 1 of the 3 groups needed .*4 groups "
                           r"generated, 3 dropped"):
    ds.fill_batch(gen, num_groups=3, max_rounds=2)
  assert calls == [0, 1]


def test_fill_batch_rejects_mismatched_round():
  with pytest.raises(ValueError, match="round 0 returned 2 groups"):
    ds.fill_batch(lambda i: ds.Round(groups=[1, 2], rewards=np.zeros((3, 2))), 1, 1)


def test_fill_batch_completes_a_short_batch_with_all_equal_groups():
  # after 2 rounds: 2 informative of 3 needed; with min_informative=2 the first all-equal group
  # generated completes the batch instead of raising.
  gen, calls = _rounds([[True, False], [False, True]])
  groups, stats = ds.fill_batch(gen, num_groups=3, max_rounds=2, min_informative=2)
  assert groups == [(0, 0), (1, 1), (0, 1)]
  assert stats == ds.FillStats(rounds=2, groups_generated=4, groups_kept=2, groups_padded=1)
  gen, _ = _rounds([[True, False], [False, False]])
  with pytest.raises(ds.DynamicSamplingError, match="at least 2 needed"):
    ds.fill_batch(gen, num_groups=3, max_rounds=2, min_informative=2)
  with pytest.raises(ValueError, match="min_informative=4"):
    ds.fill_batch(gen, num_groups=3, max_rounds=2, min_informative=4)

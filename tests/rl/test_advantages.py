"""Group-normalised advantages against hand-worked groups."""
import jax
import numpy as np
import pytest

from masksearch_jax.rl import advantages as A


def test_group_advantages_hand_worked():
  # group 1: [1, 0, 0, 1] -> mean 0.5, std 0.5 -> [1, -1, -1, 1]
  # group 2: [2, 2, 2, 2] -> degenerate -> exactly 0
  # group 3: [0, 0, 0, 3] -> mean 0.75, std sqrt(27/16) = 1.299 -> [-0.577, ..., 1.732]
  r = np.array([1, 0, 0, 1, 2, 2, 2, 2, 0, 0, 0, 3], np.float32)
  adv = np.asarray(A.group_advantages(r, 4, eps=0.0))
  s3 = np.sqrt(27 / 16)
  np.testing.assert_allclose(adv, [1, -1, -1, 1, 0, 0, 0, 0, -0.75 / s3, -0.75 / s3, -0.75 / s3,
                                   2.25 / s3], rtol=1e-6)
  assert np.all(adv[4:8] == 0.0)
  # unbiased std (ddof=1) for group 1: sqrt(1/3)
  adv1 = np.asarray(A.group_advantages(r[:4], 4, eps=0.0, ddof=1))
  np.testing.assert_allclose(adv1, np.array([1, -1, -1, 1]) * 0.5 / np.sqrt(1 / 3), rtol=1e-6)
  # eps only shrinks: (R - mean) / (std + eps)
  np.testing.assert_allclose(A.group_advantages(r[:4], 4, eps=0.5), [0.5, -0.5, -0.5, 0.5])


def test_degenerate_float_group_is_exactly_zero():
  r = np.full(6, 0.1, np.float32)   # mean of 0.1s is not exactly 0.1 in float
  assert np.all(np.asarray(A.group_advantages(r, 3)) == 0.0)
  jitted = jax.jit(A.group_advantages, static_argnums=1)
  np.testing.assert_allclose(jitted(np.array([0.0, 1.0, 0.1, 0.1]), 2), [-1, 1, 0, 0], atol=1e-5)


def test_token_broadcast_and_errors():
  mask = np.array([[0, 1, 1, 0], [1, 1, 0, 0]], np.float32)
  tok = np.asarray(A.token_advantages(np.array([2.0, -1.0]), mask))
  np.testing.assert_array_equal(tok, [[0, 2, 2, 0], [-1, -1, 0, 0]])
  with pytest.raises(ValueError, match="group_size=4"):
    A.group_advantages(np.zeros(6), 4)

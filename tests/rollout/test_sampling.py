"""Token choice against hand-worked distributions."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from masksearch_jax.rollout import sampling
from masksearch_jax.rollout.types import SamplingConfig

P4 = np.log(np.array([0.5, 0.3, 0.15, 0.05]))    # logits whose softmax is exactly these probs


@functools.lru_cache(maxsize=None)
def _sampler(cfg):
  return jax.jit(functools.partial(sampling.sample, cfg=cfg))   # one compile per config


def _draw(cfg, logits, n=2000, seed=0, pos=0):
  lg = jnp.asarray(np.tile(logits, (n, 1)), jnp.float32)
  keys = sampling.row_keys(seed, n)
  tok, lp = _sampler(cfg)(lg, keys, jnp.full((n,), pos, jnp.int32))
  return np.asarray(tok), np.asarray(lp)


def test_greedy_is_argmax_with_plain_logprob():
  tok, lp = _draw(SamplingConfig(temperature=0.0), P4[::-1], n=3)
  assert (tok == 3).all()
  np.testing.assert_allclose(lp, np.log(0.5), rtol=1e-6)


def test_full_distribution_frequencies_and_logprobs():
  tok, lp = _draw(SamplingConfig(temperature=1.0), P4, n=4000)
  freq = np.bincount(tok, minlength=4) / len(tok)
  np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03)
  np.testing.assert_allclose(lp, np.log([0.5, 0.3, 0.15, 0.05])[tok], rtol=1e-5)


def test_temperature_scales_logprobs():
  tok, lp = _draw(SamplingConfig(temperature=2.0), P4, n=500)
  q = np.sqrt([0.5, 0.3, 0.15, 0.05])
  np.testing.assert_allclose(lp, np.log(q / q.sum())[tok], rtol=1e-5)


def test_top_p_keeps_smallest_prefix_and_renormalises():
  # mass before each token: 0, .5, .8, .95 -> top_p=.7 keeps tokens 0 and 1 only.
  tok, lp = _draw(SamplingConfig(temperature=1.0, top_p=0.7), P4, n=3000)
  assert set(tok.tolist()) == {0, 1}
  np.testing.assert_allclose(lp, np.log(np.array([0.5, 0.3]) / 0.8)[tok], rtol=1e-5)
  assert abs((tok == 0).mean() - 0.625) < 0.04


def test_top_k_with_temperature():
  tok, lp = _draw(SamplingConfig(temperature=0.5, top_k=2), P4, n=3000)
  assert set(tok.tolist()) == {0, 1}
  q = np.array([0.5, 0.3]) ** 2
  np.testing.assert_allclose(lp, np.log(q / q.sum())[tok], rtol=1e-5)
  tok, lp = _draw(SamplingConfig(temperature=3.0, top_k=1), P4, n=50)
  assert (tok == 0).all() and np.allclose(lp, 0.0)


def test_per_row_streams_depend_on_key_and_position_only():
  cfg = SamplingConfig(temperature=1.0)
  a, _ = _draw(cfg, np.zeros(64), n=16, seed=1, pos=5)
  b, _ = _draw(cfg, np.zeros(64), n=16, seed=1, pos=5)
  c, _ = _draw(cfg, np.zeros(64), n=16, seed=1, pos=6)
  np.testing.assert_array_equal(a, b)
  assert (a != c).any() and len(set(a.tolist())) > 4      # rows differ from each other too


def test_config_validation():
  with pytest.raises(ValueError, match="top_p"):
    SamplingConfig(top_p=0.0)
  with pytest.raises(ValueError, match="temperature"):
    SamplingConfig(temperature=-1.0)

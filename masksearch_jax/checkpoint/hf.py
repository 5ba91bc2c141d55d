"""Hugging Face checkpoint import/export for Qwen2/Qwen2.5.

Import streams tensor by tensor from safetensors memmaps straight into the target sharding:
each device shard is filled by `jax.make_array_from_callback` from the matching slice of one HF
tensor, so a host holds at most one HF tensor plus its own shards — never a second full copy.
Export writes config.json, sharded safetensors + index and the tokenizer files, in HF's layout
(tied embeddings: no lm_head.weight), one tensor at a time.
"""
from __future__ import annotations

import functools
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from masksearch_jax.checkpoint import qwen2_keys, safetensors_io
from masksearch_jax.model.config import Qwen2Config

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "generation_config.json",
                   "chat_template.jinja")


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def _set(tree, path, value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def load_hf(directory: str | Path, dtype=jnp.float32,
            shardings: Any | None = None) -> tuple[Qwen2Config, dict]:
  """Reads a HF Qwen2 directory into (config, params).

  `shardings` is a params-shaped pytree of `jax.sharding.Sharding` (see parallel.rules); None puts
  every tensor on the default device.
  """
  cfg = Qwen2Config.from_hf_dir(directory)
  reader = safetensors_io.CheckpointReader(directory)
  np_dtype = np.dtype(ml_dtypes.bfloat16) if jnp.dtype(dtype) == jnp.bfloat16 else np.dtype(dtype)
  params: dict = {}
  for rule in qwen2_keys.rules_for(cfg):
    shape = qwen2_keys.our_shape(rule, cfg)
    want_hf = qwen2_keys.hf_shape(rule, cfg)
    names = [rule.hf.format(i=i) for i in range(cfg.num_layers)] if rule.stacked else [rule.hf]
    for n in names:
      if n not in reader:
        if rule.path == ("lm_head",):
          raise KeyError(f"tensor {n!r} is missing in {directory} (config has untied embeddings)")
        raise KeyError(f"tensor {n!r} is missing in {directory}")
      got = reader.get(n).shape
      if tuple(got) != tuple(want_hf):
        raise ValueError(f"tensor {n!r}: checkpoint shape {tuple(got)} != expected {tuple(want_hf)} "
                         f"for config {cfg.name}")

    @functools.lru_cache(maxsize=2)
    def hf_tensor(name, rule=rule):
      return np.asarray(rule.to_ours(reader.get(name), cfg)).astype(np_dtype)

    def fill(index, rule=rule, names=names):
      if not rule.stacked:
        return hf_tensor(names[0])[index]
      layers = range(*index[0].indices(cfg.num_layers))
      return np.stack([hf_tensor(names[i])[index[1:]] for i in layers])

    sharding = (_get(shardings, rule.path) if shardings is not None
                else jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    _set(params, rule.path, jax.make_array_from_callback(shape, sharding, fill))
    hf_tensor.cache_clear()
  return cfg, params


def _host_array(x) -> np.ndarray:
  if jax.process_count() > 1 and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(jax.device_get(x))


def save_hf(params: dict, cfg: Qwen2Config, directory: str | Path, *,
            dtype: str = "bfloat16", tokenizer_dir: str | Path | None = None,
            max_shard_bytes: int = 2 * 1024**3) -> Path:
  """Writes params as a HF Qwen2ForCausalLM directory. Only process 0 writes files."""
  out = Path(directory)
  np_dtype = {"bfloat16": np.dtype(ml_dtypes.bfloat16), "float32": np.dtype(np.float32),
              "float16": np.dtype(np.float16)}[dtype]
  writer = jax.process_index() == 0
  if writer:
    out.mkdir(parents=True, exist_ok=True)

  def tensors():
    for rule in qwen2_keys.rules_for(cfg):
      leaf = _get(params, rule.path)
      for i in (range(cfg.num_layers) if rule.stacked else [None]):
        x = _host_array(leaf[i] if i is not None else leaf)
        yield rule.hf.format(i=i), np.ascontiguousarray(rule.to_hf(x, cfg)).astype(np_dtype)

  # Shards are written as soon as they fill (bounded host memory), then renamed once the count
  # is known, as HF names them model-0000k-of-0000n.safetensors.
  written: list[tuple[Path, list[str]]] = []
  buf: list[tuple[str, np.ndarray]] = []
  size = total = 0

  def flush():
    nonlocal buf, size, total
    if buf and writer:
      tmp = out / f".shard-{len(written):05d}.tmp"
      total += safetensors_io.write_file(tmp, buf, {"format": "pt"})
      written.append((tmp, [name for name, _ in buf]))
    buf, size = [], 0

  for name, arr in tensors():
    if size and size + arr.nbytes > max_shard_bytes:
      flush()
    buf.append((name, arr))
    size += arr.nbytes
  flush()
  if writer:
    n = len(written)
    weight_map = {}
    for k, (tmp, names) in enumerate(written):
      fname = "model.safetensors" if n == 1 else f"model-{k + 1:05d}-of-{n:05d}.safetensors"
      tmp.replace(out / fname)
      weight_map.update({name: fname for name in names})
    if n > 1:
      (out / "model.safetensors.index.json").write_text(json.dumps(
          {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (out / "config.json").write_text(json.dumps(cfg.to_hf_dict(dtype), indent=2))
    if tokenizer_dir is not None:
      for f in TOKENIZER_FILES:
        if (Path(tokenizer_dir) / f).exists():
          shutil.copy(Path(tokenizer_dir) / f, out / f)
    log.info("exported %s (%d shard(s), %.1f MB) to %s", cfg.name, n, total / 1e6, out)
  return out

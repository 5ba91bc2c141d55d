"""Minimal safetensors reader/writer over numpy memmaps.

Why not `safetensors.numpy`: it cannot hand out bfloat16 arrays, and we want zero-copy lazy
tensors so that importing a 72B checkpoint touches one tensor (or one shard slice) at a time.
The format is tiny: 8-byte little-endian header length, a JSON header
{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then raw bytes.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterable, Mapping

import ml_dtypes
import numpy as np

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
           "BOOL": np.bool_}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


class SafetensorsFile:
  """Lazy view of one .safetensors file: `f[name]` is a read-only memmap, no bytes copied."""

  def __init__(self, path: str | Path):
    self.path = Path(path)
    with open(self.path, "rb") as fh:
      raw = fh.read(8)
      if len(raw) != 8:
        raise ValueError(f"{self.path}: not a safetensors file (shorter than its header)")
      (n,) = struct.unpack("<Q", raw)
      try:
        header = json.loads(fh.read(n))
      except json.JSONDecodeError as e:
        raise ValueError(f"{self.path}: corrupt safetensors header: {e}") from e
    self.metadata = header.pop("__metadata__", {}) or {}
    self._header = header
    self._offset = 8 + n

  def keys(self) -> list[str]:
    return list(self._header)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._header[name]["shape"])

  def __contains__(self, name: str) -> bool:
    return name in self._header

  def __getitem__(self, name: str) -> np.ndarray:
    info = self._header[name]
    if info["dtype"] not in _DTYPES:
      raise ValueError(f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}")
    dt = np.dtype(_DTYPES[info["dtype"]])
    begin, end = info["data_offsets"]
    shape = tuple(info["shape"])
    if end - begin != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
      raise ValueError(f"{self.path}: tensor {name} byte range does not match shape {shape}")
    if end == begin:
      return np.zeros(shape, dt)
    return np.memmap(self.path, dtype=dt, mode="r", offset=self._offset + begin, shape=shape)


def write_file(path: str | Path, tensors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
               metadata: Mapping[str, str] | None = None) -> int:
  """Writes tensors (name -> array) to one file; returns bytes of tensor data written."""
  items = list(tensors.items()) if isinstance(tensors, Mapping) else list(tensors)
  header, offset = {}, 0
  for name, arr in items:
    dt = np.dtype(arr.dtype)
    if dt not in _NAMES:
      raise ValueError(f"tensor {name}: dtype {dt} cannot be written to safetensors")
    size = arr.size * dt.itemsize
    header[name] = {"dtype": _NAMES[dt], "shape": list(arr.shape), "data_offsets": [offset, offset + size]}
    offset += size
  header["__metadata__"] = dict(metadata or {"format": "pt"})
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * ((8 - len(blob) % 8) % 8)         # align tensor data to 8 bytes
  with open(path, "wb") as fh:
    fh.write(struct.pack("<Q", len(blob)))
    fh.write(blob)
    for _, arr in items:
      fh.write(np.ascontiguousarray(arr).tobytes())
  return offset


class CheckpointReader:
  """All tensors of a HF directory (single file or sharded with model.safetensors.index.json)."""

  def __init__(self, directory: str | Path):
    d = Path(directory)
    index = d / "model.safetensors.index.json"
    if index.exists():
      weight_map = json.loads(index.read_text())["weight_map"]
      files = {f: SafetensorsFile(d / f) for f in sorted(set(weight_map.values()))}
      self._where = {k: files[f] for k, f in weight_map.items()}
    else:
      paths = sorted(d.glob("*.safetensors"))
      if not paths:
        raise FileNotFoundError(f"no *.safetensors files in {d}")
      self._where = {}
      for p in paths:
        f = SafetensorsFile(p)
        self._where.update({k: f for k in f.keys()})
    self.directory = d

  def keys(self) -> list[str]:
    return list(self._where)

  def __contains__(self, name: str) -> bool:
    return name in self._where

  def get(self, name: str) -> np.ndarray:
    if name not in self._where:
      raise KeyError(f"tensor {name!r} is missing from the checkpoint in {self.directory}")
    return self._where[name][name]

"""Per-step metrics: a JSONL log, TensorBoard event files, a console line,
and a NaN/Inf guard.

TensorBoard files are written by a ~60-line TFRecord + protobuf encoder so
no TensorFlow/tensorboard install is needed to *write* them; the format is
the one `tensorboard --logdir` reads (records framed with masked CRC32C,
`Event{wall_time, step, summary{value{tag, simple_value}}}`).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time
from typing import Any, Iterator, Mapping, TextIO

import numpy as np

# ------------------------------------------------------------ CRC32C -------
_CRC_TABLE = []
for _i in range(256):
  _c = _i
  for _ in range(8):
    _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1  # Castagnoli, reflected
  _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """TFRecord's CRC masking (rotate right 15, add a constant)."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ------------------------------------------------- protobuf, by hand -------
def _varint(n: int) -> bytes:
  out = bytearray()
  n &= (1 << 64) - 1  # int64 negatives as two's complement, like protobuf
  while True:
    b = n & 0x7F
    n >>= 7
    out.append(b | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field_bytes(num: int, payload: bytes) -> bytes:  # wire type 2
  return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int, *,
                 scalars: Mapping[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
  """Serialises a tensorflow.Event with scalar summaries or a file_version."""
  out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time)  # double wall_time = 1
  out += _varint(2 << 3 | 0) + _varint(int(step))  # int64 step = 2
  if file_version is not None:
    out += _field_bytes(3, file_version.encode())  # string file_version = 3
  if scalars:
    values = b"".join(
        _field_bytes(1, _field_bytes(1, tag.encode())  # Value.tag = 1
                     + _varint(2 << 3 | 5) + struct.pack("<f", float(v)))  # simple_value = 2
        for tag, v in scalars.items())
    out += _field_bytes(5, values)  # Summary summary = 5 {repeated Value value = 1}
  return out


def tfrecord(data: bytes) -> bytes:
  header = struct.pack("<Q", len(data))
  return (header + struct.pack("<I", masked_crc32c(header)) + data +
          struct.pack("<I", masked_crc32c(data)))


def read_tfrecords(path: str) -> Iterator[bytes]:
  """Yields record payloads, verifying both CRCs (raises naming the offset)."""
  with open(path, "rb") as f:
    while True:
      start = f.tell()
      header = f.read(12)
      if not header:
        return
      if len(header) < 12:
        raise ValueError(f"{path}: truncated record header at byte {start}")
      (length,), (hcrc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
      if hcrc != masked_crc32c(header[:8]):
        raise ValueError(f"{path}: bad length CRC in the record at byte {start}")
      data, footer = f.read(length), f.read(4)
      if len(data) < length or len(footer) < 4:
        raise ValueError(f"{path}: truncated record at byte {start}")
      if struct.unpack("<I", footer)[0] != masked_crc32c(data):
        raise ValueError(f"{path}: bad data CRC in the record at byte {start}")
      yield data


class EventFileWriter:
  """Appends scalar Events to one `events.out.tfevents.*` file."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
            f"{os.getpid()}.0")
    self.path = os.path.join(logdir, name)
    self._f = open(self.path, "ab")
    self._f.write(tfrecord(encode_event(time.time(), 0, file_version="brain.Event:2")))

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    self._f.write(tfrecord(encode_event(time.time(), step, scalars=values)))

  def flush(self) -> None:
    self._f.flush()

  def close(self) -> None:
    self._f.close()


# ------------------------------------------------------------ guards -------
class NonFiniteMetricError(FloatingPointError):
  """A metric became NaN/Inf: stop before writing a broken checkpoint."""


def check_finite(step: int, metrics: Mapping[str, Any]) -> None:
  """Raises NonFiniteMetricError naming the step and every bad metric."""
  bad = []
  for name, value in metrics.items():
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
      bad.append(f"{name}={value if arr.size == 1 else 'array with non-finite'}")
  if bad:
    raise NonFiniteMetricError(
        f"step {step}: non-finite metric(s) {', '.join(bad)}; stopping before "
        "the next checkpoint (lower the learning rate or check the data)")


# ------------------------------------------------------------ writer -------
def _scalar(value: Any) -> float:
  return float(np.asarray(value, dtype=np.float64).reshape(()))


def format_progress(step: int, total: int | None, metrics: Mapping[str, float],
                    elapsed_s: float, start_step: int = 0) -> str:
  """`step 120/1000 [##--------] 12% | loss 2.341 | 3.1 it/s | eta 4m44s`."""
  parts = [f"step {step}" + (f"/{total}" if total else "")]
  rate = (step - start_step) / elapsed_s if elapsed_s > 0 else 0.0
  if total:
    frac = min(1.0, step / total)
    parts[0] += f" [{'#' * int(frac * 10):-<10}] {frac:4.0%}"
  parts += [f"{k} {v:.4g}" for k, v in metrics.items()]
  parts.append(f"{rate:.3g} it/s")
  if total and rate > 0:
    eta = int((total - step) / rate)
    parts.append(f"eta {eta // 3600}h{eta // 60 % 60:02d}m{eta % 60:02d}s"
                 if eta >= 3600 else f"eta {eta // 60}m{eta % 60:02d}s")
  return " | ".join(parts)


class MetricsWriter:
  """Writes each step's scalars to `metrics.jsonl`, TensorBoard and console.

  Only the primary process writes (pass `enabled=jax.process_index() == 0`).
  `check_finite` runs on every `write`, so a NaN stops the run with a clear
  error before the caller reaches its checkpoint save.
  """

  def __init__(self, logdir: str, *, total_steps: int | None = None,
               console_every: int = 10, enabled: bool = True,
               check_nonfinite: bool = True, console: TextIO | None = None):
    self.enabled = enabled
    self._total = total_steps
    self._console_every = console_every
    self._check = check_nonfinite
    self._console = console or sys.stdout
    self._start = time.perf_counter()
    self._start_step: int | None = None
    if enabled:
      os.makedirs(logdir, exist_ok=True)
      self._jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a")
      self._events = EventFileWriter(logdir)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if self._check:
      check_finite(step, metrics)
    if not self.enabled:
      return
    values = {k: _scalar(v) for k, v in metrics.items()}
    if self._start_step is None:
      self._start_step, self._start = step - 1, time.perf_counter()
    self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **values}) + "\n")
    self._events.scalars(step, values)
    if self._console_every and (step % self._console_every == 0 or step == self._total):
      line = format_progress(step, self._total, values,
                             time.perf_counter() - self._start, self._start_step)
      print(line, file=self._console, flush=True)
      self.flush()

  def flush(self) -> None:
    if self.enabled:
      self._jsonl.flush()
      self._events.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._events.close()

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

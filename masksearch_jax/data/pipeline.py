"""grain input pipelines: records -> encoded examples -> packed, batched rows.

    source (JSONL | ArrayRecord of JSON) -> curriculum selection by mask_num
    -> host shard -> seeded shuffle, a new order each epoch, for num_epochs
    -> encode_fn(record) = (tokens, loss_mask) -> first-fit pack -> batch

Every stage is index-based or deterministic, so the iterator's state is a
small JSON-able dict: a run that restores it sees exactly the batches an
uninterrupted run would. The tokenizer lives with the caller (`encode_fn`,
e.g. `data.traces.encode`), so this module knows nothing about text.

Uses only `grain.MapDataset` / `grain.IterDataset` / `grain.DatasetIterator`
and `grain.sources.ArrayRecordDataSource`, all public in grain 0.2.18.

Trainer use (batches are per host: the global batch is batch_size x
process_count; build global arrays with `jax.make_array_from_process_local_data`):

    it = make_iterator(PipelineConfig(paths=(p,), seq_len=2048, batch_size=16),
                       lambda r: traces.encode(traces.Trace.from_json(r), tok))
    ckpt_mgr.save(step, state, it.get_state())      # checkpoint.state
    state, data_state = ckpt_mgr.restore(abstract)  # on resume
    it.set_state(data_state)

A curriculum stage change builds a new iterator (new `mask_nums`); a state
saved by one stage's pipeline is refused by another's (fingerprint check).
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import json
import os
import sys
from typing import Any, Callable, Iterator, Mapping, Sequence

from absl import logging
import grain
import numpy as np

from masksearch_jax.data import packing

Record = dict[str, Any]
EncodeFn = Callable[[Record], tuple[Sequence[int], Sequence[int]]]
ARRAY_RECORD_SUFFIXES = (".arrayrecord", ".array_record")


# ----------------------------------------------------------------- sources ---
class JsonlSource:
  """Random access to the JSON objects of one or more JSONL files.

  Indexes line offsets once (blank lines skipped) and parses lazily, so a
  large file costs one scan, not its parsed size in memory. Malformed lines
  raise an error naming the file and 1-based line number.
  """

  def __init__(self, paths: Sequence[str | os.PathLike]):
    self._paths = [os.fspath(p) for p in paths]
    # (file, byte offset, byte length, 1-based line number) per record.
    self._lines: list[tuple[int, int, int, int]] = []
    for f, path in enumerate(self._paths):
      with open(path, "rb") as fh:
        offset = 0
        for line_no, line in enumerate(fh, start=1):
          if line.strip():
            self._lines.append((f, offset, len(line), line_no))
          offset += len(line)
    self._fds: dict[int, int] = {}

  def __len__(self) -> int:
    return len(self._lines)

  def describe(self, index: int) -> str:
    f, _, _, line_no = self._lines[index]
    return f"{self._paths[f]}:{line_no}"

  def __getitem__(self, index: int) -> Record:
    f, offset, length, _ = self._lines[index]
    fd = self._fds.get(f)
    if fd is None:
      fd = self._fds.setdefault(f, os.open(self._paths[f], os.O_RDONLY))
    line = os.pread(fd, length, offset)  # positional: safe across read threads
    try:
      record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"{self.describe(index)}: malformed JSON line: {e}") from e
    if not isinstance(record, dict):
      raise ValueError(f"{self.describe(index)}: expected a JSON object, got "
                       f"{type(record).__name__}")
    return record

  def __getstate__(self):  # descriptors stay out of pickles (worker processes)
    state = self.__dict__.copy()
    state["_fds"] = {}
    return state

  def __del__(self):
    for fd in getattr(self, "_fds", {}).values():
      try:
        os.close(fd)
      except OSError:
        pass


class ArrayRecordJsonSource:
  """Random access to JSON objects stored one per ArrayRecord record."""

  def __init__(self, paths: Sequence[str | os.PathLike]):
    self._paths = [os.fspath(p) for p in paths]
    self._source = grain.sources.ArrayRecordDataSource(self._paths)
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
    self._ends = []  # cumulative record counts, to name file + record in errors
    total = 0
    for path in self._paths:
      reader = array_record_module.ArrayRecordReader(path)
      total += reader.num_records()
      reader.close()
      self._ends.append(total)

  def __len__(self) -> int:
    return len(self._source)

  def describe(self, index: int) -> str:
    f = bisect.bisect_right(self._ends, index)
    start = self._ends[f - 1] if f else 0
    return f"{self._paths[f]}:record {index - start}"

  def __getitem__(self, index: int) -> Record:
    try:
      record = json.loads(self._source[index])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"{self.describe(index)}: malformed JSON record: {e}") from e
    if not isinstance(record, dict):
      raise ValueError(f"{self.describe(index)}: expected a JSON object")
    return record


def write_array_record(path: str | os.PathLike, records: Sequence[Record]) -> None:
  """Writes records as JSON, one per ArrayRecord record (for large sets)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  writer = array_record_module.ArrayRecordWriter(os.fspath(path), "group_size:1")
  for record in records:
    writer.write(json.dumps(record).encode())
  writer.close()


def open_source(paths: Sequence[str | os.PathLike]):
  """Picks the reader from the file suffix (all paths must agree)."""
  if not paths:
    raise ValueError("no input paths given")
  is_ar = [os.fspath(p).endswith(ARRAY_RECORD_SUFFIXES) for p in paths]
  if all(is_ar):
    return ArrayRecordJsonSource(paths)
  if any(is_ar):
    raise ValueError(f"mixing ArrayRecord and JSONL inputs is not supported: {paths}")
  return JsonlSource(paths)


# -------------------------------------------------------------- curriculum ---
def mask_num_of(source, index: int) -> int:
  record = source[index]
  k = record.get("mask_num")
  if not isinstance(k, int):
    raise ValueError(f"{source.describe(index)}: curriculum selection needs an "
                     f"integer 'mask_num' field, got {k!r}")
  return k


def bucket_indices(source) -> dict[int, list[int]]:
  """Record indices grouped by `mask_num` (one pass over the source)."""
  buckets: dict[int, list[int]] = {}
  for i in range(len(source)):
    buckets.setdefault(mask_num_of(source, i), []).append(i)
  return dict(sorted(buckets.items()))


# ---------------------------------------------------------------- pipeline ---
@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """One host's view of an input pipeline."""
  paths: tuple[str, ...]
  seq_len: int
  batch_size: int  # rows per batch on this host
  seed: int = 0
  shuffle: bool = True
  num_epochs: int | None = 1  # None: repeat forever
  # Curriculum: keep only records whose mask_num is listed (stage k: (k,));
  # None keeps every record, which after shuffling is the random mix.
  mask_nums: tuple[int, ...] | None = None
  pack_window: int = 256  # examples packed together (first fit)
  overlong: str = "truncate"  # or "drop"
  pad_id: int = 0
  process_index: int | None = None  # None: jax.process_index()
  process_count: int | None = None  # None: jax.process_count()
  drop_remainder: bool = True  # equal example/batch counts on every host
  num_threads: int = 0  # grain read threads for encode_fn (0: inline)
  # Worker processes, each encoding + packing a 1/num_workers slice (0: none).
  # Deterministic, but the batches depend on num_workers: keep it fixed
  # across a resume (it is part of the state fingerprint).
  num_workers: int = 0

  def validate(self) -> None:
    errors = []
    if self.seq_len <= 0:
      errors.append(f"seq_len={self.seq_len} must be positive")
    if self.batch_size <= 0:
      errors.append(f"batch_size={self.batch_size} must be positive")
    if self.pack_window <= 0:
      errors.append(f"pack_window={self.pack_window} must be positive")
    if self.num_epochs is not None and self.num_epochs <= 0:
      errors.append(f"num_epochs={self.num_epochs} must be positive or None")
    if self.overlong not in packing.OVERLONG_MODES:
      errors.append(f"overlong={self.overlong!r} not in {packing.OVERLONG_MODES}")
    if self.num_threads < 0 or self.num_workers < 0:
      errors.append(f"num_threads={self.num_threads}, num_workers="
                    f"{self.num_workers} must be >= 0")
    if not 0 <= self.seed < 2**32:
      errors.append(f"seed={self.seed} must be in [0, 2**32)")
    if errors:
      raise ValueError("invalid PipelineConfig: " + "; ".join(errors))


def _host(cfg: PipelineConfig) -> tuple[int, int]:
  index, count = cfg.process_index, cfg.process_count
  if index is None or count is None:
    import jax  # pylint: disable=g-import-not-at-top
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
  if not 0 <= index < count:
    raise ValueError(f"process_index={index} not in [0, process_count={count})")
  return index, count


def _fingerprint(cfg: PipelineConfig, host: tuple[int, int], n: int) -> dict:
  """Fields that must match for a saved iterator state to mean the same data.

  File base names, not full paths, so a run may resume with its data moved.
  """
  return {"files": [os.path.basename(p) for p in cfg.paths], "records": n, "seq_len": cfg.seq_len,
          "seed": cfg.seed, "shuffle": cfg.shuffle,
          "mask_nums": None if cfg.mask_nums is None else list(cfg.mask_nums),
          "pack_window": cfg.pack_window, "overlong": cfg.overlong,
          "process_index": host[0], "process_count": host[1],
          "num_workers": cfg.num_workers}


class _EpochOrder:
  """Step index -> position in the host's records: a new seeded permutation
  per epoch (numpy's PCG64; cheaper per element than grain's index_shuffle,
  which cost ~35 us/example here)."""

  def __init__(self, n: int, seed: int, shuffle: bool):
    self._n, self._seed, self._shuffle = n, seed, shuffle
    self._cache: tuple[int, np.ndarray | None] = (-1, None)

  def __call__(self, i: int) -> int:
    epoch, j = divmod(i, self._n)
    if not self._shuffle:
      return j
    cached = self._cache  # one tuple read/write: safe across read threads
    if cached[0] != epoch:
      cached = (epoch, np.random.default_rng([self._seed, epoch]).permutation(self._n))
      self._cache = cached
    return int(cached[1][j])


class _PackIterator(grain.DatasetIterator):
  """Packs windows of encoded examples into rows, one row per `next`.

  State = parent state at the start of the current window + rows already
  emitted from it; restoring re-reads and re-packs that window (packing is
  deterministic) and skips the emitted rows.
  """

  def __init__(self, parent, cfg: PipelineConfig, fingerprint: dict):
    super().__init__(parent)
    self._cfg = cfg
    self._fingerprint = fingerprint
    self._rows: dict[str, np.ndarray] | None = None
    self._window_state = None
    self._next_row = 0
    self.stats = packing.PackStats()

  def _fill(self) -> int:
    """Packs the next window; returns how many examples it read."""
    self._window_state = self._parent.get_state()
    examples = []
    for _ in range(self._cfg.pack_window):
      try:
        examples.append(next(self._parent))
      except StopIteration:
        break
    rows, stats = packing.pack_examples(
        examples, self._cfg.seq_len, overlong=self._cfg.overlong,
        pad_id=self._cfg.pad_id)
    self.stats.add(stats)
    self._rows, self._next_row = rows, 0
    return len(examples)

  def __next__(self) -> dict[str, np.ndarray]:
    # Loops past windows whose examples were all empty or dropped.
    while self._rows is None or self._next_row >= self._rows["tokens"].shape[0]:
      if not self._fill():
        raise StopIteration
    row = {k: v[self._next_row] for k, v in self._rows.items()}
    self._next_row += 1
    return row

  def get_state(self) -> dict[str, Any]:
    if self._rows is None:
      return {"window_start": self._parent.get_state(), "rows_done": 0,
              "pipeline": self._fingerprint}
    return {"window_start": copy.deepcopy(self._window_state),
            "rows_done": self._next_row, "pipeline": self._fingerprint}

  def set_state(self, state: Mapping[str, Any]) -> None:
    saved = state.get("pipeline")
    if saved != self._fingerprint:
      diff = sorted(k for k in set(self._fingerprint) | set(saved or {})
                    if (saved or {}).get(k) != self._fingerprint.get(k))
      raise ValueError(
          "iterator state was saved by a different pipeline; differing "
          f"fields: {diff} (saved {[(saved or {}).get(k) for k in diff]}, "
          f"now {[self._fingerprint.get(k) for k in diff]})")
    self._parent.set_state(copy.deepcopy(state["window_start"]))
    self._rows = None
    if state["rows_done"]:
      self._fill()
      self._next_row = state["rows_done"]


class _PackIterDataset(grain.IterDataset):

  def __init__(self, parent: grain.IterDataset, cfg: PipelineConfig,
               fingerprint: dict):
    super().__init__(parent)
    self._cfg = cfg
    self._fingerprint = fingerprint

  def __iter__(self) -> _PackIterator:
    return _PackIterator(self._parent.__iter__(), self._cfg, self._fingerprint)


def _load_example(source, index: int, encode_fn: EncodeFn):
  """Reads and encodes one record; encode errors name the file and line."""
  record = source[index]
  try:
    tokens, loss_mask = encode_fn(record)
    tokens, loss_mask = np.asarray(tokens, np.int32), np.asarray(loss_mask, np.int32)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{source.describe(index)}: encode_fn failed: "
                     f"{type(e).__name__}: {e}") from e
  if tokens.shape != loss_mask.shape or tokens.ndim != 1:
    raise ValueError(f"{source.describe(index)}: encode_fn returned tokens "
                     f"{tokens.shape} and loss_mask {loss_mask.shape}; want equal 1-D")
  return tokens, loss_mask


def build_dataset(cfg: PipelineConfig, encode_fn: EncodeFn, *,
                  source=None) -> grain.IterDataset:
  """The pipeline as a grain IterDataset of batches.

  Each batch is a dict of int32 arrays [batch_size, seq_len]: tokens,
  loss_mask, segment_ids, positions (see `packing.pack_examples`).
  `source` overrides reading `cfg.paths`: any object with `__len__`,
  `__getitem__(i) -> dict` and `describe(i) -> str` (for error messages).
  """
  cfg.validate()
  source = open_source(cfg.paths) if source is None else source
  host = _host(cfg)
  if cfg.mask_nums is None:
    indices = np.arange(len(source), dtype=np.int64)
  else:
    buckets = bucket_indices(source)
    indices = np.array(sorted(i for k in cfg.mask_nums for i in buckets.get(k, [])),
                       dtype=np.int64)
    if not indices.size:
      raise ValueError(f"no records with mask_num in {cfg.mask_nums} in "
                       f"{list(cfg.paths)} (buckets: "
                       f"{ {k: len(v) for k, v in buckets.items()} })")
  n = len(indices)
  index, count = host
  if cfg.drop_remainder:
    indices = indices[: n - n % count]
  indices = indices[index::count]  # [records on this host]
  if not indices.size:
    raise ValueError(f"host {index}/{count} got no records from {list(cfg.paths)}")
  order = _EpochOrder(len(indices), cfg.seed, cfg.shuffle)
  length = sys.maxsize if cfg.num_epochs is None else cfg.num_epochs * len(indices)
  ds = grain.MapDataset.range(length).map(
      lambda i: _load_example(source, int(indices[order(i)]), encode_fn))
  read_options = grain.ReadOptions(num_threads=cfg.num_threads,
                                   prefetch_buffer_size=max(1, 4 * cfg.num_threads))
  it_ds = ds.to_iter_dataset(read_options)
  it_ds = _PackIterDataset(it_ds, cfg, _fingerprint(cfg, host, n))
  it_ds = it_ds.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder)
  if cfg.num_workers:
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags
      raise ValueError("PipelineConfig.num_workers > 0 needs absl flags parsed: "
                       "run under absl.app.run (or call FLAGS.mark_as_parsed())")
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.num_workers))
  return it_ds


def make_iterator(cfg: PipelineConfig, encode_fn: EncodeFn, *,
                  source=None) -> Iterator[dict[str, np.ndarray]]:
  """An iterator over batches with `get_state()` / `set_state(state)`.

  The state is a JSON-able dict; save it with the train state
  (`checkpoint.state.CheckpointManager`) and `set_state` it on resume.
  """
  return iter(build_dataset(cfg, encode_fn, source=source))


def log_stats(it) -> None:
  """Logs packing counts of an iterator from `make_iterator` (best effort)."""
  node = it
  while node is not None and not isinstance(node, _PackIterator):
    parents = getattr(node, "_parents", ())
    node = parents[0] if parents else None
  if node is not None:
    logging.info("pipeline packing stats: %s", node.stats)

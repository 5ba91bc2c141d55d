"""grain pipeline: coverage, sharding, shuffling, curriculum, errors, resume."""

import collections
import json
from pathlib import Path

import numpy as np
import pytest

from masksearch_jax.data import pipeline

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def encode(record):
  """Trivial encode: `len` copies of id+1; the first token is prompt (mask 0)."""
  n = record["len"]
  return [record["id"] + 1] * n, [0] + [1] * (n - 1)


def _records(n, seed=0):
  rng = np.random.default_rng(seed)
  return [{"id": i, "len": int(rng.integers(2, 9)), "mask_num": i % 4 + 1}
          for i in range(n)]


def _write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def _cfg(path, **kw):
  base = dict(paths=(path,), seq_len=16, batch_size=2, seed=7, pack_window=5,
              process_index=0, process_count=1, num_epochs=1)
  base.update(kw)
  return pipeline.PipelineConfig(**base)


def _ids(batches):
  """Record ids (token - 1) of every packed segment, in order."""
  out = []
  for b in batches:
    for r in range(b["tokens"].shape[0]):
      seg = b["segment_ids"][r]
      for s in range(1, seg.max() + 1):
        out.append(int(b["tokens"][r][seg == s][0]) - 1)
  return out


def test_batches_shapes_and_epoch_coverage(tmp_path):
  recs = _records(23)
  path = _write_jsonl(tmp_path / "a.jsonl", recs)
  batches = list(pipeline.make_iterator(
      _cfg(path, drop_remainder=False, num_epochs=2), encode))
  for b in batches:
    assert set(b) == {"tokens", "loss_mask", "segment_ids", "positions"}
    for v in b.values():
      assert v.dtype == np.int32 and v.shape[1] == 16 and v.shape[0] <= 2
  ids = _ids(batches)
  # Two epochs: every record exactly twice, each epoch a permutation.
  assert collections.Counter(ids) == {i: 2 for i in range(23)}
  # Segment contents follow encode: loss mask 0 on the first token only.
  b = batches[0]
  seg = b["segment_ids"][0]
  first = b["loss_mask"][0][seg == 1]
  np.testing.assert_array_equal(first, [0] + [1] * (len(first) - 1))


def test_shuffle_is_seeded_and_reshuffles_each_epoch(tmp_path):
  path = _write_jsonl(tmp_path / "a.jsonl", _records(40))
  # pack_window=1 keeps the shuffled order visible in the output.
  run = lambda **kw: _ids(pipeline.make_iterator(
      _cfg(path, pack_window=1, batch_size=1, **kw), encode))
  a, b, c = run(seed=1), run(seed=1), run(seed=2)
  assert a == b and a != c and sorted(a) == list(range(40))
  assert run(shuffle=False) == list(range(40))
  two = run(seed=1, num_epochs=2)
  assert two[:40] == a and two[40:] != a and sorted(two[40:]) == list(range(40))


def test_two_hosts_disjoint_and_cover(tmp_path):
  path = _write_jsonl(tmp_path / "a.jsonl", _records(21))
  per_host = [
      _ids(pipeline.make_iterator(
          _cfg(path, batch_size=1, process_index=h, process_count=2), encode))
      for h in range(2)]
  assert len(per_host[0]) == len(per_host[1]) == 10  # remainder record dropped
  assert not set(per_host[0]) & set(per_host[1])
  assert set(per_host[0]) | set(per_host[1]) == set(range(20))


def test_curriculum_selects_mask_num_buckets(tmp_path):
  recs = _records(30)
  path = _write_jsonl(tmp_path / "a.jsonl", recs)
  src = pipeline.open_source([path])
  assert {k: len(v) for k, v in pipeline.bucket_indices(src).items()} == {
      1: 8, 2: 8, 3: 7, 4: 7}
  ids = _ids(pipeline.make_iterator(
      _cfg(path, batch_size=1, mask_nums=(2,)), encode))
  assert sorted(ids) == [r["id"] for r in recs if r["mask_num"] == 2]
  ids = _ids(pipeline.make_iterator(
      _cfg(path, batch_size=1, mask_nums=(1, 4)), encode))
  assert sorted(ids) == [r["id"] for r in recs if r["mask_num"] in (1, 4)]
  with pytest.raises(ValueError, match=r"no records with mask_num in \(9,\)"):
    pipeline.make_iterator(_cfg(path, mask_nums=(9,)), encode)


def test_errors_name_file_and_line(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"id": 0, "len": 3, "mask_num": 1}\n\n{"id": 1, "len": 3\n')
  it = pipeline.make_iterator(_cfg(str(path), shuffle=False), encode)
  with pytest.raises(ValueError, match=r"bad.jsonl:3: malformed JSON line"):
    next(it)
  path.write_text('{"id": 0, "len": 3}\n{"id": 1}\n')
  it = pipeline.make_iterator(_cfg(str(path), shuffle=False), encode)
  with pytest.raises(ValueError, match=r"bad.jsonl:2: encode_fn failed: KeyError: 'len'"):
    next(it)
  with pytest.raises(ValueError, match=r"bad.jsonl:1: curriculum selection needs"):
    pipeline.make_iterator(_cfg(str(path), mask_nums=(1,)), encode)
  with pytest.raises(ValueError, match=r"seq_len=0 must be positive; batch_size"):
    pipeline.make_iterator(_cfg(str(path), seq_len=0, batch_size=0), encode)


@pytest.mark.parametrize("num_threads", [0, 2])
def test_resume_yields_uninterrupted_batches(tmp_path, num_threads):
  path = _write_jsonl(tmp_path / "a.jsonl", _records(60))
  cfg = _cfg(path, num_epochs=2, num_threads=num_threads)
  reference = list(pipeline.make_iterator(cfg, encode))
  assert len(reference) > 12
  for cut in (1, 4, 7):  # several cut points: mid-window and window edges
    it = pipeline.make_iterator(cfg, encode)
    for _ in range(cut):
      next(it)
    state = json.loads(json.dumps(it.get_state()))  # as stored in a checkpoint
    resumed = pipeline.make_iterator(cfg, encode)
    resumed.set_state(state)
    rest = list(resumed)
    assert len(rest) == len(reference) - cut
    for got, want in zip(rest, reference[cut:]):
      for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_state_from_other_pipeline_rejected(tmp_path):
  path = _write_jsonl(tmp_path / "a.jsonl", _records(20))
  it = pipeline.make_iterator(_cfg(path), encode)
  next(it)
  other = pipeline.make_iterator(_cfg(path, seed=8), encode)
  with pytest.raises(ValueError, match=r"differing fields: \['seed'\]"):
    other.set_state(it.get_state())


def test_array_record_matches_jsonl(tmp_path):
  recs = _records(17)
  jpath = _write_jsonl(tmp_path / "a.jsonl", recs)
  apath = str(tmp_path / "a.arrayrecord")
  pipeline.write_array_record(apath, recs)
  from_json = list(pipeline.make_iterator(_cfg(jpath), encode))
  from_ar = list(pipeline.make_iterator(_cfg(apath), encode))
  assert len(from_json) == len(from_ar) > 0
  for a, b in zip(from_json, from_ar):
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
  assert pipeline.open_source([apath]).describe(3).endswith("a.arrayrecord:record 3")


def test_real_corpus_jsonl():
  corpus = DATA / "hotpotqa_dev100" / "corpus.jsonl"
  if not corpus.exists():
    pytest.skip("shared data not present")
  src = pipeline.open_source([str(corpus)])
  assert len(src) == 991

  def byte_encode(record):
    ids = list(record["contents"].encode()[:100])
    return ids, [1] * len(ids)

  cfg = pipeline.PipelineConfig(paths=(str(corpus),), seq_len=256,
                                batch_size=8, process_index=0, process_count=1,
                                drop_remainder=False)
  batches = list(pipeline.make_iterator(cfg, byte_encode))
  segments = sum(int(b["segment_ids"].max(axis=1).sum()) for b in batches)
  assert segments == 991


@pytest.mark.slow  # ~12 s: spawns grain worker processes
def test_worker_processes_resume_exactly(tmp_path):
  from absl import flags  # grain's worker set-up reads absl flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  path = _write_jsonl(tmp_path / "a.jsonl", _records(40))
  cfg = _cfg(path, num_epochs=2, num_workers=2, drop_remainder=False)
  it = pipeline.make_iterator(cfg, encode)
  reference = list(it)
  it.close()
  # Two workers each take half the records: still every record twice.
  assert collections.Counter(_ids(reference)) == {i: 2 for i in range(40)}
  it = pipeline.make_iterator(cfg, encode)
  for _ in range(5):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  it.close()
  resumed = pipeline.make_iterator(cfg, encode)
  resumed.set_state(state)
  rest = list(resumed)
  resumed.close()
  assert len(rest) == len(reference) - 5
  for got, want in zip(rest, reference[5:]):
    np.testing.assert_array_equal(got["tokens"], want["tokens"])
    np.testing.assert_array_equal(got["segment_ids"], want["segment_ids"])

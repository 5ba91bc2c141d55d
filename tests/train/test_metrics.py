"""Metrics writer: event files decode with real protobuf, CRCs match published
vectors, JSONL log, console line, NaN/Inf guard."""

import io
import json
import math
import os
import struct

import numpy as np
import pytest

from masksearch_jax.train import metrics


def test_crc32c_known_vectors():
  # RFC 3720 (iSCSI) appendix B.4 and the classic check value.
  assert metrics.crc32c(b"123456789") == 0xE3069283
  assert metrics.crc32c(bytes(32)) == 0x8A9136AA
  assert metrics.crc32c(b"\xff" * 32) == 0x62A8AB43
  assert metrics.crc32c(bytes(range(32))) == 0x46DD794E


def _event_class():
  """tensorflow.Event / Summary built with the real protobuf runtime from a
  descriptor written here (field numbers from tensorflow/core/util/event.proto
  and framework/summary.proto), as an independent decoder."""
  from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
  f = descriptor_pb2.FileDescriptorProto(name="ev.proto", package="t", syntax="proto3")
  T = descriptor_pb2.FieldDescriptorProto
  value = f.message_type.add(name="Value")
  value.field.add(name="tag", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
  value.field.add(name="simple_value", number=2, type=T.TYPE_FLOAT, label=T.LABEL_OPTIONAL)
  summ = f.message_type.add(name="Summary")
  summ.field.add(name="value", number=1, type=T.TYPE_MESSAGE, type_name=".t.Value",
                 label=T.LABEL_REPEATED)
  ev = f.message_type.add(name="Event")
  ev.field.add(name="wall_time", number=1, type=T.TYPE_DOUBLE, label=T.LABEL_OPTIONAL)
  ev.field.add(name="step", number=2, type=T.TYPE_INT64, label=T.LABEL_OPTIONAL)
  ev.field.add(name="file_version", number=3, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
  ev.field.add(name="summary", number=5, type=T.TYPE_MESSAGE, type_name=".t.Summary",
               label=T.LABEL_OPTIONAL)
  pool = descriptor_pool.DescriptorPool()
  pool.Add(f)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Event"))


def test_event_file_decodes_with_protobuf(tmp_path):
  Event = _event_class()
  console = io.StringIO()
  with metrics.MetricsWriter(str(tmp_path), total_steps=4, console_every=2,
                             console=console) as w:
    for step in range(1, 5):
      w.write(step, {"loss": 1.0 / step, "tokens_per_s": np.float32(1234.5),
                     "reward/format": np.array(0.25)})
  (name,) = [n for n in os.listdir(tmp_path) if "tfevents" in n]
  events = [Event.FromString(r) for r in metrics.read_tfrecords(str(tmp_path / name))]
  assert events[0].file_version == "brain.Event:2"
  got = {(e.step, v.tag): v.simple_value for e in events[1:] for v in e.summary.value}
  assert len(events) == 5 and len(got) == 12
  for step in range(1, 5):
    assert got[(step, "loss")] == pytest.approx(1.0 / step, rel=1e-6)
    assert got[(step, "tokens_per_s")] == 1234.5
    assert got[(step, "reward/format")] == 0.25
  assert all(e.wall_time > 1.6e9 for e in events)

  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines] == [1, 2, 3, 4]
  assert lines[2]["loss"] == pytest.approx(1 / 3)

  out = console.getvalue().splitlines()
  assert len(out) == 2  # steps 2 and 4
  assert out[0].startswith("step 2/4 [#####-----]  50% | loss 0.5 |")
  assert out[1].startswith("step 4/4 [##########] 100% |")


def test_negative_step_and_record_framing(tmp_path):
  # Hand-worked Event: step=-1 is a 10-byte varint (two's complement int64).
  data = metrics.encode_event(0.0, -1)
  assert data == b"\x09" + bytes(8) + b"\x10" + b"\xff" * 9 + b"\x01"
  rec = metrics.tfrecord(b"abc")
  assert rec[:8] == struct.pack("<Q", 3) and rec[12:15] == b"abc" and len(rec) == 19
  path = tmp_path / "r"
  path.write_bytes(rec + rec[:-1] + b"\x00")
  it = metrics.read_tfrecords(str(path))
  assert next(it) == b"abc"
  with pytest.raises(ValueError, match="bad data CRC in the record at byte 19"):
    next(it)


def test_check_finite_names_step_and_metric():
  metrics.check_finite(3, {"loss": 1.0, "grad_norm": np.float32(2.0)})
  with pytest.raises(metrics.NonFiniteMetricError, match=r"step 17: .*grad_norm=nan"):
    metrics.check_finite(17, {"loss": 1.0, "grad_norm": math.nan})
  with pytest.raises(metrics.NonFiniteMetricError, match=r"step 2: .*loss=inf"):
    metrics.check_finite(2, {"loss": np.inf})


def test_writer_stops_on_nan_before_writing(tmp_path):
  with metrics.MetricsWriter(str(tmp_path), console_every=0) as w:
    w.write(1, {"loss": 1.0})
    with pytest.raises(metrics.NonFiniteMetricError, match="step 2"):
      w.write(2, {"loss": float("nan")})
  assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_disabled_writer_writes_nothing(tmp_path):
  with metrics.MetricsWriter(str(tmp_path / "x"), enabled=False) as w:
    w.write(1, {"loss": 1.0})
  assert not (tmp_path / "x").exists()


def test_format_progress_eta():
  line = metrics.format_progress(250, 1000, {"loss": 2.0}, elapsed_s=50.0, start_step=0)
  assert line == "step 250/1000 [##--------]  25% | loss 2 | 5 it/s | eta 2m30s"

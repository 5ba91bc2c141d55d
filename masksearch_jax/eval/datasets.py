"""Eval-set readers: the common QA file layouts -> one `QAExample` list, detected automatically.

Why one module: every public QA set ships in a slightly different layout, and eval, RL prompt
building and the sweep all need the same `(question, gold answers)` view. Layouts:

- `flashrag`: JSONL/JSON records `{id, question, golden_answers}` (also our hotpotqa_dev100
  questions.jsonl);
- `qa_answer`: `{idx|id, question, answer}` (R1-Searcher training sets);
- `hotpotqa`: the official HotpotQA JSON list `{_id, question, answer, supporting_facts, context}`
  (the `_id` may be missing in the HF export; ids then come from the row number);
- `freshqa`: the FreshQA sheet as CSV (`question`, `answer_0..answer_9`), with or without the
  preamble rows above the header that the published sheet has;
- `verl`: verl / Search-R1 parquet (or JSONL) rows `{prompt, reward_model: {ground_truth}}`.

A file in none of these layouts raises `DatasetFormatError` naming the fields it found.
"""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence


class DatasetFormatError(ValueError):
  """A file that no reader understands, or a record with a missing/ill-typed field."""


@dataclasses.dataclass(frozen=True)
class QAExample:
  id: str
  question: str
  golden_answers: list[str]
  source: str
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)


LAYOUTS = ("flashrag", "qa_answer", "hotpotqa", "freshqa", "verl")
_FRESHQA_ANSWERS = tuple(f"answer_{i}" for i in range(10))
_HEADER_SCAN_ROWS = 20  # FreshQA's published sheet has a couple of title rows above its header.


def _str_list(value: Any, where: str) -> list[str]:
  """Gold answers as a list of non-empty strings; a scalar becomes a one-element list."""
  if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays from parquet
    value = value.tolist()
  if isinstance(value, (str, int, float)) and not isinstance(value, bool):
    value = [value]
  if not isinstance(value, (list, tuple)):
    raise DatasetFormatError(f"{where}: gold answers must be a string or a list, got {type(value).__name__}")
  out = [str(v).strip() for v in value if v is not None and str(v).strip()]
  if not out:
    raise DatasetFormatError(f"{where}: no non-empty gold answer")
  return out


def _need_str(rec: Mapping[str, Any], key: str, where: str) -> str:
  val = rec.get(key)
  if not isinstance(val, str) or not val.strip():
    raise DatasetFormatError(f"{where}: field '{key}' must be a non-empty string, got {val!r:.80}")
  return val.strip()


def detect_record_layout(keys: Iterable[str]) -> str | None:
  """Which record layout a set of field names is, or None. Order matters: most specific first."""
  k = set(keys)
  if {"prompt", "reward_model"} <= k:
    return "verl"
  if {"question", "golden_answers"} <= k:
    return "flashrag"
  if {"question", "answer"} <= k and ("_id" in k or "supporting_facts" in k or "context" in k):
    return "hotpotqa"
  if {"question", "answer"} <= k:
    return "qa_answer"
  if "question" in k and "answer_0" in k:
    return "freshqa"
  return None


def _verl_question(prompt: Any, extra: Any, where: str) -> str:
  """The question of a verl row: extra_info.question if given, else the last user message."""
  if isinstance(extra, Mapping) and isinstance(extra.get("question"), str) and extra["question"].strip():
    return extra["question"].strip()
  if hasattr(prompt, "tolist") and not isinstance(prompt, str):
    prompt = prompt.tolist()
  if isinstance(prompt, str) and prompt.strip():
    return prompt.strip()
  if isinstance(prompt, (list, tuple)):
    users = [m.get("content") for m in prompt if isinstance(m, Mapping) and m.get("role") == "user"]
    if users and isinstance(users[-1], str) and users[-1].strip():
      return users[-1].strip()
  raise DatasetFormatError(f"{where}: field 'prompt' has no user message (got {prompt!r:.80})")


def _verl_gold(reward_model: Any, where: str) -> list[str]:
  if not isinstance(reward_model, Mapping) or "ground_truth" not in reward_model:
    raise DatasetFormatError(f"{where}: field 'reward_model.ground_truth' is missing")
  gt = reward_model["ground_truth"]
  if isinstance(gt, Mapping):  # Search-R1 stores {"target": [...]}
    if "target" not in gt:
      raise DatasetFormatError(f"{where}: 'reward_model.ground_truth' has fields {sorted(gt)}, no 'target'")
    gt = gt["target"]
  return _str_list(gt, f"{where}: reward_model.ground_truth")


def record_to_example(rec: Mapping[str, Any], layout: str, index: int, source: str,
                      where: str) -> QAExample:
  """One parsed record (any layout but freshqa's CSV row strings) -> QAExample."""
  if layout == "flashrag":
    gold = _str_list(rec["golden_answers"], f"{where}: golden_answers")
    ident, drop = rec.get("id", index), ("id", "question", "golden_answers")
  elif layout == "qa_answer":
    gold = _str_list(rec["answer"], f"{where}: answer")
    ident = rec.get("idx", rec.get("id", index))
    drop = ("idx", "id", "question", "answer")
  elif layout == "hotpotqa":
    gold = _str_list(rec["answer"], f"{where}: answer")
    ident, drop = rec.get("_id", f"{source}_{index}"), ("_id", "question", "answer", "context")
  elif layout == "verl":
    question = _verl_question(rec["prompt"], rec.get("extra_info"), where)
    gold = _verl_gold(rec["reward_model"], where)
    extra = rec.get("extra_info") if isinstance(rec.get("extra_info"), Mapping) else {}
    ident = rec.get("id", extra.get("index", index))
    src = rec.get("data_source") if isinstance(rec.get("data_source"), str) else source
    meta = {k: v for k, v in rec.items() if k not in ("prompt", "reward_model", "id")}
    return QAExample(str(ident), question, gold, src, meta)
  else:
    raise ValueError(f"unknown layout {layout!r}")
  question = _need_str(rec, "question", where)
  meta = {k: v for k, v in rec.items() if k not in drop}
  return QAExample(str(ident), question, gold, source, meta)


def _read_json_records(path: Path) -> list[tuple[str, Any]]:
  """(where, record) pairs from a JSON array/object or JSONL file."""
  text = path.read_text(encoding="utf-8")
  stripped = text.lstrip()
  if stripped.startswith("["):
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      raise DatasetFormatError(f"{path}: invalid JSON array: {e}") from e
    return [(f"{path}[{i}]", r) for i, r in enumerate(data)]
  out = []
  for lineno, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      out.append((f"{path}:{lineno}", json.loads(line)))
    except json.JSONDecodeError as e:
      if lineno == 1 and stripped.startswith("{"):  # maybe one pretty-printed JSON object
        try:
          obj = json.loads(text)
        except json.JSONDecodeError:
          raise DatasetFormatError(f"{path}:{lineno}: invalid JSON: {e}") from e
        rows = obj.get("data") if isinstance(obj, dict) else None
        if isinstance(rows, list):  # {"data": [...]} wrappers
          return [(f"{path}[data][{i}]", r) for i, r in enumerate(rows)]
        return [(str(path), obj)]
      raise DatasetFormatError(f"{path}:{lineno}: invalid JSON: {e}") from e
  return out


def _records_to_examples(pairs: Sequence[tuple[str, Any]], path: Path, source: str) -> list[QAExample]:
  if not pairs:
    raise DatasetFormatError(f"{path}: no records")
  where0, first = pairs[0]
  if not isinstance(first, Mapping):
    raise DatasetFormatError(f"{where0}: expected a JSON object per record, got {type(first).__name__}")
  layout = detect_record_layout(first.keys())
  if layout is None or layout == "freshqa":
    raise DatasetFormatError(
        f"{where0}: unknown QA layout; found fields {sorted(first.keys())}; expected one of "
        "{id, question, golden_answers} | {idx, question, answer} | HotpotQA {_id, question, answer} "
        "| verl {prompt, reward_model.ground_truth}")
  out = []
  for i, (where, rec) in enumerate(pairs):
    if not isinstance(rec, Mapping):
      raise DatasetFormatError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if detect_record_layout(rec.keys()) != layout:
      raise DatasetFormatError(
          f"{where}: record layout differs from the first record's ({layout}); found fields {sorted(rec.keys())}")
    out.append(record_to_example(rec, layout, i, source, where))
  return out


def _read_freshqa(path: Path, source: str) -> list[QAExample]:
  with path.open(newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))
  header_at = None
  for i, row in enumerate(rows[:_HEADER_SCAN_ROWS]):
    names = [c.strip() for c in row]
    if "question" in names and "answer_0" in names:
      header_at = i
      break
  if header_at is None:
    first = rows[0] if rows else []
    raise DatasetFormatError(
        f"{path}: CSV without a FreshQA header (question, answer_0..answer_9) in its first "
        f"{_HEADER_SCAN_ROWS} rows; first row has fields {first[:12]}")
  header = [c.strip() for c in rows[header_at]]
  col = {name: j for j, name in enumerate(header)}
  answer_cols = [col[a] for a in _FRESHQA_ANSWERS if a in col]
  out = []
  for lineno, row in enumerate(rows[header_at + 1:], header_at + 2):
    if not any(c.strip() for c in row):
      continue
    where = f"{path}:row {lineno}"
    if len(row) < len(header):
      row = row + [""] * (len(header) - len(row))
    rec = dict(zip(header, row))
    question = _need_str(rec, "question", where)
    gold = _str_list([row[j] for j in answer_cols], f"{where}: answer_0..answer_9")
    ident = rec.get("id", "").strip() or str(len(out))
    meta = {k: v for k, v in rec.items() if k and k != "id" and k != "question" and k not in _FRESHQA_ANSWERS}
    out.append(QAExample(ident, question, gold, source, meta))
  return out


def _read_parquet_rows(path: Path) -> list[dict[str, Any]]:
  try:
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    return pq.read_table(path).to_pylist()
  except ImportError:
    pass
  try:
    import pandas as pd  # pylint: disable=g-import-not-at-top
    return pd.read_parquet(path).to_dict(orient="records")
  except ImportError as e:
    raise DatasetFormatError(
        f"{path}: reading parquet needs pyarrow or pandas, and neither is installed "
        "(pip install pyarrow), or convert the file to JSONL") from e


def load_eval_set(path: str | Path, source: str | None = None, limit: int | None = None) -> list[QAExample]:
  """Reads one eval/prompt file of any known layout; `source` defaults to a name from the path."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"eval set not found: {path}")
  src = source or default_source(path)
  suffix = path.suffix.lower()
  if suffix == ".csv":
    out = _read_freshqa(path, src)
  elif suffix == ".parquet":
    rows = _read_parquet_rows(path)
    out = _records_to_examples([(f"{path}:row {i}", r) for i, r in enumerate(rows)], path, src)
  elif suffix in (".json", ".jsonl"):
    out = _records_to_examples(_read_json_records(path), path, src)
  else:
    raise DatasetFormatError(f"{path}: unknown file type '{suffix}' (expected .jsonl, .json, .csv, .parquet)")
  return out[:limit] if limit is not None else out


def default_source(path: Path) -> str:
  """A data-set name from the path: the parent folder for generic names like test.jsonl."""
  stem = path.stem
  generic = {"test", "dev", "train", "val", "validation", "questions", "data"}
  return path.parent.name if stem.lower() in generic and path.parent.name else stem


def parse_eval_spec(spec: str) -> tuple[str | None, str]:
  """`name=path` or `path` (as given on a command line) -> (name or None, path)."""
  name, sep, p = spec.partition("=")
  if sep and "/" not in name and name:
    return name, p
  return None, spec

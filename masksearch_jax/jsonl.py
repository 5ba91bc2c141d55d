"""Line-by-line JSONL reading with errors that name file and line: the one reader the data,
RL-prompt, trace and metrics loaders share."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator


class JsonlError(ValueError):
  """A malformed line; the message starts with `path:line:`."""


def iter_objects(path: str | Path, *, what: str = "file") -> Iterator[tuple[str, int, dict]]:
  """Yields (path, line number, object) for each non-blank line that holds a JSON object."""
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{what} {path} does not exist")
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise JsonlError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
      if not isinstance(obj, dict):
        raise JsonlError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
      yield str(path), lineno, obj

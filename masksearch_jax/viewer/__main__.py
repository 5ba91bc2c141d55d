r"""Writes the static rollout viewer page.

  python -m masksearch_jax.viewer --rollouts=runs/rl/rollouts.jsonl --metrics=runs/rl/metrics.jsonl \
      --out=runs/rl/viewer.html
"""
from __future__ import annotations

from pathlib import Path

from absl import app, flags, logging

from masksearch_jax.viewer import curves, render, trajectory

_ROLLOUTS = flags.DEFINE_string("rollouts", None, "rollouts JSONL {id, source, prompt, response, gold, reward}")
_METRICS = flags.DEFINE_string("metrics", None, "optional metrics JSONL {step, <metric>: value, ...}")
_OUT = flags.DEFINE_string("out", None, "output HTML (default: the rollouts path with .html)")
_TITLE = flags.DEFINE_string("title", None, "page title (default: the rollouts file name)")
_MAX = flags.DEFINE_integer("max_rollouts", 2000, "read at most this many rollouts (page size bound)")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _ROLLOUTS.value:
    raise app.UsageError("--rollouts is required")
  src = Path(_ROLLOUTS.value)
  rollouts = trajectory.load_rollouts(src, limit=_MAX.value)
  metrics = curves.load_metrics(_METRICS.value) if _METRICS.value else None
  out = Path(_OUT.value) if _OUT.value else src.with_suffix(".html")
  out.parent.mkdir(parents=True, exist_ok=True)
  page = render.render_page(rollouts, metrics, title=_TITLE.value or src.name)
  out.write_text(page, encoding="utf-8")
  logging.info("wrote %s (%d rollouts, %d curves)", out, len(rollouts), len(metrics or {}))
  print(out)


if __name__ == "__main__":
  app.run(main)

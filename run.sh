#!/usr/bin/env bash
# One entry for a fresh machine: creates/reuses .venv with the pinned set, then
#   bash run.sh demo [flags]   - the main job on the embedded default (end-to-end demo)
#   bash run.sh test [args]    - the default (fast) test suite
#   bash run.sh py  ARGS       - any python command inside the venv
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=.venv
STAMP=$VENV/.installed-$(cat requirements.txt requirements-test.txt setup.py | sha1sum | cut -c1-12)
if [ ! -f "$STAMP" ]; then
  echo "[run.sh] creating $VENV with pinned dependencies (first run takes a few minutes)..." >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2 || true
  "$VENV/bin/python" -m pip install -q -r requirements-test.txt >&2
  "$VENV/bin/python" -m pip install -q --no-deps -e . >&2
  rm -f "$VENV"/.installed-*; touch "$STAMP"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cmd=${1:-demo}; shift || true
case "$cmd" in
  demo) exec "$VENV/bin/python" -m masksearch_jax.demo "$@" ;;
  test)
    set +e
    "$VENV/bin/python" -m pytest tests "$@"
    rc=$?
    if [ $rc -eq 5 ]; then echo "[run.sh] pytest collected no tests: treating as failure" >&2; exit 1; fi
    exit $rc ;;
  py) exec "$VENV/bin/python" "$@" ;;
  *) echo "usage: bash run.sh {demo|test|py} [args]" >&2; exit 2 ;;
esac

"""The viewer page: escaping, content, the absl entry point, and (if Debian's chromium is on PATH)
the JS-built filter bar and hash-preset filtering in a real headless browser."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from masksearch_jax.protocol import Hit, format_observation
from masksearch_jax.viewer import render, trajectory as tr

REPO = Path(__file__).resolve().parents[2]
EVIL = "<script>alert('x')</script>"


def _rollouts():
  obs = format_observation([Hit("1", "Evil & Co", f"passage with {EVIL} inside", 1.0)])
  return [
      {"id": "a1", "source": "nq", "prompt": "Q: who?", "gold": ["Ada"],
       "response": f"<think>hmm</think><search> who </search>{obs}<answer> Ada </answer>",
       "reward": {"total": 1.0, "format": 0.1, "answer": 0.9}},
      {"id": "b2", "source": "hotpotqa", "prompt": "Q2", "gold": "x",
       "response": "<think>no idea</think><answer> y </answer>", "reward": {"total": 0.0, "format": 0.1, "answer": 0.0}},
      {"id": "c3", "source": "hotpotqa", "prompt": "Q3", "gold": ["z"],
       "response": "<answer> z </answer>", "reward": {"total": 0.5, "format": 0.0, "answer": 0.5}},
  ]


def _write(tmp_path):
  rp = tmp_path / "rollouts.jsonl"
  rp.write_text("\n".join(json.dumps(r) for r in _rollouts()), encoding="utf-8")
  mp = tmp_path / "metrics.jsonl"
  mp.write_text("\n".join(json.dumps({"step": s, "reward/mean": s / 4, "loss": 2 - s / 4}) for s in range(5)))
  return rp, mp


def test_text_is_escaped():
  page = render.render_page([tr.parse_rollout(r, "t") for r in _rollouts()])
  assert EVIL not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
  assert page.count("<script>") == 1  # only the page's own script
  assert "<b>Evil &amp; Co</b>" in page


def test_page_content(tmp_path):
  page = render.render_page([tr.parse_rollout(r, "t") for r in _rollouts()], {"loss": [(0, 2.0), (1, 1.0)]})
  cards = re.findall(r'<details class="card" data-source="([^"]+)" data-reward="([^"]+)"', page)
  assert cards == [("nq", "1"), ("hotpotqa", "0"), ("hotpotqa", "0.5")]
  assert 'class="seg search">search: who</div>' in page
  assert "retrieved: 1 passage<" in page and 'class="seg answer">answer: Ada</div>' in page
  assert "<tr><td>answer</td><td>0.9</td></tr>" in page and 'data-metric="loss"' in page
  assert "<tr><td>hotpotqa</td><td>2</td><td>0.250</td></tr>" in page  # mean reward of 0.0 and 0.5
  assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched


def test_cli_writes_page(tmp_path):
  rp, mp = _write(tmp_path)
  out = tmp_path / "v" / "page.html"
  r = subprocess.run([sys.executable, "-m", "masksearch_jax.viewer", f"--rollouts={rp}", f"--metrics={mp}",
                      f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=60)
  assert r.returncode == 0, r.stderr
  page = out.read_text()
  assert page.count('class="card"') == 3 and page.count('<svg class="curve"') == 2
  h = subprocess.run([sys.executable, "-m", "masksearch_jax.viewer", "--help"], cwd=REPO, capture_output=True,
                     text=True, timeout=60)
  assert "--rollouts" in h.stdout  # (absl exits 1 after --help)


def _dump_dom(chromium, url, tmp_path):
  r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--disable-sync", "--no-first-run",
                      f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", url],
                     capture_output=True, text=True, timeout=90)
  assert r.returncode == 0, r.stderr[-2000:]
  return r.stdout


def test_headless_chromium(tmp_path):
  chromium = shutil.which("chromium")
  if chromium is None:
    pytest.skip("chromium not on PATH (Debian: apt-get install chromium)")
  rp, mp = _write(tmp_path)
  out = tmp_path / "page.html"
  out.write_text(render.render_page(tr.load_rollouts(rp), None), encoding="utf-8")
  dom = _dump_dom(chromium, out.as_uri(), tmp_path)
  # Elements only the script builds:
  assert '<select id="f-source">' in dom and '<option value="hotpotqa">hotpotqa</option>' in dom
  assert 'id="f-count">showing 3 of 3<' in dom
  assert "<script>alert" not in dom.split("<script>", 1)[0]
  # Filters preset from the URL hash: hotpotqa with reward >= 0.25 leaves only c3.
  dom = _dump_dom(chromium, out.as_uri() + "#source=hotpotqa&min=0.25", tmp_path)
  assert 'id="f-count">showing 1 of 3<' in dom
  hidden = re.findall(r'<details class="card( hidden)?"[^>]*data-id="([^"]+)"', dom)
  assert hidden == [(" hidden", "a1"), (" hidden", "b2"), ("", "c3")]

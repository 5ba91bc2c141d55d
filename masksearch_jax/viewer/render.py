"""Rollouts + metrics -> one self-contained HTML page (inline CSS/JS; no server, no network).

Why server-side rendering of the cards: every piece of model/corpus text is HTML-escaped here, in
Python, once; the inline script only reads `data-*` attributes to build the filter bar, so no
rollout text ever passes through `innerHTML`. Filters can be preset in the URL hash, e.g.
`viewer.html#source=nq&min=0.5`.
"""
from __future__ import annotations

import collections
from html import escape
from typing import Sequence

from masksearch_jax.viewer import curves
from masksearch_jax.viewer.trajectory import Rollout, Segment, split_response
from masksearch_jax.protocol import DEFAULT, Protocol

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d1f23}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid #ddd;padding:8px 16px;z-index:1}
main{padding:12px 16px}
h1{font-size:18px;margin:0 0 6px} h2{font-size:16px}
#filters label{margin-right:14px} #filters input{width:70px} #f-count{margin-left:12px}
.curves{display:flex;flex-wrap:wrap;gap:8px}
svg.curve{background:#fff;border:1px solid #ddd}
svg .frame{fill:none;stroke:#ccc} svg .line{fill:none;stroke:#2563eb;stroke-width:1.5}
svg text{font-size:10px;fill:#444} svg .ct{font-size:11px;font-weight:600}
svg .yl{text-anchor:end}
details.card{background:#fff;border:1px solid #ddd;border-radius:6px;margin:8px 0;padding:6px 10px}
details.card>summary{cursor:pointer}
.pos{color:#137333;font-weight:600} .neg{color:#b3261e;font-weight:600}
.seg{margin:6px 0;padding:6px 8px;border-left:4px solid #ccc;white-space:pre-wrap}
.think{border-color:#9aa0a6;color:#3c4043;font-style:italic}
.search{border-color:#2563eb;background:#eef3fe}
.information{border-color:#f29900;background:#fff8e6}
.answer{border-color:#137333;background:#e6f4ea;font-weight:600}
.text{border-color:#eee}
.unclosed::after{content:" [unclosed]";color:#b3261e}
.turn{font-size:11px;color:#777;margin-top:8px}
ol.hits{margin:4px 0;padding-left:22px} .hits li{margin:3px 0}
table.reward td{padding:1px 8px 1px 0}
.prompt{white-space:pre-wrap;color:#555}
.hidden{display:none}
"""

_JS = r"""
(function(){
  const cards = Array.from(document.querySelectorAll('details.card'));
  const bar = document.getElementById('filters');
  const mk = (tag, attrs, text) => { const e = document.createElement(tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]); if (text !== undefined) e.textContent = text; return e; };
  const sources = Array.from(new Set(cards.map(c => c.dataset.source))).sort();
  const sel = mk('select', {id: 'f-source'});
  sel.appendChild(mk('option', {value: ''}, 'all data sets'));
  for (const s of sources) sel.appendChild(mk('option', {value: s}, s));
  const lo = mk('input', {id: 'f-min', type: 'number', step: 'any', placeholder: 'min'});
  const hi = mk('input', {id: 'f-max', type: 'number', step: 'any', placeholder: 'max'});
  const l1 = mk('label', {}, 'data set '); l1.appendChild(sel);
  const l2 = mk('label', {}, 'reward \u2265 '); l2.appendChild(lo);
  const l3 = mk('label', {}, 'reward \u2264 '); l3.appendChild(hi);
  const openAll = mk('button', {id: 'f-open', type: 'button'}, 'expand all');
  const count = mk('span', {id: 'f-count'});
  for (const e of [l1, l2, l3, openAll, count]) bar.appendChild(e);
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.has('source')) sel.value = params.get('source');
  if (params.has('min')) lo.value = params.get('min');
  if (params.has('max')) hi.value = params.get('max');
  function apply(){
    const s = sel.value, a = lo.value === '' ? -Infinity : +lo.value, b = hi.value === '' ? Infinity : +hi.value;
    let shown = 0;
    for (const c of cards) {
      const r = +c.dataset.reward, ok = (!s || c.dataset.source === s) && r >= a && r <= b;
      c.classList.toggle('hidden', !ok); if (ok) shown++;
    }
    count.textContent = 'showing ' + shown + ' of ' + cards.length;
  }
  openAll.addEventListener('click', () => { const open = openAll.textContent === 'expand all';
    for (const c of cards) if (!c.classList.contains('hidden')) c.open = open;
    openAll.textContent = open ? 'collapse all' : 'expand all'; });
  for (const e of [sel, lo, hi]) e.addEventListener('input', apply);
  sel.addEventListener('change', apply);
  apply();
})();
"""


def _segment_html(seg: Segment) -> str:
  cls = f"seg {seg.kind}" + ("" if seg.closed else " unclosed")
  if seg.kind == "information":
    if seg.hits:
      items = "".join(f"<li><b>{escape(h.title)}</b> {escape(h.text)}</li>" for h in seg.hits)
      body = f'<ol class="hits">{items}</ol>'
    else:
      body = f"<div>{escape(seg.text)}</div>"
    n = len(seg.hits)
    label = f"{n} passage{'s' if n != 1 else ''}" if n else "observation"
    return f'<details class="{cls}"><summary>retrieved: {label}</summary>{body}</details>'
  prefix = {"search": "search: ", "answer": "answer: "}.get(seg.kind, "")
  return f'<div class="{cls}">{escape(prefix)}{escape(seg.text)}</div>'


def rollout_html(r: Rollout, protocol: Protocol = DEFAULT) -> str:
  segs = split_response(r.response, protocol)
  parts, turn = [], -1
  for seg in segs:
    if seg.turn != turn:
      turn = seg.turn
      parts.append(f'<div class="turn">turn {turn + 1}</div>')
    parts.append(_segment_html(seg))
  answer = protocol.extract_answer(r.response)
  searches = sum(s.kind == "search" for s in segs)
  rew_cls = "pos" if r.total > 0 else "neg"
  rows = "".join(f"<tr><td>{escape(k)}</td><td>{v:.4g}</td></tr>" for k, v in r.reward.items())
  extra = "".join(f"<tr><td>{escape(k)}</td><td>{escape(str(v))}</td></tr>" for k, v in r.extra.items())
  gold = " | ".join(r.gold)
  return (
      f'<details class="card" data-source="{escape(r.source)}" data-reward="{r.total:.6g}" '
      f'data-id="{escape(r.id)}">'
      f'<summary><span class="{rew_cls}">{r.total:.3g}</span> · {escape(r.source)} · {escape(r.id)} · '
      f'{searches} search{"es" if searches != 1 else ""} · answer: <b>{escape(answer or "—")}</b> · '
      f'gold: {escape(gold or "—")}</summary>'
      f'<details><summary>prompt</summary><div class="prompt">{escape(r.prompt)}</div></details>'
      + "".join(parts) +
      f'<table class="reward"><tr><td>gold</td><td>{escape(gold)}</td></tr>{rows}{extra}</table>'
      '</details>')


def _overview(rollouts: Sequence[Rollout]) -> str:
  by = collections.defaultdict(list)
  for r in rollouts:
    by[r.source].append(r.total)
  rows = "".join(f"<tr><td>{escape(s)}</td><td>{len(v)}</td><td>{sum(v) / len(v):.3f}</td></tr>"
                 for s, v in sorted(by.items()))
  return f'<table id="overview"><tr><th>data set</th><th>n</th><th>mean reward</th></tr>{rows}</table>'


def render_page(rollouts: Sequence[Rollout], metrics: curves.Series | None = None,
                title: str = "masksearch_jax rollouts", protocol: Protocol = DEFAULT) -> str:
  """The whole page as one string."""
  charts = curves.svg_charts(metrics) if metrics else ""
  curves_html = (f'<section><h2>learning curves</h2><div class="curves">{charts}</div></section>'
                 if charts else "")
  cards = "\n".join(rollout_html(r, protocol) for r in rollouts)
  return (
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
      f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
      f'<header><h1>{escape(title)}</h1><div id="filters"></div></header><main>'
      f"{curves_html}<section><h2>rollouts ({len(rollouts)})</h2>{_overview(rollouts)}"
      f'<div id="cards">{cards}</div></section></main>'
      f"<script>{_JS}</script></body></html>\n")

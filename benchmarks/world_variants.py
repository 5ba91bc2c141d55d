"""World variants for the learning runs of `rl_world.py`: a scaled world, a question split that
keeps DAPO's prompts out of SFT, and imperfect teachers (oracle traces rewritten the way LLM
teachers err), so that RL has something to learn that SFT did not teach."""
from __future__ import annotations

import dataclasses
import random

from masksearch_jax.data import world


def world_config(scale: int = 1) -> world.WorldConfig:
  """The default world with `scale` times its entities and questions."""
  d = world.WorldConfig()
  if scale < 1:
    raise ValueError(f"--world_scale must be >= 1, got {scale}")
  return dataclasses.replace(d, n_people=d.n_people * scale, n_places=d.n_places * scale,
                             n_orgs=d.n_orgs * scale, n_works=d.n_works * scale,
                             n_questions=d.n_questions * scale)


def split_for_rl(items: list[dict], share: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
  """(SFT questions, DAPO questions): a seeded `share` of the training questions, stratified by
  hop count so both parts keep the 1-hop / 2-hop mix. share 0 gives (items, [])."""
  if not 0.0 <= share < 1.0:
    raise ValueError(f"--rl_share must be in [0, 1), got {share}")
  rng = random.Random(f"rl_share|{seed}")
  held = set()
  for kind in sorted({it.get("type", "") for it in items}):
    ids = [it["id"] for it in items if it.get("type", "") == kind]
    rng.shuffle(ids)
    held.update(ids[:round(share * len(ids))])
  return [it for it in items if it["id"] not in held], [it for it in items if it["id"] in held]


_MARK = " Now I need to find"


def shortcut_traces(got: list, items: list[dict], share: float, seed: int = 0):
  """Rewrites `share` of the 2-hop traces: after the first search the teacher concludes with the
  bridge entity (hop 1's answer) instead of searching for hop 2. Returns (traces, count)."""
  bridge = {it["id"]: it["hops"][0]["answer"] for it in items if it.get("type") == "2hop"}
  rng, out, n = random.Random(seed), [], 0
  for t in got:
    b = bridge.get(t.meta.get("id"))
    cut = t.response.find(_MARK)
    if b is not None and cut > 0 and rng.random() < share:
      t = dataclasses.replace(t, response=t.response[:cut] + f" So the answer is {b}.</think>\n"
                              f"<answer> {b} </answer>", meta={**t.meta, "shortcut": True})
      n += 1
    out.append(t)
  return out, n


def echo_traces(got: list, items: list[dict], share: float, seed: int = 0):
  """Rewrites `share` of the 1-hop traces so that the teacher's conclusion and answer are the
  question's subject instead of the retrieved answer. Returns (traces, count)."""
  one = {it["id"]: it for it in items if it.get("type") == "1hop"}
  rng, out, n = random.Random(seed), [], 0
  for t in got:
    it = one.get(t.meta.get("id"))
    if it is not None and rng.random() < share:
      gold, subject = it["hops"][0]["answer"], it["hops"][0]["subject"]
      cut = t.response.rfind(" So ")          # the conclusion after the quoted evidence
      tail = t.response[cut:]
      if cut > 0 and gold in tail:
        t = dataclasses.replace(t, response=t.response[:cut] + tail.replace(gold, subject),
                                meta={**t.meta, "echo": True})
        n += 1
    out.append(t)
  return out, n

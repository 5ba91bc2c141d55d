"""The embedded world: a seeded, fictional encyclopedia — the test bed that runs anywhere.

Entities (people, places, organisations, works) with attributes and relations; one passage per
entity; 1-hop and 2-hop questions with gold answers and the hop chain; RAMP samples over the
passages. Names are invented from syllables, so no pretrained model knows a fact: a model can only
answer by searching. Everything is a pure function of `WorldConfig` (same seed, same bytes).

  python -m masksearch_jax.data.world --out=/tmp/world [--n_people=200 ...] [--tokenizer_vocab=3000]
writes corpus.jsonl {id,title,text}, questions_{train,test}.jsonl {id,question,golden_answers,type,
hops}, ramp.jsonl (RAMP records) and, unless --tokenizer_vocab=0, tokenizer/ (HF format).
"""
from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Sequence

from masksearch_jax.data import passages, ramp, spans
from masksearch_jax.data import world_render as R

_ON = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr",
       "kr", "st", "th", "sh", "tr", "vel", "mor")
_VOW = ("a", "e", "i", "o", "u", "ae", "ei", "ou", "ia")
_CODA = ("", "", "n", "r", "l", "s", "th", "k", "m", "nd", "rn", "sk")
# Real words the syllable generator can produce; names must be invented (and never rude).
_REAL_WORDS = frozenset(
    "lover moron brisk musk tusk math brim rube pale mare sane dose dire lure rose gore tone bone "
    "vile rude nude lame moan dull dope stab kill dead damn hell tire fire fake bake lake sake "
    "make rake take wake dune tune rune mule rule role pole sole hole mole dole bile tile file pile "
    "mile rile sire tore bore more pore sore wore door poor boor moor tour sour pour four dour "
    "gone lone none zone bane lane mane pane vane cane wane kine mine nine pine tine vine wine "
    "line dine fine bare care dare fare rare tare ware gala lava sofa soda coma tuba diva viva "
    "mama papa lama pita feta beta zeta theta meta data sushi tundra".split())


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  seed: int = 0
  n_people: int = 120
  n_places: int = 30
  n_orgs: int = 24
  n_works: int = 150
  n_questions: int = 1000
  two_hop_fraction: float = 0.5
  test_fraction: float = 0.2


# (relation, subject kind, answer attribute, is the answer an entity id, question template)
RELATIONS = {
    "birthplace": ("person", "birthplace", True, "Where was {s} born?"),
    "birth_year": ("person", "birth_year", False, "In what year was {s} born?"),
    "employer": ("person", "employer", True, "Which organisation employed {s}?"),
    "occupation": ("person", "occupation", False, "What is the occupation of {s}?"),
    "founded_place": ("place", "founded", False, "In what year was {s} founded?"),
    "population": ("place", "population", False, "What is the population of {s}?"),
    "river": ("place", "river", False, "On which river is {s}?"),
    "founder": ("org", "founder", True, "Who founded the {s}?"),
    "founded_org": ("org", "founded", False, "In what year was the {s} founded?"),
    "headquarters": ("org", "headquarters", True, "Where is the {s} headquartered?"),
    "creator": ("work", "creator", True, "Who created \"{s}\"?"),
    "work_year": ("work", "year", False, "In what year was \"{s}\" completed?"),
}
# Two-hop: (first relation, second relation, template over the first subject).
TWO_HOP = (
    ("creator", "birthplace", "Where was the creator of \"{s}\" born?"),
    ("creator", "birth_year", "In what year was the creator of \"{s}\" born?"),
    ("creator", "employer", "Which organisation employed the creator of \"{s}\"?"),
    ("founder", "birthplace", "Where was the founder of the {s} born?"),
    ("founder", "occupation", "What is the occupation of the founder of the {s}?"),
    ("employer", "headquarters", "Where is the organisation that employed {s} headquartered?"),
    ("employer", "founder", "Who founded the organisation that employed {s}?"),
    ("birthplace", "population", "What is the population of the birthplace of {s}?"),
    ("birthplace", "river", "On which river is the town where {s} was born?"),
    ("headquarters", "founded_place", "In what year was the town where the {s} is "
     "headquartered founded?"),
)


class _Names:
  """Unique invented roots across the whole world (no name is another's word)."""

  def __init__(self, rng: random.Random):
    self.rng, self.used = rng, set()

  def root(self, syllables: tuple[int, int] = (2, 3)) -> str:
    for _ in range(1000):
      n = self.rng.randint(*syllables)
      w = "".join(self.rng.choice(_ON) + self.rng.choice(_VOW) for _ in range(n))
      w = (w + self.rng.choice(_CODA)).capitalize()
      if w not in self.used and 4 <= len(w) <= 12 and w.lower() not in _REAL_WORDS:
        self.used.add(w)
        return w
    raise RuntimeError("name space exhausted; lower the entity counts")


def generate(cfg: WorldConfig = WorldConfig()) -> dict[str, dict]:
  """-> {entity id: entity dict}; ids are `person/3`, `place/0`, ..."""
  rng = random.Random(f"world|{cfg.seed}")
  names = _Names(rng)
  ents: dict[str, dict] = {}
  places = [f"place/{i}" for i in range(cfg.n_places)]
  orgs = [f"org/{i}" for i in range(cfg.n_orgs)]
  people = [f"person/{i}" for i in range(cfg.n_people)]
  for pid in places:
    ents[pid] = {"id": pid, "kind": "place", "name": f"{names.root()} {rng.choice(R.PLACE_KINDS)}",
                 "founded": rng.randint(900, 1850), "population": rng.randint(800, 400000),
                 "river": f"{names.root()} River"}
  occupations = list(R.CREATIVE) + list(R.OTHER_OCCUPATIONS)
  for pid in people:
    ents[pid] = {"id": pid, "kind": "person", "name": f"{names.root((1, 2))} {names.root()}",
                 "birth_year": rng.randint(1780, 1990), "birthplace": rng.choice(places),
                 "occupation": rng.choice(occupations), "works": []}
  for oid in orgs:
    ents[oid] = {"id": oid, "kind": "org", "name": f"{names.root()} {rng.choice(R.ORG_KINDS)}",
                 "founded": rng.randint(1600, 1950), "founder": rng.choice(people),
                 "headquarters": rng.choice(places), "field": rng.choice(R.ORG_FIELDS)}
  for pid in people:
    ents[pid]["employer"] = rng.choice(orgs)
  creators = [p for p in people if ents[p]["occupation"] in R.CREATIVE] or people[:1]
  titles: set[str] = set()
  for i in range(cfg.n_works):
    while (t := f"The {rng.choice(R.ADJ)} {rng.choice(R.NOUN)}") in titles:
      if len(titles) >= len(R.ADJ) * len(R.NOUN):
        t = f"The {names.root()} {rng.choice(R.NOUN)}"
        break
    titles.add(t)
    creator = rng.choice(creators)
    kind, verb = R.CREATIVE.get(ents[creator]["occupation"], ("book", "wrote"))
    year = ents[creator]["birth_year"] + rng.randint(20, 60)
    wid = f"work/{i}"
    ents[wid] = {"id": wid, "kind": "work", "name": t, "creator": creator, "year": year,
                 "form": kind, "verb": verb}
    ents[creator]["works"].append(wid)
  return ents


def render(ents: dict[str, dict], seed: int = 0) -> list[dict]:
  """One passage per entity: {id, title, text}, in id order of generation."""
  names = {k: v["name"] for k, v in ents.items()}
  out = []
  for eid, e in ents.items():
    rng = random.Random(f"render|{seed}|{eid}")
    text = R.RENDER[e["kind"]](rng, e, names)
    out.append({"id": eid, "title": e["name"], "text": text})
  return out


def _answer(ents: dict[str, dict], subject: str, relation: str) -> tuple[str, str | None]:
  """(answer surface string, answer entity id or None)."""
  _, attr, is_ent, _ = RELATIONS[relation]
  v = ents[subject][attr]
  if is_ent:
    return ents[v]["name"], v
  return (f"{v:,}" if relation == "population" else str(v)), None


def questions(ents: dict[str, dict], cfg: WorldConfig = WorldConfig()) -> list[dict]:
  """1-hop and 2-hop questions; each hop records {subject, subject_id, relation, answer}."""
  rng = random.Random(f"questions|{cfg.seed}")
  by_kind: dict[str, list[str]] = {}
  for eid, e in ents.items():
    by_kind.setdefault(e["kind"], []).append(eid)
  seen, out = set(), []
  for _ in range(cfg.n_questions * 20):
    if len(out) >= cfg.n_questions:
      break
    if rng.random() < cfg.two_hop_fraction:
      r1, r2, tmpl = rng.choice(TWO_HOP)
      rels = [r1, r2]
    else:
      r1 = rng.choice(sorted(RELATIONS))
      rels, tmpl = [r1], RELATIONS[r1][3]
    subject = rng.choice(by_kind[RELATIONS[r1][0]])
    hops, cur = [], subject
    for rel in rels:
      ans, ans_id = _answer(ents, cur, rel)
      hops.append({"subject": ents[cur]["name"], "subject_id": cur, "relation": rel, "answer": ans})
      cur = ans_id
    q = tmpl.format(s=ents[subject]["name"])
    if q in seen:
      continue
    seen.add(q)
    out.append({"id": f"q{len(out)}", "question": q, "golden_answers": [hops[-1]["answer"]],
                "type": f"{len(hops)}hop", "hops": hops})
  return out


def split(qs: Sequence[dict], test_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
  rng = random.Random(f"split|{seed}")
  test = {q["id"] for q in qs if rng.random() < test_fraction}
  return [q for q in qs if q["id"] not in test], [q for q in qs if q["id"] in test]


def paragraphs(corpus: Sequence[dict]) -> list[passages.Paragraph]:
  return [passages.Paragraph(p["id"], p["title"], p["text"], "world") for p in corpus]


def ramp_samples(corpus: Sequence[dict], seed: int = 0) -> list[dict]:
  # World passages are short; every sentence carries a fact, so no word minimum applies.
  return ramp.build(paragraphs(corpus), spans.RuleTagger(), ramp.RampConfig(seed=seed))


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")


def build(out_dir: str | Path, cfg: WorldConfig = WorldConfig(), tokenizer_vocab: int = 0) -> dict:
  """Writes the world's files; returns counts."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  ents = generate(cfg)
  corpus = render(ents, cfg.seed)
  train, test = split(questions(ents, cfg), cfg.test_fraction, cfg.seed)
  samples = ramp_samples(corpus, cfg.seed)
  _write_jsonl(out / "corpus.jsonl", corpus)
  _write_jsonl(out / "questions_train.jsonl", train)
  _write_jsonl(out / "questions_test.jsonl", test)
  _write_jsonl(out / "ramp.jsonl", samples)
  if tokenizer_vocab:
    from masksearch_jax import tokenizer as tok_lib
    texts = [p["text"] for p in corpus] + [q["question"] for q in train + test]
    texts += [r["query"] for r in samples[:200]]
    tok_lib.train_bpe(texts, out / "tokenizer", vocab_size=tokenizer_vocab)
  counts = {"entities": len(ents), "passages": len(corpus), "train_questions": len(train),
            "test_questions": len(test), "ramp_samples": len(samples)}
  (out / "world.json").write_text(json.dumps({"config": dataclasses.asdict(cfg), **counts},
                                             indent=1) + "\n")
  return counts


def main(argv: Sequence[str]) -> None:
  del argv
  from absl import flags
  f = flags.FLAGS
  cfg = WorldConfig(seed=f.seed, n_people=f.n_people, n_places=f.n_places, n_orgs=f.n_orgs,
                    n_works=f.n_works, n_questions=f.n_questions,
                    two_hop_fraction=f.two_hop_fraction, test_fraction=f.test_fraction)
  print(json.dumps(build(f.out, cfg, f.tokenizer_vocab)))


if __name__ == "__main__":
  from absl import app, flags
  _d = WorldConfig()
  flags.DEFINE_string("out", None, "Output directory.", required=True)
  flags.DEFINE_integer("seed", _d.seed, "World seed.")
  flags.DEFINE_integer("n_people", _d.n_people, "People.")
  flags.DEFINE_integer("n_places", _d.n_places, "Places.")
  flags.DEFINE_integer("n_orgs", _d.n_orgs, "Organisations.")
  flags.DEFINE_integer("n_works", _d.n_works, "Works.")
  flags.DEFINE_integer("n_questions", _d.n_questions, "Questions (train + test).")
  flags.DEFINE_float("two_hop_fraction", _d.two_hop_fraction, "Share of 2-hop questions.")
  flags.DEFINE_float("test_fraction", _d.test_fraction, "Share of questions held out.")
  flags.DEFINE_integer("tokenizer_vocab", 3000, "Train a BPE tokenizer of this size (0: none).")
  app.run(main)

"""Encyclopedic prose for the embedded world: several templates per fact, chosen by a seeded rng.

Every fact a question asks about is rendered verbatim (names, years, populations as `12,400`) in its
subject's passage, so a search that finds the passage can answer; varied wording keeps a model from
answering by template position alone.
"""
from __future__ import annotations

import random
from typing import Mapping

# (kind of work, verb) by occupation of its creator.
CREATIVE = {"novelist": ("novel", "wrote"), "poet": ("poetry collection", "wrote"),
            "composer": ("symphony", "composed"), "painter": ("painting", "painted"),
            "playwright": ("play", "wrote"), "architect": ("treatise", "wrote"),
            "historian": ("chronicle", "wrote"), "philosopher": ("treatise", "wrote")}
OTHER_OCCUPATIONS = ("chemist", "engineer", "astronomer", "botanist", "cartographer", "physician")
ORG_KINDS = ("Institute", "Company", "Society", "Observatory", "Guild", "Press", "Academy",
             "Foundation", "Works", "Conservatory")
ORG_FIELDS = ("astronomy", "shipbuilding", "publishing", "medicine", "glassmaking", "music",
              "cartography", "botany", "railway engineering", "textiles")
PLACE_KINDS = ("Falls", "Harbor", "Crossing", "Vale", "Heights", "Point", "Ridge", "Bay", "Hollow",
               "Ford")
RIVER_KINDS = ("River",)
ADJ = ("Silent", "Amber", "Hollow", "Crimson", "Winter", "Distant", "Broken", "Golden", "Quiet",
       "Northern", "Seventh", "Lantern", "Iron", "Pale", "Wandering", "Glass", "Last", "Sleeping")
NOUN = ("Orchard", "Harbor", "Lantern", "Meridian", "Garden", "Cartographer", "Tide", "Bell",
        "Mirror", "Archive", "Compass", "Staircase", "Meadow", "Clockmaker", "Voyage", "Tower",
        "Chorus", "Atlas", "Weaver", "Sparrow")


def _a(word: str) -> str:
  return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def _pick(rng: random.Random, options: list[str], **kw) -> str:
  return rng.choice(options).format(**kw)


def person(rng: random.Random, e: Mapping, names: Mapping[str, str]) -> str:
  n, s = e["name"], e["name"].split()[-1]
  kw = dict(n=n, s=s, occ=e["occupation"], a_occ=_a(e["occupation"]), year=e["birth_year"], place=names[e["birthplace"]],
            org=names[e["employer"]])
  out = [_pick(rng, ["{n} (born {year}) is {a_occ} from {place}.",
                     "{n} is {a_occ} who was born in {place} in {year}.",
                     "{n} was born in {year} in {place} and became a noted {occ}.",
                     "Born in {place} in {year}, {n} is best known as {a_occ}."], **kw)]
  out.append(_pick(rng, ["{s} worked for the {org} for many years.",
                         "For most of a long career, {s} was employed by the {org}.",
                         "{s} later joined the {org}, where the rest of that career was spent.",
                         "The {org} employed {s} from early on."], **kw))
  for w in e.get("works", []):
    out.append(_pick(rng, ["Among the works of {s} is \"{w}\".",
                           "{s} is remembered for \"{w}\".",
                           "One of the best-known works by {s} is \"{w}\"."], s=s, w=names[w]))
  out.append(_pick(rng, ["Colleagues described {s} as patient and exacting.",
                         "Little is known of the early schooling of {s}.",
                         "{s} travelled widely before settling down.",
                         "Letters written by {s} survive in several archives."], **kw))
  return " ".join(out)


def place(rng: random.Random, e: Mapping, names: Mapping[str, str]) -> str:
  kw = dict(n=e["name"], year=e["founded"], pop=f"{e['population']:,}", river=e["river"])
  out = [_pick(rng, ["{n} is a town on the {river}.", "{n} is a settlement beside the {river}.",
                     "{n} is a market town that lies along the {river}."], **kw)]
  out.append(_pick(rng, ["It was founded in {year}.", "The town was founded in {year}.",
                         "Records show that {n} was founded in {year}."], **kw))
  out.append(_pick(rng, ["It has a population of {pop}.", "Its population is {pop}.",
                         "The latest census counted {pop} residents."], **kw))
  out.append(_pick(rng, ["The town is known for its covered markets.",
                         "A stone bridge crosses the river near the old quarter.",
                         "Fishing and weaving were its first trades."], **kw))
  return " ".join(out)


def org(rng: random.Random, e: Mapping, names: Mapping[str, str]) -> str:
  kw = dict(n=e["name"], year=e["founded"], founder=names[e["founder"]],
            hq=names[e["headquarters"]], field=e["field"])
  out = [_pick(rng, ["The {n} is an organisation devoted to {field}, founded in {year} by {founder}.",
                     "The {n} was founded by {founder} in {year} to advance {field}.",
                     "Founded in {year}, the {n} works in {field}; its founder was {founder}."],
               **kw)]
  out.append(_pick(rng, ["It is headquartered in {hq}.", "Its headquarters are in {hq}.",
                         "The {n} has its headquarters in {hq}."], **kw))
  out.append(_pick(rng, ["It publishes an annual report.", "Its library is open to visitors.",
                         "Membership is by invitation."], **kw))
  return " ".join(out)


def work(rng: random.Random, e: Mapping, names: Mapping[str, str]) -> str:
  kw = dict(n=e["name"], kind=e["form"], verb=e["verb"], creator=names[e["creator"]],
            year=e["year"])
  out = [_pick(rng, ["\"{n}\" is a {kind} by {creator}, completed in {year}.",
                     "\"{n}\" is a {kind} that {creator} {verb}; it was completed in {year}.",
                     "In {year}, {creator} completed \"{n}\", a {kind}."], **kw)]
  out.append(_pick(rng, ["Critics praised its unusual structure.",
                         "It was not widely known until decades later.",
                         "A revised edition appeared some years afterwards.",
                         "It remains the subject of scholarly debate."], **kw))
  return " ".join(out)


RENDER = {"person": person, "place": place, "org": org, "work": work}

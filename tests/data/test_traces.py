"""Trace encoding: loss mask is exactly the policy-written text; Search-R1's real trajectory; JSONL."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from masksearch_jax import tokenizer as tok_lib
from masksearch_jax.data import traces, world
from masksearch_jax.protocol import DEFAULT, Hit, format_observation

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
CASE = DATA / "searchr1" / "example_case.txt"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  cfg = world.WorldConfig(n_people=30, n_places=8, n_orgs=6, n_works=30, n_questions=10)
  texts = [p["text"] for p in world.render(world.generate(cfg))]
  return tok_lib.load(tok_lib.train_bpe(texts, tmp_path_factory.mktemp("tok"), vocab_size=1000))


def _hand_trace():
  obs = format_observation([Hit("1", "Ed Wood", "Ed Wood is a 1994 film.", 1.0),
                            Hit("2", "Tim Burton", "Tim Burton directed it.", 0.5)])
  response = ("<think>I should search.</think>\n<search> Ed Wood director </search>" + obs +
              "<think>Doc 2 says Tim Burton.</think>\n<answer> Tim Burton </answer>")
  return traces.Trace(traces.question_prompt("Who directed Ed Wood?"), response, ["Tim Burton"],
                      {"source": "hand"})


def _check(trace, tok, env_framing=True):
  tokens, mask = traces.encode(trace, tok, env_framing=env_framing)
  assert tokens.shape == mask.shape and tokens.dtype == np.int32 and set(np.unique(mask)) <= {0, 1}
  eos = tok_lib.eos_id(tok)
  # Masked-in tokens decode to the response without its information blocks, then <|im_end|>
  # (by default also without the "\n\n" framing the environment writes around each block).
  assert tokens[mask == 1][-1] == eos
  want = DEFAULT.strip_information(trace.response)
  if env_framing:
    want = trace.response
    for block in re.findall(r"<information>.*?</information>", trace.response, re.S):
      want = want.replace("\n\n" + block + "\n\n", "")
  assert tok.decode(tokens[mask == 1][:-1].tolist()) == want
  # The whole sequence is the chat template's rendering of the finished conversation.
  full = trace.messages() + [{"role": "assistant", "content": trace.response}]
  assert tok.decode(tokens.tolist()) == tok_lib.chat_text(tok, full, add_generation_prompt=False)
  # The prompt (up to and including "<|im_start|>assistant\n") is all zeros.
  prefix = tok_lib.chat_text(tok, trace.messages(), add_generation_prompt=True)
  n_prefix = len(tok_lib.encode(tok, prefix))
  assert not mask[:n_prefix].any() and mask[n_prefix]
  for tag, want in ((DEFAULT.info_open, 0), (DEFAULT.info_close, 0), (DEFAULT.search_open, 1),
                    (DEFAULT.answer_close, 1)):  # in the assistant turn (the prompt names tags too)
    where = tokens[n_prefix:] == tok_lib.token_id(tok, tag)
    assert where.any() or tag not in trace.response, tag
    assert (mask[n_prefix:][where] == want).all(), tag
  return tokens, mask


@pytest.mark.parametrize("env_framing", [True, False])
def test_hand_trace(tok, env_framing):
  t = _hand_trace()
  tokens, mask = _check(t, tok, env_framing)
  info = tok.decode(tokens[mask == 0].tolist())
  assert "Doc 1(Title: Ed Wood) Ed Wood is a 1994 film." in info
  assert "I should search" not in info
  # one <information> in the response, one in the prompt's instruction
  assert (tokens == tok_lib.token_id(tok, DEFAULT.info_open)).sum() == 2


def test_segments_hand_worked():
  r = "<search> q </search>\n\n<information>D</information>\n\n<answer> a </answer>"
  assert traces.segments(r) == [("<search> q </search>", True),
                                ("\n\n<information>D</information>\n\n", False),
                                ("<answer> a </answer>", True)]
  assert traces.segments(r, env_framing=False) == [
      ("<search> q </search>\n\n", True), ("<information>D</information>", False),
      ("\n\n<answer> a </answer>", True)]
  segs = traces.segments("<search> q </search>\n\n<information>Doc 1 trunc", env_framing=False)
  assert segs == [("<search> q </search>\n\n", True), ("<information>Doc 1 trunc", False)]
  assert traces.strip_observations(r) == "<search> q </search><answer> a </answer>"


def test_layout_matches_rollout_splicing(tok):
  """The sampler feeds format_observation(hits) as one tokenised piece after the model's text."""
  t = _hand_trace()
  tokens, _ = traces.encode(t, tok)
  head, rest = t.response.split("\n\n<information>", 1)
  obs_end = rest.index("</information>") + len("</information>\n\n")
  obs = "\n\n<information>" + rest[:obs_end]
  tail = rest[obs_end:]
  prefix = tok_lib.chat_text(tok, t.messages(), add_generation_prompt=True)
  rollout = (tok_lib.encode(tok, prefix) + tok_lib.encode(tok, head) + tok_lib.encode(tok, obs)
             + tok_lib.encode(tok, tail) + [tok_lib.eos_id(tok)] + tok_lib.encode(tok, "\n"))
  assert tokens.tolist() == rollout


def test_real_searchr1_trajectory(tok):
  if not CASE.exists():
    pytest.skip(f"shared data absent: {CASE}")
  ts = traces.parse_transcript(CASE.read_text())
  assert len(ts) == 2
  first = ts[0]
  assert first.messages()[0] == {"role": "system", "content": "You are a helpful assistant."}
  assert first.messages()[1]["content"].endswith("paul walkers cars in fast and furious list?\n")
  assert first.response.startswith("<think>I need to search for Paul Walker")
  assert first.response.endswith("<answer> Charger </answer>")
  assert first.response.count(DEFAULT.info_open) == 2
  assert DEFAULT.extract_answer(ts[1].response) == "sinoatrial (SA) node"
  for t, framing in zip(ts, (True, False)):
    tokens, mask = _check(t, tok, framing)
    n_info = (tokens == tok_lib.token_id(tok, DEFAULT.info_open)).sum()
    assert n_info == sum(m["content"].count(DEFAULT.info_open) for m in t.messages()) + \
        t.response.count(DEFAULT.info_open)
    assert mask.sum() < len(mask) / 2  # most of a Search-R1 trajectory is retrieved text


def test_jsonl_roundtrip_and_errors(tmp_path):
  t = _hand_trace()
  chat = traces.Trace([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}], "A")
  p = tmp_path / "t.jsonl"
  assert traces.write_jsonl(p, [t, chat]) == 2
  assert traces.read_jsonl(p) == [t, chat]
  p.write_text(json.dumps(t.to_json()) + "\n{not json\n")
  with pytest.raises(traces.TraceError, match=r"t.jsonl:2: invalid JSON"):
    traces.read_jsonl(p)
  p.write_text(json.dumps(t.to_json()) + "\n\n" + json.dumps({"prompt": "q"}) + "\n")
  with pytest.raises(traces.TraceError, match=r"t.jsonl:3: missing field 'response'"):
    traces.read_jsonl(p)
  p.write_text(json.dumps({"prompt": [{"role": "user"}], "response": "r"}) + "\n")
  with pytest.raises(traces.TraceError, match=r"t.jsonl:1: field 'prompt'"):
    traces.read_jsonl(p)

"""End-to-end tests of the rollout engine on a tiny float32 model (CPU)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from masksearch_jax import protocol as proto
from masksearch_jax.model import config, qwen2
from masksearch_jax.rollout import sampler as sampler_lib
from masksearch_jax.rollout import types as T
from tests.rollout import fixtures as fx

F32 = dict(compute_dtype=jnp.float32, cache_dtype=jnp.float32)


@pytest.fixture(scope="module")
def tok():
  return fx.tokenizer()


@pytest.fixture(scope="module")
def model(tok):
  cfg = config.get_config("tiny", vocab_size=len(tok))
  # std 0.1: logits spread enough that float noise never flips a greedy argmax.
  return cfg, fx.numpy_params(cfg, seed=1, std=0.1)


def _ids(tok, text):
  return tok.encode(text, add_special_tokens=False)


def _mesh_and_params(params):
  """data=2 x tensor=4 over the 8 forced CPU devices; MLP and q/o heads split over tensor."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "tensor"))
  specs = {"gate": P(None, None, "tensor"), "up": P(None, None, "tensor"),
           "down": P(None, "tensor", None), "q": P(None, None, "tensor", None),
           "q_bias": P(None, "tensor", None), "o": P(None, "tensor", None, None)}
  layers = {k: jax.device_put(v, NamedSharding(mesh, specs.get(k, P())))
            for k, v in params["layers"].items()}
  return mesh, dict(params, layers=layers)


@pytest.mark.parametrize("scan_layers,attn_impl", [(True, "xla"), (False, "xla"), (False, "pallas")])
def test_greedy_matches_transformers_generate_data_and_tensor_sharded(model, tok, scan_layers,
                                                                      attn_impl):
  """Greedy tokens equal transformers generate for prompts of different lengths in one batch,
  with rows over data=2 and the model over tensor=4 (one compile serves both checks); with the
  layer scan, the unrolled per-layer decode layout, and the Pallas decode-attention kernel."""
  torch = pytest.importorskip("torch")
  from tests.model import hf_reference
  if len(jax.devices()) < 8:
    pytest.skip("needs the 8 forced CPU devices of tests/conftest.py")
  cfg, params = model
  mesh, sharded = _mesh_and_params(params)
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(10, cfg.vocab_size, n)) for n in (3, 9, 14, 6)]
  new = 12
  rcfg = T.RolloutConfig(max_len=48, max_new_tokens=new, prompt_buckets=(16, 32), chunk_steps=5,
                         use_tools=False)
  s = sampler_lib.Sampler(cfg, tok, T.SamplingConfig(temperature=0.0), rcfg, mesh=mesh,
                          scan_layers=scan_layers, attn_impl=attn_impl, **F32)
  out = s.generate(sharded, prompts)
  assert out.finish_reason == [T.LENGTH] * 4

  hf = hf_reference.hf_model(params, cfg)
  width = max(len(p) for p in prompts)
  ids = np.zeros((4, width), np.int64)
  att = np.zeros((4, width), np.int64)
  for i, p in enumerate(prompts):                      # HF generate wants left padding
    ids[i, width - len(p):], att[i, width - len(p):] = p, 1
  with torch.no_grad():
    ref = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(att), do_sample=False,
                      max_new_tokens=new, min_new_tokens=new, pad_token_id=0).numpy()[:, width:]
  for i, p in enumerate(prompts):
    got = out.tokens[i, len(p):out.lengths[i]]
    np.testing.assert_array_equal(got, ref[i], err_msg=f"row {i} (prompt length {len(p)})")
    np.testing.assert_array_equal(out.tokens[i, :len(p)], p)
    assert out.loss_mask[i].sum() == new and out.loss_mask[i, len(p):len(p) + new].all()

  # The state really is split by rows over the data axis (2 rows per shard).
  state, _ = s.start(sharded, prompts)
  k = state["cache"]["k"]
  if scan_layers:                                        # [L, B, S, K, Dh]
    assert k.sharding.shard_shape(k.shape)[1] == 2
  else:                                                  # per layer [B, S, K, Dh]
    assert len(k) == cfg.num_layers and k[0].sharding.shard_shape(k[0].shape)[0] == 2
  assert state["tokens"].sharding.shard_shape(state["tokens"].shape)[0] == 2
  with pytest.raises(ValueError, match="divide"):
    s.generate(sharded, prompts[:3])


def _script(tok, rows: list[list], width: int) -> np.ndarray:
  """rows: per row a list of (text | int count of free tokens); -> [B, width] forced ids / -1."""
  out = np.full((len(rows), width), -1, np.int64)
  for b, parts in enumerate(rows):
    n = 0
    for part in parts:
      if isinstance(part, int):
        n += part
      else:
        ids = _ids(tok, part)
        out[b, n:n + len(ids)] = ids
        n += len(ids)
  return out


def _forced(script, mask_row):
  """Bool per slot: policy slot whose token the script forced."""
  n = np.cumsum(mask_row) - 1                           # policy index of each policy slot
  idx = np.clip(n, 0, script.shape[0] - 1)
  return (mask_row == 1) & (n < script.shape[0]) & (script[idx] >= 0)


@pytest.mark.parametrize("device_stops,chunk,pause,scan,k", [(True, 7, 0.3, True, 1),
                                                            (False, 5, 0.0, False, 1),
                                                            (True, 8, 0.3, False, 4)])
def test_multi_turn_matches_teacher_forced(model, tok, device_stops, chunk, pause, scan, k):
  cfg, params = model
  temp = 0.8
  script = _script(tok, [["<search> capital </search>", 4, "<search> the river </search>"],
                         [],
                         [3, "<search> alpha </search>"]], 40)
  rcfg = T.RolloutConfig(max_len=112, max_new_tokens=90, prompt_buckets=(16,), chunk_steps=chunk,
                         max_tool_tokens=24, top_k_docs=2, max_turns=3, pause_exit_fraction=pause,
                         steps_per_check=k)
  ret = fx.FakeRetriever()
  s = sampler_lib.Sampler(cfg, tok, T.SamplingConfig(temperature=temp), rcfg, retriever=ret,
                          logits_hook=fx.script_hook(script), device_stops=device_stops,
                          scan_layers=scan, **F32)
  out = s.generate(params, ["who wrote the book", "the capital of", "alpha beta"], seed=3)
  assert out.num_searches[0] == 2 and out.num_searches[2] >= 1
  assert out.queries[0] == ["capital", "the river"]
  assert out.queries[2][0] == "alpha"
  assert ret.calls[0] == ["capital", "alpha"] or ["capital"] in ret.calls

  # Teacher forcing: one plain forward over the final (right-padded) sequences, no cache.
  seg = (np.arange(out.tokens.shape[1])[None] < out.lengths[:, None]).astype(np.int32)
  logits, _ = jax.jit(lambda p, x, s: qwen2.apply(p, cfg, x, segment_ids=s,
                                                  compute_dtype=jnp.float32))(params, out.tokens, seg)
  lps = np.asarray(jax.nn.log_softmax(logits / temp, axis=-1))
  checked = 0
  for b in range(3):
    n = out.lengths[b]
    toks, lp = out.tokens[b, :n], lps[b]
    mask = out.loss_mask[b, :n]
    forced = _forced(script[b], mask)
    for t in np.flatnonzero(mask):
      if forced[t]:
        assert out.logprobs[b, t] == pytest.approx(0.0, abs=1e-6)
        continue
      assert out.logprobs[b, t] == pytest.approx(lp[t - 1, toks[t]], abs=2e-4), (b, t)
      checked += 1
    # Everything past the prompt that the policy did not write is an observation block.
    obs = (mask == 0) & (np.arange(n) >= out.prompt_lengths[b])
    assert obs.sum() > 0 or out.num_searches[b] + out.num_tool_errors[b] == 0
  assert checked > 40
  # Spliced rows kept sampling after their observations (with the model's own log-probs).
  tail = out.loss_mask[0, :out.lengths[0]]
  last_obs = np.flatnonzero(tail == 0)[-1]
  assert tail[last_obs + 1:].sum() > 0


def test_steps_per_check_gives_identical_rollouts(model, tok):
  """k decode steps per stop test (fixed-count inner loop) changes when chunks end, never what a
  row generates: same tokens, log-probs, masks, searches and finish reasons as k = 1."""
  cfg, params = model
  script = _script(tok, [["<search> capital </search>", 4, "<search> the river </search>"],
                         [2, "<answer> paris </answer>"], [3, "<search> alpha </search>"]], 40)
  outs = []
  for k in (1, 4):
    rcfg = T.RolloutConfig(max_len=112, max_new_tokens=90, prompt_buckets=(16,), chunk_steps=12,
                           max_tool_tokens=24, top_k_docs=2, max_turns=3, steps_per_check=k,
                           eos_ids=(fx.tid(fx.EOS),))
    s = sampler_lib.Sampler(cfg, tok, T.SamplingConfig(temperature=0.8), rcfg,
                            retriever=fx.FakeRetriever(), logits_hook=fx.script_hook(script),
                            scan_layers=False, **F32)
    outs.append(s.generate(params, ["who wrote the book", "the capital of", "alpha beta"], seed=5))
  a, b = outs
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.loss_mask, b.loss_mask)
  np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-6)
  assert list(a.finish_reason) == list(b.finish_reason) and a.queries == b.queries
  assert list(a.num_searches) == list(b.num_searches) and a.num_searches[0] == 2


def test_single_prompt_as_two_rows_is_identical(model, tok):
  """pad_single_row runs one prompt as two rows (the second dead from the start): the rollout of
  the real row — searches, splices, sampled tokens, log-probs — is the unpadded one, and the
  output has one row."""
  cfg, params = model
  parts = [["<search> capital </search>", 3, "<search> the river </search>", 2,
            "<answer> paris </answer>"]]
  outs = []
  for pad in (False, True):
    script = _script(tok, parts * (2 if pad else 1), 48)
    rcfg = T.RolloutConfig(max_len=112, max_new_tokens=90, prompt_buckets=(16,), chunk_steps=12,
                           max_tool_tokens=24, top_k_docs=2, max_turns=3, eos_ids=(fx.tid(fx.EOS),))
    ret = fx.FakeRetriever()
    s = sampler_lib.Sampler(cfg, tok, T.SamplingConfig(temperature=0.8), rcfg, retriever=ret,
                            logits_hook=fx.script_hook(script), scan_layers=False,
                            pad_single_row=pad, **F32)
    state, _ = s.start(params, ["who wrote the book"])
    assert state["length"].shape[0] == (2 if pad else 1)
    outs.append((s.generate(params, ["who wrote the book"], seed=3), ret.calls))
  (a, calls_a), (b, calls_b) = outs
  assert a.tokens.shape == b.tokens.shape and a.tokens.shape[0] == 1
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.loss_mask, b.loss_mask)
  np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-6)
  assert a.queries == b.queries == [["capital", "the river"]] and calls_a == calls_b
  assert list(a.finish_reason) == list(b.finish_reason) == [T.ANSWER]


class _CompileCounter:
  """Counts XLA backend compilations while active (jax.monitoring duration events)."""
  EVENT = "/jax/core/compile/backend_compile_duration"

  def __init__(self):
    self.n = 0

  def _cb(self, name, *_a, **_k):
    if name == self.EVENT:
      self.n += 1

  def __enter__(self):
    jax.monitoring.register_event_duration_secs_listener(self._cb)
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self._cb)


FILLER = " alpha beta gamma delta" * 30
CASES = [  # (prompt, script parts, expected finish reason)
    ("who wrote the book", ["<search> capital of france </search>", "<answer> paris </answer>"], T.ANSWER),
    ("the capital", ["<search> the river </search>", "<answer> rome </answer>"], T.ANSWER),
    ("alpha", ["<search> </search>", "<answer> x </answer>"], T.ANSWER),              # empty query
    ("beta gamma", ["<search> x <answer> y </search>"], T.MALFORMED),           # tag in query
    ("delta", ["<search> alpha beta" + FILLER], T.MALFORMED),                   # never closed
    ("the old town", [[197], " a", fx.EOS], T.EOS),                             # byte 0xff
    ("river", ["<search> a </search>", "<search> b </search>"], T.MAX_TURNS),
    ("kappa", ["the </search>"], T.MALFORMED),                                  # close, no open
    ("lambda", ["kappa lambda" + FILLER], T.STOP),                             # text-only stop
    ("iota", ["the </answer>"], T.MALFORMED),                                   # close, no open
]


def _script_ids(tok, parts_per_row, width):
  out = np.full((len(parts_per_row), width), -1, np.int64)
  for b, parts in enumerate(parts_per_row):
    ids = []
    for part in parts:
      ids += list(part) if isinstance(part, list) else _ids(tok, part)
    out[b, :min(len(ids), width)] = ids[:width]
  return out


@pytest.fixture(scope="module")
def scripted(model, tok):
  """One compiled sampler (scripted rows of CASES) shared by the protocol tests."""
  cfg, _ = model
  script = _script_ids(tok, [c[1] for c in CASES], 128)
  rcfg = T.RolloutConfig(max_len=160, max_new_tokens=120, prompt_buckets=(8, 16), chunk_steps=16,
                         eos_ids=(fx.tid(fx.EOS),), stop_strings=("pa la",), max_turns=1,
                         max_tool_tokens=64, top_k_docs=2, retriever_timeout_s=0.3)
  return sampler_lib.Sampler(cfg, tok, T.SamplingConfig(temperature=0.0), rcfg,
                             retriever=fx.FakeRetriever(), logits_hook=fx.script_hook(script), **F32)


def test_scripted_search_calls_and_malformed_rules(model, tok, scripted):
  _, params = model
  s = scripted
  s.retriever = ret = fx.FakeRetriever()
  prompts = [c[0] for c in CASES]
  out = s.generate(params, prompts)
  assert out.finish_reason == [c[2] for c in CASES]

  # One retriever call per round, with every paused row's query.
  assert ret.calls[0] == ["capital of france", "the river", "a"]
  assert out.queries[:3] == [["capital of france"], ["the river"], []]
  np.testing.assert_array_equal(out.num_searches, [1, 1, 0, 0, 0, 0, 1, 0, 0, 0])
  np.testing.assert_array_equal(out.num_tool_errors, [0, 0, 1, 0, 0, 0, 0, 0, 0, 0])

  # Row 0: prompt | policy search call | observation (mask 0) | policy answer.
  p0 = len(_ids(tok, prompts[0]))
  call = _ids(tok, "<search> capital of france </search>")
  hits = ret.search(["capital of france"], 2)[0]
  obs = _ids(tok, proto.format_observation(hits))
  answer = _ids(tok, "<answer> paris </answer>")
  want = _ids(tok, prompts[0]) + call + obs + answer
  assert out.lengths[0] == len(want)
  np.testing.assert_array_equal(out.tokens[0, :len(want)], want)
  np.testing.assert_array_equal(out.loss_mask[0, :len(want)],
                                [0] * p0 + [1] * len(call) + [0] * len(obs) + [1] * len(answer))
  assert out.texts[0] == "<search> capital of france </search>" + proto.format_observation(hits) \
      + "<answer> paris </answer>"
  assert "Search failed: empty query" in out.texts[2]
  assert "\ufffd" in out.texts[5]
  # Text-only stop ("pa la" standalone is pa,Ġ,l,a; in context pa,Ġ,l,am): rolled back to "am".
  assert out.texts[8] == "kappa lam"
  assert out.loss_mask[8].sum() == 6
  # Unclosed search ran to the budget.
  assert out.lengths[4] == len(_ids(tok, prompts[4])) + 120

  # Same config, other prompts (same buckets) and seed: nothing compiles again.
  with _CompileCounter() as cc:
    again = s.generate(params, prompts[::-1], seed=7)
  assert cc.n == 0
  assert again.finish_reason == [c[2] for c in CASES]        # the script is per row


def test_retriever_error_and_timeout_are_observations(model, scripted):
  _, params = model
  s = scripted
  prompts = [c[0] for c in CASES]
  for ret, msg in [(fx.FakeRetriever(fail=True), "Search failed: RuntimeError: index offline"),
                   (fx.FakeRetriever(delay_s=2.0), "Search failed: retriever timed out after 0.3s")]:
    s.retriever = ret
    out = s.generate(params, prompts)
    assert out.finish_reason == [c[2] for c in CASES]       # failures never end a rollout
    assert len(ret.calls) == 1
    np.testing.assert_array_equal(out.num_searches, [0] * 10)
    np.testing.assert_array_equal(out.num_tool_errors, [1, 1, 1, 0, 0, 0, 1, 0, 0, 0])
    for i in (0, 1, 6):
      assert msg in out.texts[i]


def test_search_call_at_the_length_limit_ends_without_a_search(model, tok):
  """A call that closes exactly at the row's limit leaves no room for an observation: the row
  ends LENGTH, the retriever is not asked, no search is counted; a row with room still
  searches (its observation truncated to the limit)."""
  cfg, params = model
  long_call, short_call = "<search> capital of france </search>", "<search> a </search>"
  n = len(_ids(tok, long_call))
  assert len(_ids(tok, short_call)) < n
  script = _script_ids(tok, [[long_call], [short_call, "<answer> x </answer>"]], 64)
  rcfg = T.RolloutConfig(max_len=64, max_new_tokens=n, prompt_buckets=(8,), chunk_steps=8,
                         eos_ids=(fx.tid(fx.EOS),), max_turns=2, max_tool_tokens=64, top_k_docs=2)
  ret = fx.FakeRetriever()
  s = sampler_lib.Sampler(cfg, tok, T.SamplingConfig(temperature=0.0), rcfg, retriever=ret,
                          logits_hook=fx.script_hook(script), scan_layers=False, **F32)
  prompts = ["who wrote the book", "the capital"]
  out = s.generate(params, prompts)
  assert out.finish_reason == [T.LENGTH, T.LENGTH]
  assert ret.calls == [["a"]]
  assert out.queries == [[], ["a"]]
  np.testing.assert_array_equal(out.num_searches, [0, 1])
  np.testing.assert_array_equal(out.num_tool_errors, [0, 0])
  for i, p in enumerate(prompts):
    assert out.lengths[i] == len(_ids(tok, p)) + n              # nothing past the limit
  assert out.texts[0] == long_call
  assert out.texts[1].startswith(short_call + "\n\n<information>")


def test_multi_turn_rollout_is_the_same_sharded(model, tok):
  """Searches, splices and per-row pauses over data=2 x tensor=4 give the unsharded rollout:
  tokens, loss mask, log-probs, queries and finish reasons (the RL path on several devices)."""
  if len(jax.devices()) < 8:
    pytest.skip("needs the 8 forced CPU devices of tests/conftest.py")
  cfg, params = model
  mesh, sharded = _mesh_and_params(params)
  rows = [["<search> capital of france </search>", 6, "<answer> paris </answer>"],
          [4, "<search> the river </search>", "<answer> rome </answer>"],
          ["<answer> x </answer>"],
          [5, "<search> a </search>", 3, "<search> b </search>", 2, "<answer> y </answer>"]]
  script = _script(tok, rows, 96)
  rcfg = T.RolloutConfig(max_len=128, max_new_tokens=96, prompt_buckets=(16,), chunk_steps=6,
                         eos_ids=(fx.tid(fx.EOS),), max_turns=2, max_tool_tokens=24, top_k_docs=2)
  prompts = ["who wrote the book", "the capital", "alpha", "the old town river"]
  outs, calls = [], []
  for m, p in ((None, params), (mesh, sharded)):
    ret = fx.FakeRetriever()
    s = sampler_lib.Sampler(cfg, tok, T.SamplingConfig(temperature=0.0), rcfg, retriever=ret,
                            logits_hook=fx.script_hook(script), mesh=m, scan_layers=False, **F32)
    outs.append(s.generate(p, prompts))
    calls.append(ret.calls)
  a, b = outs
  assert a.finish_reason == b.finish_reason == [T.ANSWER] * 4
  assert a.queries == b.queries == [["capital of france"], ["the river"], [], ["a", "b"]]
  assert calls[0] == calls[1] and len(calls[0]) >= 2               # rows paused in rounds
  np.testing.assert_array_equal(a.lengths, b.lengths)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.loss_mask, b.loss_mask)
  np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
  np.testing.assert_array_equal(a.num_searches, [1, 1, 0, 2])
  slot = np.arange(a.tokens.shape[1])
  for i, p in enumerate(prompts):                  # spliced observation tokens carry mask 0
    after_prompt = (slot >= len(_ids(tok, p))) & (slot < a.lengths[i])
    assert ((a.loss_mask[i] == 0) & after_prompt).any() == (i != 2)


def test_warmup_compiles_every_shape_up_front(model, tok):
  """After warmup(batch) no generate() of that batch compiles, whatever the prompt bucket and the
  splice width; without it the same calls compile (so the check can fail)."""
  cfg, params = model
  rows = [["<search> capital of france </search>", "<answer> paris </answer>"],
          ["<answer> x </answer>"]]
  script = _script(tok, rows, 64)
  rcfg = T.RolloutConfig(max_len=96, max_new_tokens=24, prompt_buckets=(8, 16), chunk_steps=6,
                         eos_ids=(fx.tid(fx.EOS),), max_turns=1, max_tool_tokens=40, top_k_docs=2)

  def make():
    return sampler_lib.Sampler(cfg, tok, T.SamplingConfig(temperature=0.0), rcfg,
                               retriever=fx.FakeRetriever(), logits_hook=fx.script_hook(script),
                               scan_layers=False, **F32)

  short, long_ = ["who wrote", "alpha"], [" ".join(["the old town river"] * 5), "alpha"]
  assert rcfg.prompt_bucket(len(_ids(tok, long_[0]))) == 96 > rcfg.prompt_bucket(2)
  warm = make()
  assert warm.warmup(params, 2) == 3 + 2 + len(rcfg.tool_buckets())   # buckets 8, 16, 96
  cold = make()
  for prompts in (short, long_):
    with _CompileCounter() as cc:
      out = warm.generate(params, prompts)
    assert cc.n == 0 and out.num_searches[0] == 1 and out.finish_reason[1] == T.ANSWER
    with _CompileCounter() as cc:
      cold.generate(params, prompts)
    assert cc.n > 0


@pytest.mark.parametrize("pause", [0.0, 0.25])
def test_overlapped_retrieval_gives_the_same_rollouts(model, tok, pause):
  """overlap_retrieval runs a round's search while the other rows decode and splices one chunk
  later; rows are independent, so tokens, mask, log-probs, queries and finish reasons equal the
  synchronous loop's (sampled, several rounds, rows searching at different times)."""
  import dataclasses
  cfg, params = model
  rows = [["<search> capital of france </search>", 6, "<answer> paris </answer>"],
          [2, "<search> the river </search>", 1, "<search> b </search>", "<answer> r </answer>"],
          ["<answer> x </answer>"],
          [3, "<search> a </search>", 8, "<answer> y </answer>"]]
  script = _script(tok, rows, 96)
  base = T.RolloutConfig(max_len=160, max_new_tokens=120, prompt_buckets=(16,), chunk_steps=5,
                         pause_exit_fraction=pause, eos_ids=(fx.tid(fx.EOS),), max_turns=2,
                         max_tool_tokens=24, top_k_docs=2)
  prompts = ["who wrote the book", "the capital", "alpha", "the old town river"]
  outs, calls = [], []
  for overlap in (False, True):
    ret = fx.FakeRetriever(delay_s=0.05)
    s = sampler_lib.Sampler(cfg, tok, T.SamplingConfig(temperature=0.8),
                            dataclasses.replace(base, overlap_retrieval=overlap), retriever=ret,
                            logits_hook=fx.script_hook(script), scan_layers=False, **F32)
    outs.append(s.generate(params, prompts, seed=5))
    calls.append(sorted(q for c in ret.calls for q in c))
  a, b = outs
  assert a.finish_reason == b.finish_reason, (a.finish_reason, b.finish_reason)
  assert a.queries == b.queries, (a.queries, b.queries)
  assert calls[0] == calls[1]
  np.testing.assert_array_equal(a.lengths, b.lengths)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.loss_mask, b.loss_mask)
  np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
  np.testing.assert_array_equal(a.num_searches, b.num_searches)
  assert a.queries == [["capital of france"], ["the river", "b"], [], ["a"]]
  assert a.stats["rounds"] == b.stats["rounds"] >= 2


def test_unaligned_max_len_still_decodes_with_the_pallas_kernel(model, tok, monkeypatch):
  """max_len 57 is no multiple of a key block; the cache is rounded up (kv_cache.aligned_length),
  so the one-kernel decode attention still runs (it did not at 1144 in session 24's benchmark,
  which then fell back to cuDNN's one-token kernel) and the rollout equals XLA attention's."""
  from masksearch_jax.model import decode_attention, kv_cache
  cfg, params = model
  calls = []
  real = decode_attention.decode_attend_write
  monkeypatch.setattr(decode_attention, "decode_attend_write",
                      lambda *a, **k: calls.append(1) or real(*a, **k))
  rcfg = T.RolloutConfig(max_len=57, max_new_tokens=20, prompt_buckets=(16,), chunk_steps=5,
                         use_tools=False)
  prompts = ["who wrote the book", "alpha beta"]
  outs = {}
  for impl in ("xla", "pallas"):
    s = sampler_lib.Sampler(cfg, tok, T.SamplingConfig(temperature=0.0), rcfg, scan_layers=False,
                            attn_impl=impl, **F32)
    outs[impl] = s.generate(params, prompts)
  state, _ = s.start(params, prompts)
  assert state["cache"]["k"][0].shape[1] == kv_cache.aligned_length(57) == 128
  assert state["tokens"].shape[1] == 57                 # the token buffer keeps max_len
  assert calls, "the Pallas decode kernel never ran"
  np.testing.assert_array_equal(outs["pallas"].tokens, outs["xla"].tokens)
  np.testing.assert_allclose(outs["pallas"].logprobs, outs["xla"].logprobs, atol=1e-4)
  assert outs["pallas"].finish_reason == [T.LENGTH] * 2

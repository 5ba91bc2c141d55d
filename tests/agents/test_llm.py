"""The Generator backends: OpenAI-compatible HTTP (against a local stub) and our sampler."""
import pytest

from masksearch_jax.agents import llm
from tests.agents import chat_server


def test_openai_request_and_reply(tmp_path):
  def reply(body, n):
    user = body["messages"][-1]["content"]
    return 200, chat_server.completion(f"echo {user} STOP tail"), 0.0

  with chat_server.serve(reply) as (url, reqs):
    gen = llm.OpenAIGenerator(url + "/v1", model="m", api_key="k", system="sys", workers=3)
    out = gen.generate(["a", "b", "c"], max_new_tokens=7, temperature=0.5, stop=["STOP"])
  assert out == ["echo a ", "echo b ", "echo c "]      # cut before the stop string, in order
  path, headers, body = reqs[0]
  assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer k"
  assert body["model"] == "m" and body["max_tokens"] == 7 and body["temperature"] == 0.5
  assert body["stop"] == ["STOP"] and body["messages"][0] == {"role": "system", "content": "sys"}
  assert sorted(r[2]["messages"][-1]["content"] for r in reqs) == ["a", "b", "c"]


def test_openai_url_forms():
  assert llm.OpenAIGenerator("http://h:1").url == "http://h:1/v1/chat/completions"
  assert llm.OpenAIGenerator("http://h:1/v1/").url == "http://h:1/v1/chat/completions"
  with pytest.raises(ValueError, match="http"):
    llm.OpenAIGenerator("h:1")


def test_openai_retries_transient_errors_then_succeeds():
  script = [(503, {"error": "busy"}, 0.0), (200, b"not json", 0.0),
            (200, chat_server.completion("ok"), 0.0)]
  with chat_server.serve(lambda body, n: script[n]) as (url, reqs):
    gen = llm.OpenAIGenerator(url, max_retries=2, backoff_s=0.01, workers=1)
    assert gen.generate(["q"]) == ["ok"]
  assert len(reqs) == 3


def test_openai_client_error_fails_at_once_with_the_reason():
  with chat_server.serve(lambda body, n: (400, {"error": "context too long"}, 0.0)) as (url, reqs):
    gen = llm.OpenAIGenerator(url, max_retries=3, backoff_s=0.01)
    with pytest.raises(llm.GenerationError, match="HTTP 400.*context too long"):
      gen.generate(["q"])
  assert len(reqs) == 1


def test_openai_timeout_is_bounded():
  with chat_server.serve(lambda body, n: (200, chat_server.completion("late"), 1.0)) as (url, reqs):
    gen = llm.OpenAIGenerator(url, timeout_s=0.2, max_retries=1, backoff_s=0.01)
    with pytest.raises(llm.GenerationError, match="gave up after 2 attempts"):
      gen.generate(["q"])
  assert len(reqs) == 2


def test_unreachable_endpoint_names_the_url():
  gen = llm.OpenAIGenerator("http://127.0.0.1:9", max_retries=0, timeout_s=2)
  with pytest.raises(llm.GenerationError, match="127.0.0.1:9"):
    gen.generate(["q"])


def test_make_generator_specs():
  g = llm.make_generator("openai:http://127.0.0.1:8000/v1", model="qwen")
  assert isinstance(g, llm.OpenAIGenerator) and g.model == "qwen"
  assert isinstance(g, llm.Generator)
  for bad in ("hf", "gpt:http://x", "openai:"):
    with pytest.raises(ValueError, match="generator spec"):
      llm.make_generator(bad)


def test_cut_at_stop():
  assert llm.cut_at_stop("a QUERY b ANSWER c", ["ANSWER", "QUERY"]) == "a "
  assert llm.cut_at_stop("abc", ["", "x"]) == "abc"


def test_sampler_generator_scripted_tokens():
  """A tiny model whose logits are forced to spell a reply: the backend returns it, cut at the
  stop string, for every row of a batch padded to the generator's batch size."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from masksearch_jax.model import config, qwen2
  from tests.rollout import fixtures as fx
  tok = fx.tokenizer()
  cfg = config.get_config("tiny", vocab_size=len(tok))
  # Random weights without compiling an init function (the hook decides every token anyway).
  shapes = jax.eval_shape(lambda: qwen2.init_params(cfg, jax.random.PRNGKey(0)))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.1, s.shape), s.dtype), shapes)
  ids = tok.encode("the answer is paris . the end", add_special_tokens=False)
  script = np.asarray([ids + [fx.tid(fx.EOS)]] * 2)
  gen = llm.SamplerGenerator(cfg, params, tok, max_len=64, batch_size=2,
                             compute_dtype="float32", logits_hook=fx.script_hook(script))
  assert not gen.chat_template                     # the fixture tokenizer has no chat template
  out = gen.generate(["who", "what"], max_new_tokens=20, stop=[" the end"])
  assert out == ["the answer is paris ."] * 2
  out = gen.generate(["who"], max_new_tokens=20, stop=[" the end"])   # padded to the batch of 2
  assert out == ["the answer is paris ."]
  long = " ".join(["alpha beta gamma"] * 30)        # > max_len - max_new_tokens tokens
  assert gen.generate([long, "who"], max_new_tokens=20, stop=[" the end"]) == [
      "", "the answer is paris ."]
  assert len(gen._samplers) == 1                   # same settings: one sampler, one compile

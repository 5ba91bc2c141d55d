"""Tokenizers: load any HF tokenizer directory, or train the embedded world's small byte-level BPE.

The trained tokenizer copies Qwen2's text pipeline (NFC, Qwen's split regex, byte-level BPE) and
chat format (`<|im_start|>role\\n…<|im_end|>\\n`), so everything downstream — chat template, stop
ids, trace loss masks — runs unchanged on a real Qwen2.5 checkpoint's tokenizer.

Protocol tags and `[mask]` are *atomic* added tokens but not "special": `decode(...,
skip_special_tokens=True)` keeps them, because rewards and the viewer parse them from decoded text.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from masksearch_jax.protocol import DEFAULT, Protocol

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHAT_SPECIALS = (ENDOFTEXT, IM_START, IM_END)
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# Qwen2's pre-tokenizer regex (from its tokenizer.json).
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
              r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Qwen2.5's chat template without the tool-call branches (tools go through our tag protocol).
QWEN_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + QWEN_DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


def atomic_tokens(protocol: Protocol = DEFAULT, extra: Sequence[str] = ("[mask]",)) -> list[str]:
  return list(protocol.all_tags) + list(extra)


def train_bpe(texts: Iterable[str], out_dir: str | Path, *, vocab_size: int = 3000,
              protocol: Protocol = DEFAULT, extra_tokens: Sequence[str] = ("[mask]",),
              model_max_length: int = 32768) -> Path:
  """Trains a byte-level BPE on `texts` and saves tokenizer.json + tokenizer_config.json (HF)."""
  from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                          pre_tokenizers, processors, trainers)
  tok = Tokenizer(models.BPE())
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(trim_offsets=False)
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(CHAT_SPECIALS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(texts, trainer)
  tok.add_tokens([AddedToken(t, special=False, normalized=False)
                  for t in atomic_tokens(protocol, extra_tokens)])
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  tok.save(str(out / "tokenizer.json"))
  config = {"tokenizer_class": "Qwen2Tokenizer", "model_max_length": model_max_length,
            "eos_token": IM_END, "pad_token": ENDOFTEXT, "bos_token": None, "unk_token": None,
            "add_prefix_space": False, "clean_up_tokenization_spaces": False,
            "split_special_tokens": False, "errors": "replace", "chat_template": QWEN_CHAT_TEMPLATE}
  (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1, ensure_ascii=False))
  return out


def load(path: str | Path):
  """`AutoTokenizer.from_pretrained` on a local directory (a Qwen checkpoint or `train_bpe` output);
  never touches the network."""
  from transformers import AutoTokenizer
  path = Path(path)
  if not (path / "tokenizer.json").exists() and not (path / "vocab.json").exists():
    raise FileNotFoundError(f"no tokenizer.json or vocab.json in {path}")
  return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def token_id(tok, token: str) -> int:
  i = tok.convert_tokens_to_ids(token)
  if i is None or i == getattr(tok, "unk_token_id", None):
    raise KeyError(f"token {token!r} is not in the vocabulary")
  return int(i)


def eos_id(tok) -> int:
  """End of an assistant turn: `<|im_end|>` when present (Qwen base models name <|endoftext|>)."""
  try:
    return token_id(tok, IM_END)
  except KeyError:
    return int(tok.eos_token_id)


def pad_id(tok) -> int:
  if tok.pad_token_id is not None:
    return int(tok.pad_token_id)
  return token_id(tok, ENDOFTEXT)


def stop_ids(tok) -> list[int]:
  """Ids that end generation: `<|im_end|>` and `<|endoftext|>` when present."""
  out = []
  for t in (IM_END, ENDOFTEXT):
    try:
      out.append(token_id(tok, t))
    except KeyError:
      pass
  return sorted(set(out)) or [int(tok.eos_token_id)]


def encode(tok, text: str) -> list[int]:
  """Text -> ids with no BOS/EOS added (the chat template writes every marker itself)."""
  return list(tok.encode(text, add_special_tokens=False))


def chat_text(tok, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
  """The rendered chat template as text."""
  out = tok.apply_chat_template([dict(m) for m in messages], tokenize=False,
                                add_generation_prompt=add_generation_prompt)
  if not isinstance(out, str):
    raise TypeError(f"chat template returned {type(out).__name__}, expected str")
  return out

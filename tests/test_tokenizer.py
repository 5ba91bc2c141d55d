"""The world tokenizer: trained BPE loads through AutoTokenizer with Qwen's chat format."""
import json

import pytest

from masksearch_jax import tokenizer as tok_lib
from masksearch_jax.data import world
from masksearch_jax.protocol import DEFAULT

SMALL = world.WorldConfig(n_people=30, n_places=8, n_orgs=6, n_works=30, n_questions=50)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
  corpus = world.render(world.generate(SMALL))
  out = tmp_path_factory.mktemp("tok")
  return tok_lib.train_bpe([p["text"] for p in corpus], out, vocab_size=1200)


@pytest.fixture(scope="module")
def tok(tok_dir):
  return tok_lib.load(tok_dir)


def test_files_and_vocab(tok_dir, tok):
  assert (tok_dir / "tokenizer.json").exists() and (tok_dir / "tokenizer_config.json").exists()
  n_atomic = len(tok_lib.atomic_tokens())
  assert 300 < len(tok) <= 1200 + n_atomic
  from tokenizers import Tokenizer  # the raw file loads without transformers too
  raw = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
  assert raw.get_vocab_size() == len(tok)


def test_tags_and_chat_tokens_are_single_ids(tok):
  for t in list(DEFAULT.all_tags) + ["[mask]", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]:
    ids = tok_lib.encode(tok, t)
    assert len(ids) == 1, (t, ids)
    assert tok.convert_ids_to_tokens(ids[0]) == t
  ids = tok_lib.encode(tok, "x<search>q</search>y")
  assert tok_lib.token_id(tok, "<search>") in ids and tok_lib.token_id(tok, "</search>") in ids


def test_special_ids(tok):
  assert tok_lib.eos_id(tok) == tok.convert_tokens_to_ids("<|im_end|>")
  assert tok_lib.pad_id(tok) == tok.convert_tokens_to_ids("<|endoftext|>")
  assert tok_lib.stop_ids(tok) == sorted({tok_lib.eos_id(tok), tok_lib.pad_id(tok)})
  with pytest.raises(KeyError):
    tok_lib.token_id(tok, "<never-added>")


@pytest.mark.parametrize("text", [
    "Nevelebel Crossing was founded in 1027.",
    "  leading spaces, tabs\tand\nnewlines\n\n",
    "<think>plan</think>\n<search> who wrote it? </search>\n\n<answer> Zoë 12,400 </answer>",
    "unseen words: quixotic zephyr 漢字 🙂",
])
def test_roundtrip(tok, text):
  ids = tok_lib.encode(tok, text)
  assert tok.decode(ids) == text
  assert tok.decode(ids, skip_special_tokens=True) == text  # protocol tags are not skipped


def test_chat_template_is_qwen_format(tok):
  msgs = [{"role": "user", "content": "Q?"}]
  assert tok_lib.chat_text(tok, msgs, add_generation_prompt=True) == (
      "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
      "<|im_end|>\n<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n")
  msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
          {"role": "assistant", "content": "A"}]
  assert tok_lib.chat_text(tok, msgs, add_generation_prompt=False) == (
      "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"
      "<|im_start|>assistant\nA<|im_end|>\n")


def test_load_errors_clearly(tmp_path):
  with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
    tok_lib.load(tmp_path)


def test_config_is_hf_readable(tok_dir):
  cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
  assert cfg["eos_token"] == "<|im_end|>" and "chat_template" in cfg

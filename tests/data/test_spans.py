"""Span taggers: hand-worked sentences, the LLM-output parser, and invariants on real Wikipedia."""
from pathlib import Path

import pytest

from masksearch_jax.data import passages, spans

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
KILT = DATA / "r1searcher/wiki_samples/filtered_kilt_sample_100.jsonl"
HOTPOT = DATA / "hotpotqa_dev100/corpus.jsonl"


def _texts(tagged):
  return [(s.text, s.kind) for s in tagged]


def test_rule_tagger_hand_worked():
  text = ('Marie Curie was born on 7 November 1867 in Warsaw. She won the Nobel Prize in Physics in '
          '1903 and wrote "Radioactive Substances". Her institute had 250 employees and a $2 million '
          'budget.')
  got = _texts(spans.RuleTagger().tag(text, title="Marie Curie"))
  # "in" is not a name connector ("Tim Burton in Los Angeles" must stay two names).
  assert got == [("7 November 1867", "date"), ("Nobel Prize", "name"), ("1903", "date"),
                 ("Radioactive Substances", "title"), ("250 employees", "number"),
                 ("$2 million", "number")]


def test_rule_tagger_drops_title_repeats_and_sentence_starts():
  text = ("Tim Burton met Johnny Depp in Los Angeles. The Walt Disney Company later hired Tim Burton. "
          "In Burbank, California the studio opened.")
  got = [s.text for s in spans.RuleTagger().tag(text, title="Los Angeles")]
  # Tim Burton occurs twice, Los Angeles is the title, "The"/"In" are not part of names.
  # single capitalised words ("Burbank", "California") are not names without --single_names.
  assert got == ["Johnny Depp", "Walt Disney Company"]


def test_title_with_disambiguation_is_dropped():
  text = "Ed Wood (film) review: the film Ed Wood stars Johnny Depp and Martin Landau."
  got = [s.text for s in spans.RuleTagger().tag(text, title="Ed Wood (film)")]
  assert "Ed Wood" not in got and "Johnny Depp" in got and "Martin Landau" in got


def test_quoted_titles_strip_inner_punctuation():
  text = 'He directed "Sinister", "The Exorcism of Emily Rose," and "Doctor Strange."'
  got = _texts(spans.RuleTagger().tag(text))
  assert got == [("Sinister", "title"), ("The Exorcism of Emily Rose", "title"),
                 ("Doctor Strange", "title")]


@pytest.mark.parametrize("output", [
    '["Johnny Depp", "1994", "Tim Burton"]',
    'Sure! Here are the spans:\n```json\n["Johnny Depp", "1994", "Tim Burton"]\n```\nDone.',
    '[{"span": "Johnny Depp"}, {"text": "1994"}, {"entity": "Tim Burton"}]',
    '{"spans": ["Johnny Depp", "1994", "Tim Burton"]}',
    'Spans:\n- Johnny Depp\n2. "1994"\n* Tim Burton,\n',
])
def test_parse_span_list_layouts(output):
  assert spans.parse_span_list(output) == ["Johnny Depp", "1994", "Tim Burton"]


def test_parse_span_list_never_evaluates():
  hostile = "__import__('os').system('touch /tmp/pwned_by_span_parser')"
  assert spans.parse_span_list(f"[{hostile}]") == [f"[{hostile}]"]
  assert spans.parse_span_list("") == []
  assert not Path("/tmp/pwned_by_span_parser").exists()


def test_llm_tagger_keeps_only_substrings_and_marks_numbers():
  text = "Ed Wood is a 1994 film directed by Tim Burton, starring Johnny Depp."
  fake = lambda prompts: ['["Tim Burton", "1994", "Quentin Tarantino", "Ed Wood", "Tim Burton"]'
                          for _ in prompts]
  tagger = spans.LLMTagger(fake)
  assert isinstance(tagger, spans.SpanTagger)
  got = tagger.tag(text, title="Ed Wood")
  assert [(s.text, s.is_numeric) for s in got] == [("1994", True), ("Tim Burton", False)]
  assert all(text[s.start:s.end] == s.text for s in got)


@pytest.mark.parametrize("path", [KILT, HOTPOT], ids=["kilt", "hotpotqa"])
def test_invariants_on_real_wikipedia(path):
  if not path.exists():
    pytest.skip(f"shared data absent: {path}")
  tagger = spans.RuleTagger()
  n_par = n_spans = 0
  for par in passages.iter_paragraphs(path):
    tagged = tagger.tag(par.text, par.title)
    n_par += 1
    n_spans += len(tagged)
    for s in tagged:
      assert par.text[s.start:s.end] == s.text  # a substring, where it says it is
      assert spans.occurrences(s.text, par.text) == 1
      assert s.text.lower() != par.title.lower()
      assert s.text == s.text.strip() and s.text
    for a, b in zip(tagged, tagged[1:]):
      assert a.end <= b.start  # sorted and non-overlapping
  assert n_par > 500 and n_spans > 2 * n_par  # real prose is rich in salient spans


def test_chat_generate_fn_feeds_the_sampler_chat_prompts():
  class FakeTok:  # the chat template is the tokenizer's; a minimal Qwen-format stand-in
    def apply_chat_template(self, msgs, tokenize, add_generation_prompt):
      body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs)
      return body + ("<|im_start|>assistant\n" if add_generation_prompt else "")

  class FakeSampler:
    def __init__(self):
      self.seen = None

    def generate(self, params, prompts, seed=0):
      self.seen = (params, list(prompts), seed)
      return type("Rollout", (), {"texts": ['["Tim Burton"]<|im_end|>'] * len(prompts)})()

  sampler = FakeSampler()
  tagger = spans.LLMTagger(spans.chat_generate_fn(sampler, "PARAMS", FakeTok(), seed=4))
  got = tagger.tag("Ed Wood was directed by Tim Burton in 1994.", "Ed Wood")
  assert [s.text for s in got] == ["Tim Burton"]
  params, prompts, seed = sampler.seen
  assert params == "PARAMS" and seed == 4 and len(prompts) == 1
  assert prompts[0].startswith("<|im_start|>user\nExtract the salient spans")
  assert prompts[0].endswith("Tim Burton in 1994.<|im_end|>\n<|im_start|>assistant\n")

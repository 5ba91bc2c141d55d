"""Tiny Qwen2.5-shaped model (2 layers, d=64) for tests and the embedded world; vocab grows to fit
the tokenizer."""
CONFIG = dict(model="tiny")

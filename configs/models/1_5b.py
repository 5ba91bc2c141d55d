"""Qwen2.5-1.5B."""
CONFIG = dict(model="qwen2_5_1_5b", seq_len=4096)

"""Qwen2.5-0.5B (shapes from its config.json); start from --init_from_hf=DIR for real weights."""
CONFIG = dict(model="qwen2_5_0_5b", seq_len=4096)

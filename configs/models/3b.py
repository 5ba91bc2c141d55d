"""Qwen2.5-3B: layer remat keeps activations of 4k-token rows in memory."""
CONFIG = dict(model="qwen2_5_3b", seq_len=4096, remat="dots_no_batch")

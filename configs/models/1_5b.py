"""Qwen2.5-1.5B. remat dots_attn: the weight products and cuDNN attention's outputs are saved,
element-wise ops recomputed — the fastest policy measured for its SFT step (benchmarks/RESULTS.md)."""
CONFIG = dict(model="qwen2_5_1_5b", seq_len=4096, remat="dots_attn")

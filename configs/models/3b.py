"""Qwen2.5-3B: layer remat keeps activations of 4k-token rows in memory (dots_attn: the weight
products and the fused attention's outputs are saved, element-wise ops recomputed)."""
CONFIG = dict(model="qwen2_5_3b", seq_len=4096, remat="dots_attn")

"""Qwen2.5-7B (untied head): full remat; needs FSDP over a slice (v4-32, v5p-8 or larger)."""
CONFIG = dict(model="qwen2_5_7b", seq_len=4096, remat="full")

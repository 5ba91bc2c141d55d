"""TPU v5e-16 (16 chips, 16 GB HBM each): FSDP 4 x tensor 4 keeps 7B weights and Adam state in
memory (1.5B/3B/7B: 12/16/28 heads; 0.5B has 14, use --mesh=data=1,fsdp=-1,tensor=2)."""
CONFIG = dict(mesh="data=1,fsdp=-1,tensor=4", attn_impl="xla", compute_dtype="bfloat16")

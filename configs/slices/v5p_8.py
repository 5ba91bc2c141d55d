"""TPU v5p-8 (4 chips, 95 GB HBM each): FSDP over all chips."""
CONFIG = dict(mesh="data=1,fsdp=-1,tensor=1", attn_impl="xla", compute_dtype="bfloat16")

"""TPU v4-8 (4 chips, one host): FSDP over all chips."""
CONFIG = dict(mesh="data=1,fsdp=-1,tensor=1", attn_impl="xla", compute_dtype="bfloat16")

"""TPU v4-32 (16 chips, 4 hosts): FSDP over 16 chips; batch_size must be a multiple of 16."""
CONFIG = dict(mesh="data=1,fsdp=-1,tensor=1", attn_impl="xla", compute_dtype="bfloat16")

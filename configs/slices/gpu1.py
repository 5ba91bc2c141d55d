"""One GPU (H100/H200): cuDNN fused attention, bf16 compute."""
CONFIG = dict(mesh="data=1,fsdp=1,tensor=1", attn_impl="cudnn", compute_dtype="bfloat16")

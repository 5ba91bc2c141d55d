"""CPU (tests, laptops): all devices data-parallel, f32 compute (CPUs have no fast bf16)."""
CONFIG = dict(mesh="data=-1,fsdp=1,tensor=1", compute_dtype="float32", attn_impl="xla",
              async_checkpoint=True)

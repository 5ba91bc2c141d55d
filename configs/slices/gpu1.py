"""One GPU (H100/H200): cuDNN fused attention, bf16 compute, 8192-token loss chunks (+1.7 points
of MFU over 4096 on the 1.5B SFT step, ~6 GB more of chunk temporaries), and unrolled layers:
with `lax.scan` every saved residual is copied into a stacked [L, ...] buffer that is zeroed
first (~40 ms of a 0.63 s 1.5B step on an H200; unrolled: 51.0% -> 53.2% MFU, longer compiles).
Measurements: benchmarks/RESULTS.md. On a 141 GB H200, configs/slices/h200.py adds what the
larger memory allows (24 x 2048-token rows of the 1.5B: SFT step ~56% MFU)."""
CONFIG = dict(mesh="data=1,fsdp=1,tensor=1", attn_impl="cudnn", compute_dtype="bfloat16",
              token_chunk=8192, scan_layers=False)

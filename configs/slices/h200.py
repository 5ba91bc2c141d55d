"""One H200 (141 GB): the gpu1 settings plus what the larger memory buys.

JAX may take 95% of the memory (its default 75% is 106 GB); the norm and SwiGLU outputs are saved
for the backward pass (remat dots_attn_acts: ~1 GB a 2048-token row more on the 1.5B; the
backward recomputes almost nothing), the loss's log-sum-exp is one Pallas pass over the logits,
and loss chunks are 12288 tokens. Measured on the 1.5B (benchmarks/RESULTS.md, session 19): 24
rows x 2048 tokens peak at 130 GB and beat 16 rows by 0.5-0.6 points of MFU on two machines
(SFT step 56.7% and 55.3%), with bf16-stored logits and a bf16 Adam first moment:

  python -m masksearch_jax.train_sft --config=configs/slices/h200.py --model=1_5b \\
      --batch_size=24 --seq_len=2048 --pack_window=1 --logits_dtype=bfloat16 --mu_dtype=bfloat16 ...

Larger models need fewer rows a step, or remat=dots_attn.
"""
CONFIG = dict(mesh="data=1,fsdp=1,tensor=1", attn_impl="cudnn", compute_dtype="bfloat16",
              scan_layers=False, token_chunk=12288, remat="dots_attn_acts", loss_lse_impl="pallas",
              gpu_memory_fraction=0.95)

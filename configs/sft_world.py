r"""SFT of the tiny model on the embedded world's oracle traces (CPU: a few minutes; GPU: seconds).

  python -m masksearch_jax.data.world --out=runs/world
  python -m masksearch_jax.agents.oracle --world=runs/world --out=runs/world/traces.jsonl
  python -m masksearch_jax.train_sft --config=configs/sft_world.py \
      --overlay=configs/slices/cpu.py --workdir=runs/sft_world

Traces of question answering and of RAMP mask filling (both searching), mixed. Measured in
tests/train/test_sft.py (smaller world, seq_len 256, batch 4, lr 1e-2): the loss falls from ~7.0
to ~2.3 in 30 steps, next-token accuracy on loss tokens ~0.5.
"""
CONFIG = dict(
    model="tiny",
    data=("runs/world/traces.jsonl",),
    tokenizer="runs/world/tokenizer",
    workdir="runs/sft_world",
    seq_len=2048,
    batch_size=8,
    steps=300,
    optim=dict(learning_rate=3e-3, warmup_steps=20, schedule="cosine", min_lr_ratio=0.1,
               weight_decay=0.01, max_grad_norm=1.0),
    save_every=100,
    log_every=10,
    curriculum="mix",
)

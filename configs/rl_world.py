r"""DAPO on the embedded world's questions, starting from the SFT run of configs/sft_world.py.

  python -m masksearch_jax.data.world --out=runs/world
  python -m masksearch_jax.agents.oracle --world=runs/world --out=runs/world/traces.jsonl
  python -m masksearch_jax.train_sft --config=configs/sft_world.py \
      --overlay=configs/slices/cpu.py --workdir=runs/sft_world --export_dtype=float32
  python -m masksearch_jax.train_rl --config=configs/rl_world.py \
      --overlay=configs/slices/cpu.py --init_from=runs/sft_world --workdir=runs/rl_world

(benchmarks/rl_world.py runs all of it and prints held-out accuracies.) 8 prompts x 8 responses
per step, reward = strict format + answer recall with the length penalty, dynamic sampling on.
"""
CONFIG = dict(
    model="tiny",
    init_from="runs/sft_world",
    tokenizer="runs/world/tokenizer",
    data=("runs/world/questions_train.jsonl",),
    eval_data=("runs/world/questions_test.jsonl",),
    eval_limit=64,
    eval_every=10,
    eval_train_limit=64,       # the same greedy eval on 64 training prompts: the memorisation gap
    retriever="lexical:runs/world/corpus.jsonl",
    workdir="runs/rl_world",
    seq_len=1024,
    max_new_tokens=640,
    max_turns=3,
    max_tool_tokens=256,
    top_k_docs=3,
    group_size=8,
    batch_size=64,             # responses per RL step = 8 prompts x 8
    gen_groups_per_round=8,
    max_gen_rounds=6,
    mini_batches=2,
    temperature=1.0,
    steps=100,
    optim=dict(learning_rate=1e-4, schedule="constant", warmup_steps=0, weight_decay=0.0,
               max_grad_norm=1.0),
    dapo=dict(eps_low=0.2, eps_high=0.28),
    reward=dict(format_weight=0.5, answer_weight=1.0, answer_metric="recall"),
    save_every=25,
    log_every=1,
)

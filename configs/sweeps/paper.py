r"""Paper-scale scaling study (MaskSearch, arXiv 2505.20285, Table 2 and the scaling figures).

  python -m masksearch_jax.sweep --sweep=configs/sweeps/paper.py --mode=plan
  python -m masksearch_jax.sweep --sweep=configs/sweeps/paper.py --mode=emit \
      --root=gs://BUCKET/sweeps/paper --accelerator=v4-32 --zone=us-central2-b --spot > run_paper.sh

Grid: Qwen2.5 {1.5B, 3B, 7B} x pre-training {none, RAMP-SFT, RAMP-RL} x post-training {SFT, RL} x
RAMP data size {10K, 100K, 1M} x curriculum {on, off}. Without RAMP pre-training the data-size and
curriculum axes are dropped; curriculum off (random mix) runs at the largest data size only:
3 x (2 + 2 x 2 x 4) = 54 cells. Eval: token-level recall x100 on the paper's six sets, plus RAMP
validation sets per mask count for the curriculum figure.

Set `data` to a folder (local or gs://) holding the eval sets, the RAMP data and the retrieval
index; the command lines are templates, edit them when an entry point's flags change.
"""

_EVAL = ("hotpotqa", "fanoutqa", "musique", "2wiki", "bamboogle", "freshqa")

SWEEP = dict(
    name="paper",
    root="runs/sweeps/paper",
    axes=dict(
        model=["qwen2_5_1_5b", "qwen2_5_3b", "qwen2_5_7b"],
        pretrain=["none", "ramp_sft", "ramp_rl"],
        posttrain=["sft", "rl"],
        data_size=[10_000, 100_000, 1_000_000],
        curriculum=[True, False],
    ),
    exclude=[
        dict(pretrain="none", data_size=[10_000, 100_000]),
        dict(pretrain="none", curriculum=False),
        dict(pretrain=["ramp_sft", "ramp_rl"], curriculum=False, data_size=[10_000, 100_000]),
    ],
    model_params=dict(qwen2_5_1_5b=1.54e9, qwen2_5_3b=3.09e9, qwen2_5_7b=7.62e9),
    base=dict(
        data="gs://BUCKET/masksearch_data",
        sft_steps=2000,
        rl_steps=300,
        ramp_rl_steps=300,
        eval_sets=",".join(f"{n}={{data}}/eval/{n}.jsonl" for n in _EVAL),
        ramp_eval_sets=",".join(f"ramp_mask{k}={{data}}/ramp_eval/ramp_k{k}.jsonl" for k in range(1, 5)),
    ),
    derived=dict(
        init=dict(pretrain={"none": "--init_from_hf={data}/hf/{model}",
                            "ramp_sft": "--init_from={run_dir}/pretrain",
                            "ramp_rl": "--init_from={run_dir}/pretrain"}),
    ),
    stages=[
        dict(name="pretrain", when=dict(pretrain="ramp_sft"),
             cmd="{python} -m masksearch_jax.train_sft --model={model} --init_from_hf={data}/hf/{model} "
                 "--data={data}/ramp/ramp.jsonl --max_examples={data_size} --curriculum={curriculum} "
                 "--steps={sft_steps} --workdir={run_dir}/pretrain"),
        dict(name="pretrain", when=dict(pretrain="ramp_rl"),
             cmd="{python} -m masksearch_jax.train_rl --model={model} --init_from_hf={data}/hf/{model} "
                 "--data={data}/ramp/ramp.jsonl --max_examples={data_size} --curriculum={curriculum} "
                 "--steps={ramp_rl_steps} --retriever={data}/index --workdir={run_dir}/pretrain"),
        dict(name="posttrain", when=dict(posttrain="sft"),
             cmd="{python} -m masksearch_jax.train_sft --model={model} {init} --data={data}/traces/train.jsonl "
                 "--steps={sft_steps} --workdir={run_dir}/posttrain"),
        dict(name="posttrain", when=dict(posttrain="rl"),
             cmd="{python} -m masksearch_jax.train_rl --model={model} {init} --data={data}/rl/train.jsonl "
                 "--steps={rl_steps} --retriever={data}/index --workdir={run_dir}/posttrain"),
        dict(name="eval",
             cmd="{python} -m masksearch_jax.evaluate --checkpoint={run_dir}/posttrain --index={data}/index "
                 "--eval_sets={eval_sets},{ramp_eval_sets} --out={run_dir}/eval"),
    ],
    summary="eval/summary.json",
    tpu=dict(name="masksearch-paper", accelerator="v4-32", zone="us-central2-b", spot=True),
)

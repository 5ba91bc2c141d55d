r"""Reduced scaling sweep on the embedded world: tiny Qwen2.5-shaped models, one GPU, minutes.

  python -m masksearch_jax.sweep --sweep=configs/sweeps/tiny_world.py --mode=plan
  python -m masksearch_jax.sweep --sweep=configs/sweeps/tiny_world.py

Grid: model x pre-training {none, RAMP-SFT, RAMP-RL} x post-training {SFT, RL} x RAMP data size x
curriculum. Cells without RAMP pre-training run once (data size and curriculum mean nothing there);
the random-mix (curriculum off) arm runs only at the largest data size. 2 x (2 + 2 x 2 x 3) = 28 cells.

The command lines are templates ({name} = an axis value, a `base` entry, a `derived` entry, or
python / sweep / cell / run_dir / root). When an entry point's flags change, edit them here.
"""

SWEEP = dict(
    name="tiny_world",
    root="runs/sweeps/tiny_world",
    axes=dict(
        model=["tiny_2l", "tiny_4l"],
        pretrain=["none", "ramp_sft", "ramp_rl"],
        posttrain=["sft", "rl"],
        data_size=[256, 1024],
        curriculum=[True, False],
    ),
    exclude=[
        dict(pretrain="none", data_size=[1024]),
        dict(pretrain="none", curriculum=False),
        dict(pretrain=["ramp_sft", "ramp_rl"], curriculum=False, data_size=[256]),
    ],
    # Parameter counts (x axis of the model-size plot); keep in step with configs/ model files.
    model_params=dict(tiny_2l=2.0e6, tiny_4l=4.0e6),
    base=dict(
        sft_steps=200,
        rl_steps=20,
        ramp_rl_steps=20,
        eval_limit=64,
        ramp_eval_sets=",".join(f"ramp_mask{k}={{root}}/ramp_eval/ramp_k{k}.jsonl" for k in range(1, 5)),
    ),
    setup=[
        dict(name="world", cmd="{python} -m masksearch_jax.data.world --out={root}/world"),
        dict(name="index", cmd="{python} -m masksearch_jax.retrieval.build_index "
                               "--corpus={root}/world/corpus.jsonl --out_dir={root}/world/index"),
        # RAMP eval buckets ramp_k{1..4}.jsonl (another span seed than the training ramp.jsonl), for
        # the curriculum-vs-random-mix plot per mask count (eval sets named ramp_mask<k>).
        dict(name="ramp_eval", cmd="{python} -m masksearch_jax.data.build_ramp --corpus={root}/world/corpus.jsonl "
                                   "--out={root}/ramp_eval --seed=1 --workers=1 --max_paragraphs=400"),
    ],
    derived=dict(
        # Post-training starts from the pre-trained checkpoint, or from scratch (tiny) without RAMP.
        init=dict(pretrain={"none": "--init_from=none",
                            "ramp_sft": "--init_from={run_dir}/pretrain",
                            "ramp_rl": "--init_from={run_dir}/pretrain"}),
    ),
    stages=[
        dict(name="pretrain", when=dict(pretrain="ramp_sft"),
             cmd="{python} -m masksearch_jax.train_sft --model={model} --data={root}/world/ramp.jsonl "
                 "--max_examples={data_size} --curriculum={curriculum} --steps={sft_steps} "
                 "--workdir={run_dir}/pretrain"),
        dict(name="pretrain", when=dict(pretrain="ramp_rl"),
             cmd="{python} -m masksearch_jax.train_rl --model={model} --prompts={root}/world/ramp.jsonl "
                 "--max_examples={data_size} --curriculum={curriculum} --steps={ramp_rl_steps} "
                 "--index={root}/world/index --workdir={run_dir}/pretrain"),
        dict(name="posttrain", when=dict(posttrain="sft"),
             cmd="{python} -m masksearch_jax.train_sft --model={model} {init} "
                 "--data={root}/world/questions_train.jsonl --steps={sft_steps} --workdir={run_dir}/posttrain"),
        dict(name="posttrain", when=dict(posttrain="rl"),
             cmd="{python} -m masksearch_jax.train_rl --model={model} {init} "
                 "--prompts={root}/world/questions_train.jsonl --steps={rl_steps} "
                 "--index={root}/world/index --workdir={run_dir}/posttrain"),
        dict(name="eval",
             cmd="{python} -m masksearch_jax.evaluate --checkpoint={run_dir}/posttrain "
                 "--index={root}/world/index --limit={eval_limit} "
                 "--eval_sets=world={root}/world/questions_test.jsonl,{ramp_eval_sets} "
                 "--out={run_dir}/eval"),
    ],
    summary="eval/summary.json",
    tpu=dict(name="masksearch-tiny", accelerator="v4-8", zone="us-central2-b"),
)

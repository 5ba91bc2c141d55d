r"""Reduced scaling sweep on the embedded world: tiny Qwen2.5-shaped models, one GPU.

  python -m masksearch_jax.sweep --sweep=configs/sweeps/tiny_world.py --mode=plan
  python -m masksearch_jax.sweep --sweep=configs/sweeps/tiny_world.py
  python -m masksearch_jax.sweep --sweep=configs/sweeps/tiny_world.py --mode=collect

Grid: model x pre-training {none, RAMP-SFT, RAMP-RL} x post-training {SFT, RL} x RAMP data size x
curriculum. Cells without RAMP pre-training run once (data size and curriculum mean nothing there);
the random-mix (curriculum off) arm runs only at the largest data size. 2 x (2 + 2 x 2 x 3) = 28 cells.
configs/sweeps/tiny_world_gpu.py is the few-minutes subset (SFT only, fewer cells).

Data, built once by the setup stages (all from the world, BM25 retrieval over its corpus):
  world/qa_traces.jsonl     oracle search traces of the training questions   (SFT post-training)
  world/ramp_sft.jsonl      oracle search traces of RAMP records, shuffled   (RAMP-SFT pre-training)
  world/ramp_rl.jsonl       the same RAMP records, shuffled alike            (RAMP-RL pre-training)
  ramp_eval/ramp_k<k>.jsonl RAMP records with other spans (seed 1), one file per mask count
The world has 324 passages; `--k_mode=each` makes one RAMP record per feasible mask count (885),
so data sizes up to 885 are distinct. RAMP eval shares passages with training (other spans).
The traces get a top-level `mask_num` (the curriculum reads it; the oracle keeps it in meta.type).

Without RAMP pre-training a cell starts from random weights (`--init_from=`); RL from random
weights earns almost no reward on this world, so the RL cells are mostly a check that the
pipeline runs. The command lines are templates ({name} = an axis value, a `base` entry, a
`derived` entry, or python / sweep / cell / run_dir / root); when an entry point's flags change,
edit them here (tests/sweep/test_entry_flags.py checks every flag against the entry points).
"""

# Reads RAMP traces or records, sets `mask_num` (from meta.type 'ramp_k<k>' where missing) and
# writes them in a seeded order, so --max_examples=N takes a random N (no braces: a template).
_SHUFFLE = ("{python} -c \"import json, random, sys; src, dst = sys.argv[1:3]; "
            "rs = [json.loads(l) for l in open(src) if l.strip()]; "
            "rs = [dict(r, mask_num=r.get('mask_num') or int(r['meta']['type'][len('ramp_k'):])) for r in rs]; "
            "random.Random(0).shuffle(rs); "
            "open(dst, 'w').writelines(json.dumps(r) + chr(10) for r in rs)\"")

_W = "{root}/world"
_TRAIN = ("--overlay=configs/slices/{slice}.py --model={model} --tokenizer=" + _W + "/tokenizer "
          "--export_dtype=float32")

SWEEP = dict(
    name="tiny_world",
    root="runs/sweeps/tiny_world",
    axes=dict(
        model=["tiny_2l", "tiny_4l"],
        pretrain=["none", "ramp_sft", "ramp_rl"],
        posttrain=["sft", "rl"],
        data_size=[256, 885],
        curriculum=[True, False],
    ),
    exclude=[
        dict(pretrain="none", data_size=[885]),
        dict(pretrain="none", curriculum=False),
        dict(pretrain=["ramp_sft", "ramp_rl"], curriculum=False, data_size=[256]),
    ],
    # Parameter counts with the world tokenizer (x axis of the model-size plot).
    model_params=dict(tiny_2l=2.07e6, tiny_4l=3.58e6),
    base=dict(
        slice="gpu1",          # configs/slices/<slice>.py: gpu1 (one GPU) or cpu
        sft_steps=300,
        sft_warmup=20,         # must stay below sft_steps (cosine schedule)
        sft_seq_len=2048,      # packed rows of traces (as configs/sft_world.py)
        sft_batch=8,
        rl_steps=30,
        ramp_rl_steps=30,
        # More train_rl flags (e.g. smaller rollouts: --group_size=4 --batch_size=16). From random
        # weights every group earns the same reward (0), so DAPO's dynamic sampling would stop the
        # run (DynamicSamplingError); without it such steps simply have zero advantage.
        rl_extra="--dynamic_sampling=false",
        eval_limit=64,         # examples per eval set
        eval_batch=64,
        eval_new_tokens=512,
        ramp_eval_sets=",".join(f"ramp_mask{k}={{root}}/ramp_eval/ramp_k{k}.jsonl" for k in range(1, 5)),
    ),
    setup=[
        dict(name="world", cmd="{python} -m masksearch_jax.data.world --out=" + _W),
        dict(name="ramp_train", cmd="{python} -m masksearch_jax.data.build_ramp --corpus=" + _W + "/corpus.jsonl "
                                    "--out=" + _W + "/ramp_train --k_mode=each --seed=0 --noprogress"),
        # RAMP eval buckets ramp_k{1..4}.jsonl (another span seed), for the curriculum-vs-random-mix
        # plot per mask count (eval sets named ramp_mask<k>).
        dict(name="ramp_eval", cmd="{python} -m masksearch_jax.data.build_ramp --corpus=" + _W + "/corpus.jsonl "
                                   "--out={root}/ramp_eval --k_mode=each --seed=1 --noprogress"),
        dict(name="qa_traces", cmd="{python} -m masksearch_jax.agents.oracle --world=" + _W + " "
                                   "--inputs=questions_train.jsonl --out=" + _W + "/qa_traces.jsonl"),
        dict(name="ramp_traces", cmd="{python} -m masksearch_jax.agents.oracle --world=" + _W + " "
                                     "--inputs=ramp_train/ramp.jsonl --out=" + _W + "/ramp_traces.jsonl"),
        dict(name="ramp_sft_data", cmd=_SHUFFLE + " " + _W + "/ramp_traces.jsonl " + _W + "/ramp_sft.jsonl"),
        dict(name="ramp_rl_data", cmd=_SHUFFLE + " " + _W + "/ramp_train/ramp.jsonl " + _W + "/ramp_rl.jsonl"),
    ],
    derived=dict(
        # Post-training starts from the pre-trained checkpoint, or from random weights without RAMP.
        init=dict(pretrain={"none": "--init_from=",
                            "ramp_sft": "--init_from={run_dir}/pretrain",
                            "ramp_rl": "--init_from={run_dir}/pretrain"}),
    ),
    stages=[
        dict(name="pretrain", when=dict(pretrain="ramp_sft"),
             cmd="{python} -m masksearch_jax.train_sft --config=configs/sft_world.py " + _TRAIN + " "
                 "--data=" + _W + "/ramp_sft.jsonl --max_examples={data_size} --curriculum={curriculum} "
                 "--steps={sft_steps} --warmup_steps={sft_warmup} --save_every={sft_steps} "
                 "--seq_len={sft_seq_len} --batch_size={sft_batch} "
                 "--workdir={run_dir}/pretrain"),
        dict(name="pretrain", when=dict(pretrain="ramp_rl"),
             cmd="{python} -m masksearch_jax.train_rl --config=configs/rl_world.py " + _TRAIN + " "
                 "--init_from= --data=" + _W + "/ramp_rl.jsonl --max_examples={data_size} "
                 "--curriculum={curriculum} --steps={ramp_rl_steps} --eval_every=0 --eval_data= "
                 "--retriever=lexical:" + _W + "/corpus.jsonl {rl_extra} --workdir={run_dir}/pretrain"),
        dict(name="posttrain", when=dict(posttrain="sft"),
             cmd="{python} -m masksearch_jax.train_sft --config=configs/sft_world.py " + _TRAIN + " {init} "
                 "--data=" + _W + "/qa_traces.jsonl --steps={sft_steps} --warmup_steps={sft_warmup} "
                 "--save_every={sft_steps} --seq_len={sft_seq_len} --batch_size={sft_batch} "
                 "--workdir={run_dir}/posttrain"),
        dict(name="posttrain", when=dict(posttrain="rl"),
             cmd="{python} -m masksearch_jax.train_rl --config=configs/rl_world.py " + _TRAIN + " {init} "
                 "--data=" + _W + "/questions_train.jsonl --steps={rl_steps} --eval_every=0 --eval_data= "
                 "--retriever=lexical:" + _W + "/corpus.jsonl {rl_extra} --workdir={run_dir}/posttrain"),
        dict(name="eval",
             cmd="{python} -m masksearch_jax.evaluate --checkpoint={run_dir}/posttrain --model={model} "
                 "--tokenizer=" + _W + "/tokenizer --index=lexical:" + _W + "/corpus.jsonl "
                 "--limit={eval_limit} --batch_size={eval_batch} --max_new_tokens={eval_new_tokens} "
                 "--eval_sets=world=" + _W + "/questions_test.jsonl,{ramp_eval_sets} "
                 "--out={run_dir}/eval"),
    ],
    summary="eval/summary.json",
    tpu=dict(name="masksearch-tiny", accelerator="v4-8", zone="us-central2-b"),
)

r"""The few-minutes subset of configs/sweeps/tiny_world.py for one GPU: same data and commands.

  python -m masksearch_jax.sweep --sweep=configs/sweeps/tiny_world_gpu.py --mode=plan

Grid: model {tiny_2l, tiny_4l} x pre-training {none, RAMP-SFT} x post-training {SFT} x RAMP data
size {200, 800} x curriculum, the random mix only at 800: 2 x (1 + 3) = 8 cells, 3 figures (score
vs model size per method, score vs RAMP data size, curriculum vs random mix per mask count). RL is
left out: from random weights it learns nothing here in a few steps, and it costs the most time.
On an H100 every stage process spends ~20-30 s starting and compiling and ~10 s training, so run the
cells side by side, one sweep process per cell (the setup runs once: the others wait on its lock),
then draw the table and figures (PNG + SVG in $R):

  R=runs/sweeps/tiny_world_gpu S=configs/sweeps/tiny_world_gpu.py
  export XLA_PYTHON_CLIENT_MEM_FRACTION=0.1 JAX_COMPILATION_CACHE_DIR=$R/jax_cache; mkdir -p $R
  for c in $(python -m masksearch_jax.sweep --sweep=$S --root=$R --mode=plan | grep -o '^model-[^ ]*'); do
    python -m masksearch_jax.sweep --sweep=$S --root=$R --only="^$c\$" --noplots > $R/$c.log 2>&1 &
  done; wait
  python -m masksearch_jax.sweep --sweep=$S --root=$R --mode=collect

Rerunning the same lines resumes: finished cells and stages are skipped.
"""
import runpy
from pathlib import Path

_FULL = runpy.run_path(str(Path(__file__).with_name("tiny_world.py")))["SWEEP"]

SWEEP = dict(
    _FULL,
    name="tiny_world_gpu",
    root="runs/sweeps/tiny_world_gpu",
    axes=dict(
        model=["tiny_2l", "tiny_4l"],
        pretrain=["none", "ramp_sft"],
        posttrain=["sft"],
        data_size=[200, 800],
        curriculum=[True, False],
    ),
    exclude=[
        dict(pretrain="none", data_size=[800]),
        dict(pretrain="none", curriculum=False),
        dict(pretrain="ramp_sft", curriculum=False, data_size=[200]),
    ],
    base=dict(_FULL["base"], slice="gpu1", sft_steps=200, sft_warmup=20, eval_limit=64, eval_batch=64),
    # RAMP-RL records are not needed here.
    setup=[s for s in _FULL["setup"] if s["name"] != "ramp_rl_data"],
)

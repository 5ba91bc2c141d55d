"""Multi-host start-up: the env decision table, the no-op path, and a real 2-process CPU start."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from masksearch_jax.parallel import distributed as dist

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("env,init,reason", [
    ({}, False, "single process"),
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.2"}, False, "single process"),
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3,10.0.0.4,10.0.0.5"}, True, "4 hosts"),
    ({"SLURM_NTASKS": "1"}, False, "single process"),
    ({"SLURM_NTASKS": "8"}, True, "SLURM_NTASKS=8"),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, True, "OMPI_COMM_WORLD_SIZE=2"),
    ({"MEGASCALE_NUM_SLICES": "2"}, True, "MEGASCALE"),
    ({"MASKSEARCH_DISTRIBUTED": "1"}, True, "auto-detection"),
    ({"MASKSEARCH_DISTRIBUTED": "0", "SLURM_NTASKS": "8"}, False, "MASKSEARCH_DISTRIBUTED=0"),
])
def test_plan_from_env(env, init, reason):
  plan = dist.plan_from_env(env)
  assert plan.initialize is init and reason in plan.reason


def test_plan_coordinator_env_and_explicit_args():
  plan = dist.plan_from_env({"JAX_COORDINATOR_ADDRESS": "h:1234", "JAX_NUM_PROCESSES": "4",
                             "JAX_PROCESS_ID": "3"})
  assert (plan.initialize, plan.coordinator_address, plan.num_processes, plan.process_id) == (True, "h:1234", 4, 3)
  plan = dist.plan_from_env({"MASKSEARCH_DISTRIBUTED": "0"}, coordinator_address="c:1", num_processes=2,
                            process_id=0)
  assert plan.initialize and plan.reason == "explicit arguments"
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='x'"):
    dist.plan_from_env({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "x"})
  with pytest.raises(ValueError, match="MASKSEARCH_DISTRIBUTED='maybe'"):
    dist.plan_from_env({"MASKSEARCH_DISTRIBUTED": "maybe"})


def test_single_process_is_noop(monkeypatch):
  import jax
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  plan = dist.maybe_initialize(env={})
  assert not plan.initialize and calls == []
  assert dist.is_main_process()


def test_initialize_called_with_env_values(monkeypatch):
  import jax
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  dist.maybe_initialize(env={"JAX_COORDINATOR_ADDRESS": "h:9", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"})
  dist.maybe_initialize(env={"MASKSEARCH_DISTRIBUTED": "1"})
  assert calls == [{"coordinator_address": "h:9", "num_processes": 2, "process_id": 1}, {}]
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
  dist.maybe_initialize(env={"MASKSEARCH_DISTRIBUTED": "1"})
  assert len(calls) == 2  # idempotent


_CHILD = """
import jax
from masksearch_jax.parallel import distributed as dist
plan = dist.maybe_initialize()
print("RESULT", plan.initialize, jax.process_index(), jax.process_count(), flush=True)
jax.distributed.shutdown()
"""


def test_two_cpu_processes_really_initialize():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = []
  for pid in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid), PYTHONPATH=str(REPO))
    env.pop("MASKSEARCH_DISTRIBUTED", None)
    procs.append(subprocess.Popen([sys.executable, "-c", _CHILD], env=env, cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=60)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  results = sorted(l for o in outs for l in o.splitlines() if l.startswith("RESULT"))
  assert results == ["RESULT True 0 2", "RESULT True 1 2"], outs


def test_gpu_memory_fraction_sets_the_variable_jax_reads():
  env = {}
  assert dist.set_gpu_memory_fraction(0.0, env) is None and env == {}
  assert dist.set_gpu_memory_fraction(0.95, env) == "XLA_PYTHON_CLIENT_MEM_FRACTION"
  assert env == {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.95"}
  env = {"XLA_CLIENT_MEM_FRACTION": "0.5"}              # the user's name is kept, value replaced
  assert dist.set_gpu_memory_fraction(0.9, env) == "XLA_CLIENT_MEM_FRACTION"
  assert env == {"XLA_CLIENT_MEM_FRACTION": "0.9"}
  for bad in (-0.1, 1.5):
    with pytest.raises(ValueError, match="gpu_memory_fraction"):
      dist.set_gpu_memory_fraction(bad, {})


def test_gpu_memory_fraction_after_backend_start_is_an_error(monkeypatch):
  import jax
  jax.devices()                                          # the backend has started
  for name in dist.MEM_FRACTION_ENVS:
    monkeypatch.delenv(name, raising=False)
  with pytest.raises(RuntimeError, match="already started"):
    dist.set_gpu_memory_fraction(0.95)
  monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")   # already what the backend read
  assert dist.set_gpu_memory_fraction(0.95) == "XLA_PYTHON_CLIENT_MEM_FRACTION"


def test_entry_point_order_sets_the_fraction_before_the_backend_starts():
  """What train_sft / train_rl do first — load the config, set the fraction — starts no backend,
  so the variable is still read (a fresh process: this one's backend is already up)."""
  code = (
      "import os\n"
      "from jax._src import xla_bridge\n"
      "from masksearch_jax.train import config\n"
      "from masksearch_jax.train.rl import RLConfig\n"
      "from masksearch_jax.parallel import distributed\n"
      "cfg = config.load_config('configs/slices/h200.py', model='1_5b')\n"
      "config.load_config('configs/slices/h200.py', cls=RLConfig)\n"
      "assert not xla_bridge.backends_are_initialized()\n"
      "print(distributed.set_gpu_memory_fraction(cfg.gpu_memory_fraction),"
      " os.environ['XLA_PYTHON_CLIENT_MEM_FRACTION'])\n")
  env = {k: v for k, v in os.environ.items() if k not in dist.MEM_FRACTION_ENVS}
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ["XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95"]


def test_trainer_setup_warns_when_the_fraction_came_too_late(monkeypatch):
  """A library caller that builds a run after JAX started gets a warning, not a silent no-op."""
  import jax
  from masksearch_jax.train import config as config_lib, trainer
  jax.devices()                                          # the backend has started
  for name in dist.MEM_FRACTION_ENVS:
    monkeypatch.delenv(name, raising=False)
  warned = []
  monkeypatch.setattr(trainer.logging, "warning", lambda msg, *a: warned.append(msg % a))
  monkeypatch.setattr(trainer, "build_mesh_and_shardings", _stop)
  cfg = config_lib.TrainConfig(gpu_memory_fraction=0.9)
  with pytest.raises(_Stop):
    trainer.setup(cfg, config_lib.model_config(cfg), loss_fn=None)
  assert len(warned) == 1 and "already started" in warned[0]


class _Stop(Exception):
  pass


def _stop(*a, **kw):
  raise _Stop

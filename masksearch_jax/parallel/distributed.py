"""Multi-host start-up: call `jax.distributed.initialize()` exactly when several processes exist.

Why a wrapper: entry points run unchanged on a laptop (one process: must be a no-op, and must not
touch the backend first), on a multi-host TPU slice started by `launch_tpu.sh` (every worker runs
the same command), under SLURM/Open MPI, or with an explicit coordinator. `maybe_initialize()` must
run before anything else touches jax devices, since the backend cannot be re-initialised later.

Signals, first match wins:
  1. explicit arguments (from an entry point's flags): coordinator_address / num_processes / process_id;
  2. `MASKSEARCH_DISTRIBUTED=0` forces single-process; `=1` forces `initialize()` with JAX's
     cluster auto-detection (what `launch_tpu.sh` sets on every TPU worker);
  3. `JAX_COORDINATOR_ADDRESS` (+ `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`);
  4. a multi-host environment JAX auto-detects: `TPU_WORKER_HOSTNAMES` with more than one host,
     `MEGASCALE_NUM_SLICES` > 1, `SLURM_NTASKS` > 1, `OMPI_COMM_WORLD_SIZE` > 1.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping, MutableMapping

from absl import logging

FORCE_ENV = "MASKSEARCH_DISTRIBUTED"
# The GPU client reads one of these once, when the backend starts (the first name is jaxlib's new
# one; the second, deprecated, is what jax 0.4-0.11 all read). Setting both is an error in jaxlib.
MEM_FRACTION_ENVS = ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION")


@dataclasses.dataclass(frozen=True)
class DistributedPlan:
  """What `maybe_initialize` will do; `reason` says which signal decided it (for the log)."""
  initialize: bool
  reason: str
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None


def _int_env(env: Mapping[str, str], key: str) -> int | None:
  raw = env.get(key, "").strip()
  if not raw:
    return None
  try:
    return int(raw)
  except ValueError as e:
    raise ValueError(f"environment variable {key}={raw!r} is not an integer") from e


def plan_from_env(env: Mapping[str, str] | None = None, coordinator_address: str | None = None,
                  num_processes: int | None = None, process_id: int | None = None) -> DistributedPlan:
  """Pure decision from explicit settings and an environment mapping (os.environ by default)."""
  env = os.environ if env is None else env
  if coordinator_address or (num_processes or 0) > 1:
    return DistributedPlan(True, "explicit arguments", coordinator_address, num_processes, process_id)
  force = env.get(FORCE_ENV, "").strip().lower()
  if force in ("0", "false", "no", "off"):
    return DistributedPlan(False, f"{FORCE_ENV}={force}")
  if force in ("1", "true", "yes", "on"):
    return DistributedPlan(True, f"{FORCE_ENV}={force} (cluster auto-detection)")
  if force:
    raise ValueError(f"{FORCE_ENV}={force!r}: expected 0/1/true/false")
  if env.get("JAX_COORDINATOR_ADDRESS", "").strip():
    return DistributedPlan(True, "JAX_COORDINATOR_ADDRESS", env["JAX_COORDINATOR_ADDRESS"].strip(),
                           _int_env(env, "JAX_NUM_PROCESSES"), _int_env(env, "JAX_PROCESS_ID"))
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  if len(hosts) > 1:
    return DistributedPlan(True, f"TPU_WORKER_HOSTNAMES lists {len(hosts)} hosts")
  for key in ("MEGASCALE_NUM_SLICES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    n = _int_env(env, key)
    if n is not None and n > 1:
      return DistributedPlan(True, f"{key}={n}")
  return DistributedPlan(False, "single process (no multi-host signal)")


def _already_initialized(jax_module) -> bool:
  fn = getattr(jax_module.distributed, "is_initialized", None)
  return bool(fn()) if fn is not None else False


def maybe_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, env: Mapping[str, str] | None = None) -> DistributedPlan:
  """Initialises jax.distributed when the plan says so (idempotent); logs process index/count."""
  import jax  # pylint: disable=g-import-not-at-top  (imported late: keeps plan_from_env jax-free)
  plan = plan_from_env(env, coordinator_address, num_processes, process_id)
  if plan.initialize and not _already_initialized(jax):
    logging.info("jax.distributed.initialize (%s)", plan.reason)
    kwargs = {k: v for k, v in (("coordinator_address", plan.coordinator_address),
                                ("num_processes", plan.num_processes),
                                ("process_id", plan.process_id)) if v is not None}
    jax.distributed.initialize(**kwargs)
  elif not plan.initialize:
    logging.info("jax.distributed not initialised: %s", plan.reason)
  logging.info("process %d of %d; %d local / %d global devices", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return plan


def _backends_started() -> bool:
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top  (no public query)
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):
    return False


def set_gpu_memory_fraction(fraction: float,
                            env: MutableMapping[str, str] | None = None) -> str | None:
  """Lets JAX's GPU allocator take `fraction` of each GPU's memory; 0 leaves it alone.

  Why: JAX takes 75% by default — 106 GB of a 141 GB H200, less than the fastest 1.5B SFT batch
  peaks at (24 x 2048 rows: 130 GB, benchmarks/RESULTS.md). The variable is read once, when the
  backend starts, so this runs before anything touches jax devices (before `maybe_initialize`);
  called later on the real environment it raises instead of silently doing nothing. A variable
  the user already set is overridden (with a warning) under the name they used.
  Returns the variable's name, or None for fraction 0.
  """
  if not fraction:
    return None
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"gpu_memory_fraction={fraction}: expected a share of memory in (0, 1]")
  real = env is None
  env = os.environ if env is None else env
  given = [k for k in MEM_FRACTION_ENVS if env.get(k, "").strip()]
  name = given[0] if given else MEM_FRACTION_ENVS[1]
  value = f"{fraction:g}"
  if given and env[name].strip() != value:
    logging.warning("gpu_memory_fraction=%s overrides %s=%s", value, name, env[name])
  if real and _backends_started() and env.get(name, "").strip() != value:
    raise RuntimeError(f"gpu_memory_fraction={value}: JAX's backend has already started, so {name} "
                       "is no longer read; set it in the environment before the process starts")
  env[name] = value
  return name


def is_main_process() -> bool:
  """True on the process that should write logs, metrics and exports (checkpoints are collective)."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0

"""Named device meshes from a flag/config string.

Axes: `data` (pure data parallel), `fsdp` (data parallel with parameters and optimizer state
sharded along the embedding dimension), `tensor` (Megatron-style heads / MLP / vocab split).
A spec is "data=2,fsdp=-1,tensor=1" or a (data, fsdp, tensor) tuple; one -1 fills the rest.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

AXES = ("data", "fsdp", "tensor")


def parse_mesh_spec(spec: str | Sequence[int] | dict) -> dict[str, int]:
  if isinstance(spec, str):
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
      if "=" not in part:
        raise ValueError(f"mesh spec {spec!r}: expected 'axis=size' items, got {part!r}")
      k, v = part.split("=", 1)
      if k.strip() not in AXES:
        raise ValueError(f"mesh spec {spec!r}: unknown axis {k.strip()!r}; axes are {AXES}")
      out[k.strip()] = int(v)
  elif isinstance(spec, dict):
    out = {k: int(v) for k, v in spec.items()}
  else:
    if len(spec) != len(AXES):
      raise ValueError(f"mesh shape {tuple(spec)} must have {len(AXES)} entries {AXES}")
    out = dict(zip(AXES, (int(s) for s in spec)))
  return {a: out.get(a, 1) for a in AXES}


def resolve_shape(spec, num_devices: int) -> tuple[int, ...]:
  sizes = parse_mesh_spec(spec)
  fill = [a for a, s in sizes.items() if s == -1]
  if len(fill) > 1:
    raise ValueError(f"mesh {sizes}: at most one axis may be -1")
  if any(s == 0 or s < -1 for s in sizes.values()):
    raise ValueError(f"mesh {sizes}: axis sizes must be positive (or one -1)")
  known = math.prod(s for s in sizes.values() if s != -1)
  if fill:
    if num_devices % known:
      raise ValueError(f"mesh {sizes}: the fixed axes multiply to {known}, which does not divide "
                       f"the {num_devices} devices")
    sizes[fill[0]] = num_devices // known
  total = math.prod(sizes.values())
  if total != num_devices:
    raise ValueError(f"mesh {sizes} needs {total} devices but {num_devices} are available "
                     f"(data*fsdp*tensor must equal the device count)")
  return tuple(sizes[a] for a in AXES)


def make_mesh(spec="data=1,fsdp=-1,tensor=1", devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the mesh; on real hardware device order follows `mesh_utils` (ICI-friendly)."""
  devices = list(devices) if devices is not None else jax.devices()
  shape = resolve_shape(spec, len(devices))
  try:
    from jax.experimental import mesh_utils
    arr = mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:  # CPU / unusual topologies: plain row-major order is fine there.
    arr = np.asarray(devices).reshape(shape)
  return Mesh(arr, AXES)


def under_mesh(fn: Callable, mesh: Mesh | None) -> Callable:
  """`fn` (usually a jitted function) called with `mesh` as the context mesh (`jax.set_mesh`).

  Why: model code never takes a mesh, but fused kernels that must run per shard (cuDNN attention,
  `model/attention.py`) read the context mesh while tracing. Without a mesh this returns `fn`.
  """
  if mesh is None:
    return fn

  @functools.wraps(fn)
  def call(*args, **kwargs):
    with jax.set_mesh(mesh):
      return fn(*args, **kwargs)
  return call

"""Data-parallel placement of the sampler state: rows over the mesh's data axis.

Only the batch dimension is constrained; every other dimension is left UNCONSTRAINED so that a
tensor-parallel model (params sharded by parallel/rules.py) keeps its KV heads wherever XLA's
propagation puts them. The same code runs with no mesh (no constraints at all).
"""
from __future__ import annotations

from typing import Callable

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def _batch_dim(path, x) -> int:
  keys = [getattr(k, "key", None) for k in path]
  if "cache" in keys and ("k" in keys or "v" in keys):
    return x.ndim - 4            # stacked [L, B, S, K, Dh] -> 1; per-layer [B, S, K, Dh] -> 0
  return 0


def state_constraint(mesh: Mesh | None, data_axis: str = "data") -> Callable | None:
  """A function applying `with_sharding_constraint` to the engine state (None without a mesh)."""
  if mesh is None:
    return None
  if data_axis not in mesh.axis_names:
    raise ValueError(f"mesh axes {mesh.axis_names} have no data axis {data_axis!r}")

  def spec(path, x):
    bd = _batch_dim(path, x)
    dims = [P.UNCONSTRAINED] * x.ndim
    dims[bd] = data_axis
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(*dims)))

  return lambda state: jax.tree_util.tree_map_with_path(spec, state)


def batch_sharding(mesh: Mesh | None, data_axis: str = "data") -> NamedSharding | None:
  """Sharding of host inputs [B, ...]: rows over the data axis."""
  return None if mesh is None else NamedSharding(mesh, P(data_axis))


def data_size(mesh: Mesh | None, data_axis: str = "data") -> int:
  return 1 if mesh is None else int(mesh.shape[data_axis])

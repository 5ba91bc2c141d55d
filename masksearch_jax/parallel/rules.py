"""Logical axis names for every parameter and activation, and the rules mapping them to mesh axes.

Model code never mentions the mesh: shardings are derived here from (param path -> logical axes)
and (logical axis -> mesh axes). A dimension that a mesh axis does not divide is replicated along
that axis (logged), except attention heads, where a silent fallback would hide a bad config.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from masksearch_jax.model.config import Qwen2Config

log = logging.getLogger(__name__)

# Logical axes of each parameter (see model/qwen2.py for the tree).
PARAM_AXES: dict[str, tuple[str | None, ...]] = {
    "embed": ("vocab", "embed"), "final_norm": ("norm",), "lm_head": ("embed", "vocab"),
    "input_norm": ("layers", "norm"), "post_norm": ("layers", "norm"),
    "q": ("layers", "embed", "q_heads", "head_dim"), "q_bias": ("layers", "q_heads", "head_dim"),
    "k": ("layers", "embed", "kv_heads", "head_dim"), "k_bias": ("layers", "kv_heads", "head_dim"),
    "v": ("layers", "embed", "kv_heads", "head_dim"), "v_bias": ("layers", "kv_heads", "head_dim"),
    "o": ("layers", "q_heads", "head_dim", "embed"),
    "gate": ("layers", "embed", "mlp"), "up": ("layers", "embed", "mlp"),
    "down": ("layers", "mlp", "embed"),
}

# FSDP + tensor parallel (MaxText-style defaults).
DEFAULT_RULES: dict[str, tuple[str, ...] | str | None] = {
    "vocab": "tensor", "embed": "fsdp", "q_heads": "tensor", "kv_heads": "tensor",
    "mlp": "tensor", "layers": None, "head_dim": None, "norm": None,
    "batch": ("data", "fsdp"), "seq": None, "cache_seq": None,
}


def _axis_size(mesh: Mesh, axes) -> int:
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  n = 1
  for a in axes:
    n *= mesh.shape[a]
  return n


def check_divisibility(cfg: Qwen2Config, mesh: Mesh, rules: Mapping = DEFAULT_RULES) -> None:
  t = _axis_size(mesh, rules.get("q_heads"))
  if cfg.num_heads % t:
    raise ValueError(f"tensor-parallel size {t} does not divide num_heads={cfg.num_heads} of "
                     f"{cfg.name}; choose a tensor axis among the divisors of {cfg.num_heads}")


def logical_to_spec(logical: tuple, shape: tuple[int, ...], mesh: Mesh,
                    rules: Mapping = DEFAULT_RULES, name: str = "") -> P:
  spec = []
  for ax, dim in zip(logical, shape):
    mesh_axes = rules.get(ax) if ax is not None else None
    n = _axis_size(mesh, mesh_axes)
    if n > 1 and dim % n:
      log.info("%s: dim %s=%d not divisible by %s (size %d); replicated", name, ax, dim, mesh_axes, n)
      mesh_axes = None
    spec.append(mesh_axes)
  return P(*spec)


def param_shardings(params_or_shapes: Any, cfg: Qwen2Config, mesh: Mesh,
                    rules: Mapping = DEFAULT_RULES) -> Any:
  """NamedSharding pytree matching params (arrays or ShapeDtypeStructs)."""
  check_divisibility(cfg, mesh, rules)

  def one(path, leaf):
    name = path[-1].key
    logical = PARAM_AXES[name]
    return NamedSharding(mesh, logical_to_spec(logical, leaf.shape, mesh, rules, name))
  return jax.tree_util.tree_map_with_path(one, params_or_shapes)


def shard_params(params: Any, cfg: Qwen2Config, mesh: Mesh, rules: Mapping = DEFAULT_RULES) -> Any:
  return jax.device_put(params, param_shardings(params, cfg, mesh, rules))


def batch_sharding(mesh: Mesh, rules: Mapping = DEFAULT_RULES, ndim: int = 2) -> NamedSharding:
  """[batch, seq, ...] inputs: batch over data (+fsdp), the rest replicated."""
  return NamedSharding(mesh, P(rules["batch"], *([None] * (ndim - 1))))


def check_batch(batch_size: int, mesh: Mesh, rules: Mapping = DEFAULT_RULES, what="batch_size"):
  n = _axis_size(mesh, rules["batch"])
  if batch_size % n:
    raise ValueError(f"{what}={batch_size} is not divisible by the data-parallel size {n} "
                     f"(mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']})")


def tree_shardings_like(tree: Any, params_shardings: Any, mesh: Mesh) -> Any:
  """Shardings for an optimizer state: subtrees shaped like params reuse the params' shardings
  (Adam moments), everything else (step counters, scalars) is replicated."""
  by_path = {}
  for path, s in jax.tree_util.tree_flatten_with_path(params_shardings)[0]:
    by_path[tuple(str(k) for k in path)] = s
  replicated = NamedSharding(mesh, P())

  def one(path, leaf):
    keys = tuple(str(k) for k in path)
    for n in range(len(keys)):
      s = by_path.get(keys[n:])
      if s is not None and len(s.spec) <= len(getattr(leaf, "shape", ())):
        return s
    return replicated
  return jax.tree_util.tree_map_with_path(one, tree)

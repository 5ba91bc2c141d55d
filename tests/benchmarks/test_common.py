"""benchmarks.common.hlo_sources: profiled kernel names -> the model line they come from."""
import jax
import jax.numpy as jnp

from benchmarks import common


def _f(x, w):
  y = jnp.sin(x) * 2.0                                   # the multiply fusion: this line
  return jnp.tanh(y @ w).sum()


def test_fusions_map_to_their_source_lines():
  text = jax.jit(_f).lower(jnp.ones((4, 8)), jnp.ones((8, 8))).compile().as_text()
  src = common.hlo_sources(text)
  line = _f.__code__.co_firstlineno + 1
  hits = {k: v for k, v in src.items() if v.startswith(f"test_common.py:{line} ")}
  assert hits and all(v.endswith(" mul") or v.endswith(" sin") for v in hits.values()), src


def test_old_style_metadata_and_kernel_name_sanitising():
  text = ('  %loop_add_fusion.3 = bf16[2]{0} fusion(%p), kind=kLoop, calls=%c, '
          'metadata={op_name="jit(step)/jvp(layer)/add" source_file="/x/qwen2.py" source_line=120}\n')
  assert common.hlo_sources(text) == {"loop_add_fusion_3": "qwen2.py:120 add"}

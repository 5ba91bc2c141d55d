"""Lower a jitted function for CUDA on this (GPU-less) machine: the Pallas kernels go through the
Triton lowering that a GPU run uses (not interpret mode), so a kernel the GPU backend would
reject fails here, in CI. Triton's own compile to PTX still only happens on a GPU."""
import jax
from jax import export

TRITON_CALL = "__gpu$xla.gpu.triton"


def triton_kernels(fn, *args) -> int:
  """How many Triton kernels fn(*args) lowers to for CUDA (args: arrays or ShapeDtypeStructs)."""
  exp = export.export(jax.jit(fn), platforms=["cuda"],
                      disabled_checks=[export.DisabledSafetyCheck.custom_call(TRITON_CALL)])(*args)
  return exp.mlir_module().count(f"@{TRITON_CALL}(")

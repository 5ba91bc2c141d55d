"""masksearch_jax: train Qwen2.5 models to search while they reason (MaskSearch) in JAX/Flax."""
from pathlib import Path

from setuptools import find_packages, setup


def _reqs(name):
  out = []
  for line in Path(__file__).with_name(name).read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if line and not line.startswith("-r"):
      out.append(line)
  return out


setup(
    name="masksearch_jax",
    version="0.1.0",
    description="MaskSearch (RAMP pre-training, SFT, DAPO RL) for Qwen2.5 in JAX/Flax on TPU/GPU",
    packages=find_packages(include=["masksearch_jax", "masksearch_jax.*"]),
    python_requires=">=3.11",
    install_requires=_reqs("requirements.txt"),
    extras_require={
        # CPU reference model for the equivalence tests (torch CPU build) and pytest.
        "test": _reqs("requirements-test.txt"),
        # GPU hosts: CUDA jaxlib from the same jax release.
        "gpu": ["jax[cuda12]==0.10.2"],
        # Cloud TPU VMs: libtpu from the same jax release.
        "tpu": ["jax[tpu]==0.10.2"],
    },
    include_package_data=True,
)

"""What every op's `api.py` shares: the backend names, how a backend name resolves on this
platform, and how a Pallas kernel runs off its own platform (interpret mode)."""

import jax
from jax.experimental.pallas import tpu as pltpu

from zoo_kernels.names import BACKENDS
VMEM_BUDGET = 16 * 2**20  # the default scoped-VMEM limit of TPU v4/v5e (v5p/v6e allow more)


def round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def tpu_interpret():
    """The `interpret=` of a TPU kernel: None on a TPU (compile it), elsewhere a simulation of
    VMEM/SMEM and DMAs in which out-of-bounds reads raise."""
    return None if jax.default_backend() == "tpu" else pltpu.InterpretParams(
        out_of_bounds_reads="raise")


def gpu_interpret() -> bool:
    """The `interpret=` of a GPU kernel: compile on a GPU, interpret elsewhere."""
    return jax.default_backend() != "gpu"


def resolve(op: str, backend: str, unsupported, *shaped) -> str:
    """The concrete backend `backend` means for `op` on this platform.

    unsupported: {"pallas_tpu": fn, "pallas_gpu": fn}, each fn(*shaped) giving why its kernel
    cannot take these shapes, or None. `auto` is the platform's kernel where it can, else XLA; a
    forced kernel that cannot take the shapes is a ValueError naming why.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown {op} backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        kernel = {"tpu": "pallas_tpu", "gpu": "pallas_gpu"}.get(jax.default_backend())
        return kernel if kernel and unsupported[kernel](*shaped) is None else "xla"
    if backend in unsupported and (problem := unsupported[backend](*shaped)) is not None:
        raise ValueError(problem)
    return backend

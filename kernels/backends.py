"""What every op's `api.py` shares: the backend names, and how a backend runs on the platform a
program is compiled for.

The platform is not the host's: one trace can be lowered for TPU, GPU or CPU
(`jit(f).trace(...).lower(lowering_platforms=...)`), and the devices a program runs on need not
be `jax.default_backend()`'s. So `run` decides with `lax.platform_dependent`, which traces every
branch and keeps in the compiled module only the branch of the platform it is lowered for:

  auto        Mosaic on TPU, Triton on GPU (each where it takes the shapes), XLA elsewhere;
  reference, xla  the same program everywhere.

A forced Pallas backend (`pallas_tpu`, `pallas_gpu`, for tests and debugging) is compiled when
this host's default backend is its platform and runs in Pallas interpret mode otherwise (TPU
kernels with simulated VMEM/SMEM and out-of-bounds reads raising), so a whole decode can run on
the TPU kernel on a laptop. That one choice is the host's: the TPU interpreter's ordered host
callbacks cannot sit in a `platform_dependent` branch beside a compiled kernel.
"""

import jax
from jax import lax
from jax.experimental.pallas import tpu as pltpu

from .names import BACKENDS

VMEM_BUDGET = 16 * 2**20  # the default scoped-VMEM limit of TPU v4/v5e (v5p/v6e allow more)
KERNELS = {"tpu": "pallas_tpu", "cuda": "pallas_gpu"}  # lowering platform -> its Pallas backend


def round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def interpret_params(backend: str, compiled: bool):
    """The `interpret=` of a Pallas kernel: compile it (None / False) or simulate it."""
    if backend == "pallas_tpu":
        return None if compiled else pltpu.InterpretParams(out_of_bounds_reads="raise")
    return not compiled


def resolve(op: str, backend: str, unsupported, *shaped, platform: str | None = None) -> str:
    """The concrete backend `backend` means for these shapes on `platform` ("cpu", "tpu", "gpu"
    or "cuda"; default: this host's), for reports and tests; `run` decides per program.

    unsupported: {"pallas_tpu": fn, "pallas_gpu": fn}, each fn(*shaped) giving why its kernel
    cannot take these shapes, or None. A forced kernel that cannot take them is a ValueError.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown {op} backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        kernel = KERNELS.get(_lowering_platform(platform or jax.default_backend()))
        return kernel if kernel and unsupported[kernel](*shaped) is None else "xla"
    if backend in unsupported and (problem := unsupported[backend](*shaped)) is not None:
        raise ValueError(problem)
    return backend


def run(op: str, backend: str, implementations, unsupported, shaped, *args):
    """`implementations[name](*args)` for what `backend` means on the compiled platform.

    implementations: {"reference": fn, "xla": fn, "pallas_tpu": fn, "pallas_gpu": fn}, the Pallas
    ones taking `compiled=` (False: interpret mode); `shaped` what `unsupported` reads.
    """
    resolve(op, backend, unsupported, *shaped, platform="cpu")  # names a bad or unfit backend
    if backend in ("reference", "xla"):
        return implementations[backend](*args)
    if backend == "auto":
        kernels = {platform: _compiled(implementations[kernel])
                   for platform, kernel in KERNELS.items() if unsupported[kernel](*shaped) is None}
        return lax.platform_dependent(*args, default=implementations["xla"], **kernels)
    compiled = KERNELS.get(_lowering_platform(jax.default_backend())) == backend
    return implementations[backend](*args, compiled=compiled)


def _compiled(impl):
    return lambda *a: impl(*a, compiled=True)


def _lowering_platform(platform: str) -> str:
    """A backend name as `lowering_platforms` spells it ("gpu" is CUDA's here)."""
    return "cuda" if platform == "gpu" else platform

"""Every backend-specific choice zoo makes, in one place.

zoo is developed on CPUs and run on TPUs and GPUs. XLA:CPU has slow paths that zoo works around
(16-bit GEMMs of 1-3 rows, 16-bit dots that read a transpose, scatters into 16-bit arrays, a decode
loop reading a cache far longer than its rows); none of those workarounds may reach a TPU or GPU
program. Asking `jax.default_backend()` while tracing cannot decide that: it names the host's
default devices, not the devices a program is compiled for, and one trace can be lowered for
several platforms (`jit(f).trace(...).lower(lowering_platforms=...)`). So every choice goes
through `on_cpu(cpu, default, *args)`, which is `lax.platform_dependent`: both
branches are traced, and the one for the platform the program is lowered for is the only one in
the compiled module. Every CPU branch runs under the named scope `CPU_WORKAROUND`, so a test reads
a lowered module's debug locations and sees whether any workaround is in it. The price is tracing
both branches (the AR loop twice, where its CPU form grows the cache), never compiling both.

The kernel package (`zoo_kernels`, which imports nothing from zoo) resolves its own `backend="auto"`
the same way: `lax.platform_dependent` over Mosaic on TPU, Triton on GPU, XLA elsewhere.
"""

import jax
from jax import lax

CPU_WORKAROUND = "zoo_cpu_workaround"  # named scope of every CPU-only branch


def on_cpu(cpu, default, *args):
    """`cpu(*args)` in a program compiled for CPU, `default(*args)` on any other platform. Both
    must return the same shapes and dtypes (as `lax.switch` branches do)."""
    def cpu_branch(*a):
        with jax.named_scope(CPU_WORKAROUND):
            return cpu(*a)
    return lax.platform_dependent(*args, cpu=cpu_branch, default=default)

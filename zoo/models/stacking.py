"""The two layouts of a backbone's block parameters, and the conversions between them.

per-layer: `block_0` .. `block_{L-1}`, one subtree per layer. Decoding reads this layout: its
caches are one buffer per layer (updated in place, see `protocol.after_forward`), and so are the
weights each layer reads.
stacked: `layers/block_j` (j < p, the length of `ModelConfig.scan_period`), every leaf with a
leading axis of L / p repeats whose logical name is "layers": what `nn.scan` trains when
`model.scan_layers` is set. Layer i is repeat i // p of `block_{i % p}`.

Why decoding never reads the stacked layout: taking layer i's weights out of a stack inside a
jitted step is a copy on XLA:CPU (an 8-layer stack of 512x512 matmuls compiled to 8 MiB of
temporaries, its whole weights, against 8 KiB per-layer), paid on every decoding step. Params
are converted once instead, where they are loaded (`zoo.runs.load_run`).
"""

import jax
import jax.numpy as jnp
import numpy as np

from zoo.config import ModelConfig

LAYERS = "layers"  # the stacked subtree, and the logical name of its leading axis


def is_stacked(params) -> bool:
    return LAYERS in params


def unstack_layers(params, config: ModelConfig):
    """Stacked params -> per-layer params (other entries unchanged)."""
    period = len(config.scan_period)
    out = {k: v for k, v in params.items() if k != LAYERS}
    for i in range(config.n_layers):
        out[f"block_{i}"] = jax.tree.map(lambda a: a[i // period],
                                         params[LAYERS][f"block_{i % period}"])
    return out


def _stack(*arrays):
    """Host arrays stay on the host (an import places each stacked tensor itself)."""
    xp = np if all(isinstance(a, np.ndarray) for a in arrays) else jnp
    return xp.stack(arrays)


def stack_layers(params, config: ModelConfig):
    """Per-layer params -> stacked params (other entries unchanged)."""
    period = len(config.scan_period)
    out = {k: v for k, v in params.items() if not k.startswith("block_")}
    out[LAYERS] = {f"block_{j}": jax.tree.map(
        _stack, *(params[f"block_{i}"] for i in range(j, config.n_layers, period)))
        for j in range(period)}
    return out

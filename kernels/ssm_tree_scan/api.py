"""One entry point for the Mamba2 (SSD) tree scan; `backend=` picks the implementation.

  auto        the Pallas kernel of the platform (TPU -> pallas_tpu, GPU -> pallas_gpu, falling
              back to xla for shapes the kernel cannot take), the XLA path on CPU;
  reference   the readable truth (the recurrence node by node), for tests;
  xla         the fast pure-XLA path (masked SSD form, one pass);
  pallas_tpu  the Mosaic kernel (tpu.py);
  pallas_gpu  the Triton kernel (gpu.py).

A Pallas backend forced on a platform it was not written for runs in Pallas interpret mode (TPU
kernels with simulated VMEM/SMEM and out-of-bounds reads raising), so every backend runs
everywhere; the choice is made when the program is lowered (`zoo_kernels.backends.run`), not from
the host's default backend. `node_state` and `path_state` (the state after one node, for commit)
are pure jnp on every platform.
"""

from .. import backends
from ..backends import BACKENDS
from . import gpu, reference, tpu, xla


def _pallas_tpu(*args, compiled):
    return tpu.ssm_tree_scan(*args, interpret=backends.interpret_params("pallas_tpu", compiled))


def _pallas_gpu(*args, compiled):
    return gpu.ssm_tree_scan(*args, interpret=backends.interpret_params("pallas_gpu", compiled))


_UNSUPPORTED = {"pallas_tpu": tpu.unsupported, "pallas_gpu": gpu.unsupported}


def resolve_backend(backend: str, x, B, platform: str | None = None) -> str:
    """The concrete backend `backend` means for these shapes on `platform` ("cpu", "tpu",
    "gpu"; default: this host's)."""
    return backends.resolve("ssm_tree_scan", backend, _UNSUPPORTED, x, B, platform=platform)


def _dims(op: str, x, B):
    """(Bt, T, H, P, N) of x [Bt, T, H, P] and B [Bt, T, G, N], checked against each other."""
    if x.ndim != 4 or B.ndim != 4:
        raise ValueError(f"{op}: x {x.shape} and B {B.shape} must be 4-D: [Bt, T, H, P] and "
                         f"[Bt, T, G, N]")
    (bt, t, h, p), (g, n) = x.shape, B.shape[2:]
    if B.shape[:2] != (bt, t):
        raise ValueError(f"{op}: B has shape {B.shape}, expected ({bt}, {t}, G, N) for x of "
                         f"shape {x.shape}")
    if h % g:
        raise ValueError(f"{op}: {h} heads (x {x.shape}) are not a multiple of {g} groups "
                         f"(B {B.shape})")
    return bt, t, h, p, n


def _check_shapes(op: str, x, B, **tensors):
    """Raise a ValueError naming the first of `tensors` (name=(array, expected shape)) whose
    shape is not the expected one."""
    for name, (array, expected) in tensors.items():
        if array.shape != expected:
            raise ValueError(f"{op}: {name} has shape {array.shape}, expected {expected} for x of "
                             f"shape {x.shape} and B of shape {B.shape}")


def ssm_tree_scan(x, dt, A, B, C, D, h0, parents, *, backend: str = "auto", ancestors=None):
    """Mamba2 outputs of T tree nodes, each as if decoded along its root-to-node path from h0.

    Shapes: x [Bt, T, H, P]; dt [Bt, T, H] (positive); A, D [H]; B, C [Bt, T, G, N] shared by
    the H // G heads of a group; h0 [Bt, H, P, N] float32; parents int32[Bt, T] (topological,
    roots -1, a forest is allowed). `ancestors`: `zoo_kernels.trees.ancestor_mask(parents)` if the
    caller has it (a model builds it once per extend for all its layers); the XLA path reads it,
    the Pallas kernels build the mask in-kernel. Returns (y [Bt, T, H, P] in x's dtype,
    log_decay [Bt, T, H] float32, the root-to-node sum of dt * A).
    """
    bt, t, h, p, n = _dims("ssm_tree_scan", x, B)
    _check_shapes("ssm_tree_scan", x, B, dt=(dt, (bt, t, h)), A=(A, (h,)), C=(C, B.shape),
                  D=(D, (h,)), h0=(h0, (bt, h, p, n)), parents=(parents, (bt, t)))
    if ancestors is not None:
        _check_shapes("ssm_tree_scan", x, B, ancestors=(ancestors, (bt, t, t)))
    implementations = {"reference": reference.ssm_tree_scan, "pallas_tpu": _pallas_tpu,
                       "pallas_gpu": _pallas_gpu,
                       # The XLA path reads the caller's ancestor mask; the kernels build theirs.
                       "xla": lambda *args: xla.ssm_tree_scan(*args, ancestors)}
    return backends.run("ssm_tree_scan", backend, implementations, _UNSUPPORTED, (x, B),
                        x, dt, A, B, C, D, h0, parents)


def node_state(x, dt, B, log_decay, h0, parents, node):
    """The state h after node `node[b]` of each row, float32 [Bt, H, P, N] (h0 where node is -1),
    from the inputs of `ssm_tree_scan` and the log_decay it returned; node is int32[Bt]."""
    bt, t, h, p, n = _dims("node_state", x, B)
    _check_shapes("node_state", x, B, dt=(dt, (bt, t, h)), log_decay=(log_decay, (bt, t, h)),
                  h0=(h0, (bt, h, p, n)), parents=(parents, (bt, t)), node=(node, (bt,)))
    return xla.node_state(x, dt, B, log_decay, h0, parents, node)


def path_state(x, dt, B, log_decay, h0, on_path, node):
    """`node_state` with the node's root-to-node path given as a mask, bool[Bt, T] (no node
    where node is -1): a commit reads it off the accepted path, with no ancestor mask."""
    bt, t, h, p, n = _dims("path_state", x, B)
    _check_shapes("path_state", x, B, dt=(dt, (bt, t, h)), log_decay=(log_decay, (bt, t, h)),
                  h0=(h0, (bt, h, p, n)), on_path=(on_path, (bt, t)), node=(node, (bt,)))
    return xla.path_state(x, dt, B, log_decay, h0, on_path, node)

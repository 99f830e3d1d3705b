"""SSM tree scan: the one-pass XLA path against the node-by-node reference and against the naive
way of verifying a tree with a recurrent model, re-scanning every root-to-leaf path on its own.

    python bench/ssm_tree_scan.py [--repeats 20]

One Mamba2 layer's scan (batch 1, H=8 heads, P=64, N=64, one group, float32 on this CPU) over
trees of T in {4, 16, 64} nodes: random bushy and deep trees, and a chain. Median wall time per
jitted call of: xla (masked SSD form, work ~ T² per head); reference (T sequential node steps,
all per-node states kept); naive (vmap over the leaves of a lax.scan along each leaf's
root-to-leaf path, paths front-padded with identity steps to the longest, so its work is
~ leaves x depth steps and shared prefixes are recomputed). "path sum" is the sum of root-to-leaf
path lengths, the naive approach's work without padding; T is that of one pass over the tree.
Pallas kernels are not timed here (interpret mode measures the interpreter).
"""

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import machine, markdown_table, median_seconds, write_result  # noqa: E402

from zoo_kernels.ssm_tree_scan import ssm_tree_scan  # noqa: E402

BT, H, P, N, G = 1, 8, 64, 64, 1  # one small Mamba2 layer
TREE_SIZES = (4, 16, 64)


def tree_parents(kind: str, t: int, rng: np.random.Generator) -> np.ndarray:
    """chain; bushy: a uniformly random earlier parent (shallow, many leaves); deep: a parent among
    the two previous nodes (long branches sharing long prefixes)."""
    if kind == "chain":
        return np.arange(t) - 1
    if kind == "deep":
        return np.array([-1] + [i - 1 - int(rng.integers(0, min(i, 2))) for i in range(1, t)])
    return np.array([-1] + [int(rng.integers(0, i)) for i in range(1, t)])


def root_to_leaf_paths(parents: np.ndarray) -> list[list[int]]:
    leaves = sorted(set(range(len(parents))) - set(parents.tolist()))
    paths = []
    for leaf in leaves:
        path, node = [], leaf
        while node >= 0:
            path.insert(0, node)
            node = parents[node]
        paths.append(path)
    return paths


def _sequential_scan(x, dt, A, B, C, D, h0):
    """Plain Mamba2 decoding along one sequence: x [Bt, L, H, P], B, C [Bt, L, G, N]."""
    heads_per_group = x.shape[2] // B.shape[2]

    def token(state, inputs):
        x_t, dt_t, b_t, c_t = inputs
        b_t, c_t = (jnp.repeat(v, heads_per_group, axis=1) for v in (b_t, c_t))
        state = (jnp.exp(dt_t * A)[..., None, None] * state
                 + jnp.einsum("bhp,bhn->bhpn", dt_t[..., None] * x_t, b_t))
        return state, jnp.einsum("bhpn,bhn->bhp", state, c_t) + D[:, None] * x_t

    _, y = jax.lax.scan(token, h0, tuple(jnp.moveaxis(a, 1, 0) for a in (x, dt, B, C)))
    return jnp.moveaxis(y, 0, 1)


def naive_path_scans(paths: list[list[int]], t: int):
    """A jittable fn(x, dt, A, B, C, D, h0) -> y [Bt, T, H, P] that scans every root-to-leaf path
    separately (vmapped over the leaves) and writes each node's output back from its paths."""
    longest = max(map(len, paths))
    padded = np.array([[-1] * (longest - len(path)) + path for path in paths])  # [leaves, longest]
    nodes, real = jnp.asarray(np.maximum(padded, 0)), jnp.asarray(padded >= 0)
    # A padding step has dt = 0 and x = 0: decay 1 and no input, so h0 passes through unchanged.
    targets = jnp.asarray(np.where(padded >= 0, padded, t).reshape(-1))

    def run(x, dt, A, B, C, D, h0):
        def one_path(path_nodes, path_real):
            keep = path_real[None, :, None]
            return _sequential_scan(x[:, path_nodes] * keep[..., None], dt[:, path_nodes] * keep,
                                    A, B[:, path_nodes], C[:, path_nodes], D, h0)

        per_path = jax.vmap(one_path)(nodes, real)  # [leaves, Bt, longest, H, P]
        per_path = per_path.transpose(1, 0, 2, 3, 4).reshape(x.shape[0], -1, *x.shape[2:])
        out = jnp.zeros((x.shape[0], t + 1, *x.shape[2:]), x.dtype)
        return out.at[:, targets].set(per_path)[:, :t]

    return run


def _inputs(parents: np.ndarray, seed: int = 0):
    keys = jax.random.split(jax.random.key(seed), 7)
    t = len(parents)
    return (jax.random.normal(keys[0], (BT, t, H, P)),
            jax.nn.softplus(jax.random.normal(keys[1], (BT, t, H)) - 1.0),
            -jnp.exp(jax.random.uniform(keys[2], (H,), minval=-1.0, maxval=1.0)),
            jax.random.normal(keys[3], (BT, t, G, N)), jax.random.normal(keys[4], (BT, t, G, N)),
            jax.random.normal(keys[5], (H,)), jax.random.normal(keys[6], (BT, H, P, N)),
            jnp.asarray(parents[None], jnp.int32))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)

    rows, results = [], []
    for kind in ("bushy", "deep", "chain"):
        for t in TREE_SIZES:
            parents = tree_parents(kind, t, rng)
            paths = root_to_leaf_paths(parents)
            inputs = _inputs(parents)
            fns = {"xla": jax.jit(lambda *a: ssm_tree_scan(*a, backend="xla")[0]),
                   "reference": jax.jit(lambda *a: ssm_tree_scan(*a, backend="reference")[0]),
                   "naive": jax.jit(lambda *a, run=naive_path_scans(paths, t): run(*a[:7]))}
            outputs = {name: fn(*inputs) for name, fn in fns.items()}
            for name in ("reference", "naive"):  # all three compute the same thing
                np.testing.assert_allclose(outputs[name], outputs["xla"], rtol=1e-4, atol=1e-3)
            ms = {name: 1e3 * median_seconds(lambda fn=fn: fn(*inputs).block_until_ready(),
                                             repeats=args.repeats)
                  for name, fn in fns.items()}
            path_sum = sum(map(len, paths))
            results.append({"tree": kind, "tree_nodes": t, "leaves": len(paths),
                            "path_length_sum": path_sum, "depth": max(map(len, paths)),
                            **{f"ms_{name}": v for name, v in ms.items()}})
            rows.append([kind, t, len(paths), max(map(len, paths)), path_sum,
                         f"{path_sum / t:.1f}", f"{ms['xla']:.3f}", f"{ms['reference']:.3f}",
                         f"{ms['naive']:.3f}", f"{ms['naive'] / ms['xla']:.1f}x",
                         f"{ms['reference'] / ms['xla']:.1f}x"])
    headers = ["tree", "T", "leaves", "depth", "path sum", "path sum / T", "xla ms",
               "reference ms", "naive ms", "naive / xla", "reference / xla"]
    table = markdown_table(headers, rows)
    print(f"SSM tree scan, batch {BT}, {H} heads, P={P}, N={N}, {G} group, float32; median of "
          f"{args.repeats}\n{table}")
    path = write_result("ssm_tree_scan", {"machine": machine(), "batch": BT, "heads": H,
                                          "head_dim": P, "state_dim": N, "groups": G,
                                          "repeats": args.repeats, "results": results}, table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

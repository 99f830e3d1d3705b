"""Measure what `zoo.decode.tree_search` needs on this device: extend cost per tree size,
drafter cost per depth, and the drafter's positional acceptance on real prompts.

    cal = calibrate(target, params, drafter_for, prompts, max_depth=4)
    choice = best_tree(cal.acceptance, cal.costs, max_depth=4)

`drafter_for(template)` builds the drafter over a `StaticTree` template (a chain for chain-only
drafters). Acceptance comes from one speculative run with a "fan chain" (`fan` candidates after
every node of the rank-0 chain): every rank up to `fan` is offered at every depth. Costs are
medians of warm, jitted calls at the prompts' batch size: a target step (extend + verify +
commit) per size T, and the engine's whole step with chains of every depth minus the target's
part of it, which leaves the drafter's proposal and update.
"""

import dataclasses
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from zoo_kernels.trees import chain_parents
from zoo.decode import speculative
from zoo.decode.ar import pad_prompts
from zoo.decode.sampling import Sampler
from zoo.decode.tree_search import Costs
from zoo.decode.trees import chain_tree, static_tree
from zoo.decode.verify import verify_greedy

SIZES = (1, 2, 4, 8, 16, 32, 64)
FILENAME = "tree_calibration.json"  # in the target's run directory


@dataclasses.dataclass(frozen=True)
class Calibration:
    acceptance: tuple[tuple[float, ...], ...]  # [depth][rank], see zoo.decode.tree_search
    costs: Costs

    def to_json(self) -> dict:
        return {"acceptance": [list(row) for row in self.acceptance],
                "extend": {str(t): s for t, s in self.costs.extend.items()},
                "draft": list(self.costs.draft)}

    @classmethod
    def from_json(cls, data: dict) -> "Calibration":
        return cls(tuple(tuple(row) for row in data["acceptance"]),
                   Costs({int(t): s for t, s in data["extend"].items()}, tuple(data["draft"])))


def fan_chain(depth: int, fan: int):
    """`fan` candidates after the root and after every rank-0 node down to `depth`."""
    return static_tree([(0,) * d + (r,) for d in range(depth) for r in range(fan)])


def _median_seconds(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _target_steps(target, t: int, steps: int):
    """A jitted run of `steps` target steps (extend, verify, commit) over a T-node chain in one
    loop, as the engine runs them: no dispatch per step (on a small model it would outweigh the
    step), and the tree a constant, as a static template is (XLA folds its structure)."""
    parents = chain_parents(t)[None]

    def run(params, cache, tokens):
        def step(_, cache):
            tree = jnp.broadcast_to(parents, tokens.shape)
            logits, _, pending = target.extend(params, cache, tokens, tree)
            verdict = verify_greedy(tokens, tree, logits)
            return target.commit(cache, pending, verdict.path,
                                 jnp.minimum(verdict.n_accepted, 1))

        return jax.lax.fori_loop(0, steps, step, cache)

    return jax.jit(run)


def extend_costs(target, params, prompts, sizes=SIZES, repeats: int = 5,
                 steps: int = 8) -> dict[int, float]:
    """{T: seconds of one target step verifying a T-node chain} over a cache of the prompts.
    The tree's shape does not change the work of an extend, only its size."""
    tokens, lengths = pad_prompts(prompts, target.vocab_size, pad_id=0)
    _, _, cache = target.prefill(params, jnp.asarray(tokens), jnp.asarray(lengths),
                                 tokens.shape[1] + steps)
    costs = {}
    for t in sizes:
        run, nodes = _target_steps(target, t, steps), jnp.zeros((len(prompts), t), jnp.int32)
        costs[t] = _median_seconds(lambda: run(params, cache, nodes), repeats) / steps
    # A bigger tree is never cheaper; a smaller measurement than a smaller tree's is noise.
    sizes = sorted(costs)
    return dict(zip(sizes, np.maximum.accumulate([costs[t] for t in sizes]).tolist()))


def calibrate(target, params, drafter_for, prompts, *, max_depth: int, fan: int = 4,
              acceptance_prompts=None, sampler: Sampler = Sampler(), max_new_tokens: int = 128,
              sizes=SIZES, repeats: int = 5) -> Calibration:
    """See the module docstring. Costs are measured at the batch of `prompts`, acceptance over
    `acceptance_prompts` (default: the same; more prompts, less noise) decoding with `sampler`
    (acceptance under sampling differs from greedy). `fan=1` for drafters that only draft
    chains."""
    if max_depth < 1 or fan < 1:
        raise ValueError(f"max_depth and fan must be >= 1, got {max_depth} and {fan}")
    extend = extend_costs(target, params, prompts, sizes, repeats)
    drafter, drafter_params = drafter_for(fan_chain(max_depth, fan))
    out = speculative.generate(target, params, acceptance_prompts or prompts, drafter=drafter,
                               drafter_params=drafter_params, max_new_tokens=max_new_tokens,
                               sampler=sampler, rng=jax.random.key(0), eos_id=-1, pad_id=0)
    table = out.acceptance[:, :fan]
    draft, target_only = [0.0], Costs(extend, (0.0,))
    for depth in range(1, max_depth + 1):
        drafter, drafter_params = drafter_for(chain_tree(depth))
        fn = functools.partial(speculative.generate, target, params, prompts, drafter=drafter,
                               drafter_params=drafter_params, max_new_tokens=max_new_tokens,
                               eos_id=-1, pad_id=0)
        steps = int(fn().target_forwards.max())  # loop iterations: the longest row's forwards
        per_step = _median_seconds(lambda: fn().tokens, repeats) / max(steps, 1)
        draft.append(max(per_step - target_only.target_step(depth + 1), 0.0))
    return Calibration(tuple(tuple(float(a) for a in row) for row in table),
                       Costs(extend, tuple(draft)))


def save(path, key: str, calibration: Calibration) -> None:
    """Add `calibration` under `key` to the JSON file at `path` (created if missing)."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = calibration.to_json()
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def load(path, key: str) -> Calibration | None:
    if not path.is_file():
        return None
    entry = json.loads(path.read_text()).get(key)
    return None if entry is None else Calibration.from_json(entry)


__all__ = ["FILENAME", "Calibration", "calibrate", "extend_costs", "fan_chain", "save", "load"]

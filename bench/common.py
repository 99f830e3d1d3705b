"""Helpers shared by the benchmarks: timing medians, machine description, result files."""

import json
import pathlib
import platform
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def median_seconds(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of `fn()` (which must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "cpu_count": __import__("os").cpu_count()}


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(name: str, payload: dict, table: str) -> pathlib.Path:
    """Write `name`.json and `name`.md to bench/results, then the result's chart (`name`.png,
    bench/charts.py) when it has one; the JSON's path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    (RESULTS / f"{name}.md").write_text(table + "\n")
    if __package__:  # imported as bench.common (from the repository root)
        from bench import charts  # noqa: PLC0415
    else:  # imported as common (bench/ on sys.path, as the benchmarks run)
        import charts  # noqa: PLC0415
    try:  # drawn from the JSON as saved (keys made strings), as `python bench/charts.py` does
        chart = charts.draw(name, json.loads(path.read_text()), RESULTS)
    except ModuleNotFoundError as e:  # without matplotlib, keep the results written above
        if e.name != "matplotlib":
            raise
        print(f"no chart for {name}: matplotlib is not installed (pip install -e .[notebooks])")
    else:
        if chart:
            print(f"wrote {chart}")
    return path


def tree_attention_inputs(b, t, s, lengths, h, kv, d, dtype):
    """Random tree-attention arguments (q, caches, lengths, new K/V, random parents) in the
    kernels' contract: b rows, t tree nodes, s cache slots, h query and kv KV heads of dim d."""
    keys = jax.random.split(jax.random.key(0), 5)
    rng = np.random.default_rng(0)
    parents = np.stack([[-1] + [int(rng.integers(0, i)) for i in range(1, t)] for _ in range(b)])
    return (jax.random.normal(keys[0], (b, t, h, d), dtype),
            jax.random.normal(keys[1], (b, kv, s, d), dtype),
            jax.random.normal(keys[2], (b, kv, s, d), dtype),
            jnp.asarray(lengths, jnp.int32),
            jax.random.normal(keys[3], (b, t, kv, d), dtype),
            jax.random.normal(keys[4], (b, t, kv, d), dtype),
            jnp.asarray(parents, jnp.int32))


def interleaved_seconds(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """Median wall time of each `fns[name]()`, timed in turn round by round, so that a change in
    the machine's load between rounds hits every entry alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def random_batch(config) -> np.ndarray:
    """int[B, T + 1] random byte tokens of `config.data`'s batch shape (inputs, then targets
    shifted by one)."""
    dc = config.data
    return np.random.default_rng(0).integers(0, 256, (dc.batch_size, dc.seq_len + 1))


def zoo_train_step(config, tokens):
    """(step, compiled): `step()` runs one jitted AdamW step of zoo's model (the state carried
    from step to step) and waits for it; `compiled` is that step compiled (its HLO, its cost)."""
    from zoo.models import build_model
    from zoo.train.optimizer import learning_rate_schedule, make_optimizer
    from zoo.train.steps import init_state, make_train_step

    model = build_model(config.model)
    tx = make_optimizer(config.train)
    step = make_train_step(model, tx, learning_rate_schedule(config.train))
    state = [init_state(model, tx, jax.random.key(0))]
    batch = {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:])}

    def run():
        state[0], metrics = step(state[0], batch)
        jax.block_until_ready(metrics)

    return run, step.lower(state[0], batch).compile()


def step_flops(compiled) -> float:
    """FLOPs of a compiled computation by XLA's cost analysis."""
    cost = compiled.cost_analysis()
    return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


def torch_train_step(config, tokens, autocast_dtype=None):
    """`step()`: one eager PyTorch AdamW step (cross-entropy, clipping) of the same model in
    transformers, on zoo's initial weights exported; with `autocast_dtype` (torch.bfloat16) the
    forward runs under CPU autocast, the loss in float32."""
    import contextlib
    import tempfile

    import torch
    import transformers

    from zoo.export import hf
    from zoo.export.convert import architecture
    from zoo.models import build_model

    arch = architecture(config.model.family)
    with tempfile.TemporaryDirectory() as tmp:
        hf.write(tmp, arch.hf_config(config.model), arch.tensor_map(config.model),
                 build_model(config.model).init(jax.random.key(0)))
        model = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs, targets = torch.tensor(tokens[:, :-1]), torch.tensor(tokens[:, 1:])
    autocast = (torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype
                else contextlib.nullcontext())

    def run():
        with autocast:
            logits = model(inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return run


def train_step_rates(config, repeats) -> tuple[float, float]:
    """Training tokens/s of one AdamW step, zoo (jitted) and PyTorch (eager, same model)."""
    tokens = random_batch(config)
    zoo_step, _ = zoo_train_step(config, tokens)
    seconds = interleaved_seconds({"zoo": zoo_step, "torch": torch_train_step(config, tokens)},
                                  repeats, warmup=2)
    n = tokens.shape[0] * (tokens.shape[1] - 1)
    return n / seconds["zoo"], n / seconds["torch"]

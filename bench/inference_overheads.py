"""What inference no longer wastes (issue 16 item 2), measured in one run against the old way:

  * prefill temporaries: a prompt's logits at every position ([B, P, V] float32) against the
    last position only (`prefill(..., logits_at=)`), from XLA's memory analysis of the compiled
    prefill, and its time;
  * loading a run for generation: restoring the parameters alone (what `load_run` does) against
    the whole train state (parameters + AdamW moments).

The prefill is the 23M-parameter decode model (random weights) with its byte vocabulary and with
a 32k subword vocabulary, where [B, P, V] float32 logits dominate a prefill.

    python bench/inference_overheads.py [--config configs/experiments/decode_24m.yaml]
        [--run runs/bench/code_small]
"""

import argparse
import dataclasses
import pathlib
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import machine, markdown_table, median_seconds, write_result  # noqa: E402

from zoo import config as config_lib  # noqa: E402
from zoo.checkpoint import Checkpointer  # noqa: E402
from zoo.models import build_model  # noqa: E402
from zoo.train.optimizer import make_optimizer  # noqa: E402
from zoo.train.steps import TrainState  # noqa: E402


def prefill_rows(config, batch: int, prompt_len: int, vocab: int, repeats: int) -> list[dict]:
    model = build_model(dataclasses.replace(config.model, vocab_size=vocab))
    params = model.init(jax.random.key(0))
    tokens = jnp.ones((batch, prompt_len), jnp.int32)
    lengths = jnp.full((batch,), prompt_len, jnp.int32)
    rows = []
    for name, logits_at in (("all positions", None), ("last position", (lengths - 1)[:, None])):
        fn = jax.jit(lambda p, t, n, at: model.prefill(p, t, n, prompt_len + 128, logits_at=at))
        compiled = fn.lower(params, tokens, lengths, logits_at).compile()
        memory = compiled.memory_analysis()
        seconds = median_seconds(lambda: jax.block_until_ready(
            compiled(params, tokens, lengths, logits_at)), repeats=repeats)
        rows.append({"vocab": vocab, "logits": name, "temp_mib": memory.temp_size_in_bytes / 2**20,
                     "output_mib": memory.output_size_in_bytes / 2**20, "seconds": seconds})
    return rows


def load_rows(run_dir: pathlib.Path, repeats: int) -> list[dict]:
    config = config_lib.load(run_dir / "config.yaml")
    model = build_model(config.model)
    tx = make_optimizer(config.train)
    params = jax.eval_shape(model.init, jax.random.key(0))
    state = jax.eval_shape(lambda p: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p)), params)
    def restore(how, tree):
        # A fresh checkpointer per restore: orbax binds one restore kind per item and manager.
        checkpointer = Checkpointer(run_dir / "checkpoints", async_save=False)
        try:
            restored = getattr(checkpointer, how)(tree)
            return jax.block_until_ready(restored[0] if how == "restore" else restored)
        finally:
            checkpointer.close()

    full = median_seconds(lambda: restore("restore", state), repeats=repeats)
    only = median_seconds(lambda: restore("restore_params", params), repeats=repeats)
    def size(tree):
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)) / 2**20

    return [{"restore": "whole train state", "mib": size(state), "seconds": full},
            {"restore": "parameters only", "mib": size(params), "seconds": only}]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/experiments/decode_24m.yaml")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--vocabs", type=int, nargs="+", default=[260, 32000],
                        help="vocabulary sizes (the byte model's, and a subword model's)")
    parser.add_argument("--run", default="runs/bench/code_small",
                        help="a trained run directory to time restores on")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    config = config_lib.load(args.config)
    prefill = [row for vocab in args.vocabs
               for row in prefill_rows(config, args.batch, args.prompt_len, vocab, args.repeats)]
    run = pathlib.Path(args.run)
    load = load_rows(run, args.repeats) if (run / "checkpoints").is_dir() else []
    table = markdown_table(
        ["vocab", "prefill logits", "temporaries (MiB)", "outputs (MiB)", "time (ms)"],
        [[f"{r['vocab']:,}", r["logits"], f"{r['temp_mib']:.1f}", f"{r['output_mib']:.1f}",
          f"{r['seconds'] * 1e3:.1f}"] for r in prefill])
    table += (f"\n\n{config.name}, batch {args.batch}, {args.prompt_len}-token prompts, XLA memory "
              f"analysis of the compiled prefill, median of {args.repeats}.")
    if load:
        table += "\n\n" + markdown_table(
            ["restore", "MiB", "time (ms)"],
            [[r["restore"], f"{r['mib']:.1f}", f"{r['seconds'] * 1e3:.1f}"] for r in load])
        table += f"\n\nRun {run}, median of {args.repeats} restores."
    print(table)
    payload = {"machine": machine(), "config": config_lib.to_dict(config), "batch": args.batch,
               "prompt_len": args.prompt_len, "prefill": prefill, "run": str(run), "load": load}
    print(f"wrote {write_result('inference_overheads', payload, table)}")


if __name__ == "__main__":
    main()

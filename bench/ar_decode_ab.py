"""AR decode throughput of two code trees (before / after a change) in turns, so that both see the
same load: on this shared 2-core machine the load moves by 2x within minutes, so two runs of
`bench/ar_decode.py` minutes apart do not compare. One worker process per tree (PYTHONPATH=tree)
compiles once, then the two take turns on the same requests (greedy, EOS off); per batch size the
median ms/step of each and the median of the per-round after/before ratios.

    git worktree add /tmp/before <rev>
    python bench/ar_decode_ab.py --before /tmp/before [--after .] [--batches 1 16] [--rounds 8]
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def worker(config_path: str, new_tokens: int, prompt_len: int, max_len: int):
    """Read a batch size per stdin line; answer one JSON line: the first call's seconds and the
    tokens' checksum (first time per batch size), else ms per step of one `generate`."""
    import jax
    import numpy as np

    from zoo import config as config_lib
    from zoo.data.tokenizer import PAD_ID
    from zoo.decode.ar import generate
    from zoo.models import build_model

    config = config_lib.load(config_path)
    model = build_model(config.model)
    params = model.init(jax.random.key(0))
    prompt = list(range(1, prompt_len + 1))
    seen = set()
    for line in sys.stdin:
        batch = int(line)
        start = time.perf_counter()
        out = generate(model, params, [prompt] * batch, max_new_tokens=new_tokens, eos_id=-1,
                       pad_id=PAD_ID, max_len=max_len)
        seconds = time.perf_counter() - start
        if batch not in seen:
            seen.add(batch)
            answer = {"first_call_s": seconds, "checksum": int(np.asarray(out.tokens).sum())}
        else:
            answer = {"ms_step": seconds / new_tokens * 1e3}
        print(json.dumps(answer), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", help="the code tree before the change (required)")
    parser.add_argument("--after", default=str(ROOT), help="the code tree after it")
    parser.add_argument("--config", default="configs/experiments/decode_24m.yaml")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--name", default="ar_decode_ab", help="results file name (bench/results)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    config_path = str((ROOT / args.config).resolve())
    if args.worker:
        return worker(config_path, args.new_tokens, args.prompt_len, args.max_len)
    if not args.before:
        parser.error("--before is required: the code tree to compare against")

    trees = {"before": str(pathlib.Path(args.before).resolve()),
             "after": str(pathlib.Path(args.after).resolve())}
    command = [sys.executable, __file__, "--worker", "--config", config_path,
               "--new-tokens", str(args.new_tokens), "--prompt-len", str(args.prompt_len),
               "--max-len", str(args.max_len)]
    workers = {side: subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, cwd=tree, env={**os.environ, "PYTHONPATH": tree})
               for side, tree in trees.items()}

    def ask(side, batch):
        workers[side].stdin.write(f"{batch}\n")
        workers[side].stdin.flush()
        return json.loads(workers[side].stdout.readline())

    first = {(side, b): ask(side, b) for b in args.batches for side in workers}
    times = {key: [] for key in first}
    for r in range(args.rounds):
        for b in args.batches:
            for side in (("before", "after") if r % 2 == 0 else ("after", "before")):
                times[(side, b)].append(ask(side, b)["ms_step"])
    for w in workers.values():
        w.stdin.close()
        w.wait()

    sys.path.insert(0, str(ROOT / "bench"))
    from common import machine, markdown_table, write_result  # noqa: PLC0415

    results, rows = [], []
    for b in args.batches:
        before, after = times[("before", b)], times[("after", b)]
        ratio = statistics.median(a / x for a, x in zip(after, before))
        same = first[("before", b)]["checksum"] == first[("after", b)]["checksum"]
        results.append({"batch": b, "before_ms_step": before, "after_ms_step": after,
                        "median_ratio": ratio, "same_tokens": same,
                        "first_call_s": {side: first[(side, b)]["first_call_s"] for side in trees}})
        rows.append([b, f"{statistics.median(before):.2f}", f"{statistics.median(after):.2f}",
                     f"{ratio:.3f}", f"{1 / ratio:.2f}x", "yes" if same else "NO",
                     f"{first[('before', b)]['first_call_s']:.1f} / "
                     f"{first[('after', b)]['first_call_s']:.1f}"])
    table = markdown_table(["batch", "before ms/step", "after ms/step", "after / before (median "
                            "of rounds)", "speed-up", "same tokens", "first call s (compile)"],
                           rows)
    table += (f"\n\n{args.config}, {args.prompt_len}-token prompts, {args.new_tokens} new tokens, "
              f"a {args.max_len}-slot cache budget, greedy; {args.rounds} rounds, the two trees "
              f"in turns (order alternating). Before: {trees['before']}; after: "
              f"{trees['after']}.")
    print(table)
    payload = {"machine": machine(), "trees": trees, "config": args.config,
               "new_tokens": args.new_tokens, "prompt_len": args.prompt_len,
               "max_len": args.max_len, "rounds": args.rounds, "results": results}
    print(f"wrote {write_result(args.name, payload, table)}")


if __name__ == "__main__":
    main()

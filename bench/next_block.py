"""Next-block vs next-token generation at equal model size, data and training steps.

    python bench/next_block.py            # trains the five models once (runs/bench/*, ~50 min)
    python bench/next_block.py --quick    # fewer clips / tokens / repeats

Video (moving sprites, a block = one frame of 64 patch tokens, or one row of 8): the models
continue the same held-out clips from 4 given frames to 4 generated ones. Reported: forwards per generated frame,
frames/s (median of repeats, batch of clips), the speedup, validation NLL per token and the
consistency score of the generated frames (zoo.data.video_score), greedy and sampled.
Code (the stdlib corpus, a block = 4 bytes): tokens/s on corpus prompts and validation NLL.
Writes bench/results/next_block.{json,md}, next_block_grid.png (given | next-block frames, greedy)
and next_block_grid_next_token.png (the same clips, next-token).
"""

import argparse
import json
import pathlib
import sys

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import RESULTS, machine, markdown_table, median_seconds, write_result  # noqa: E402

from launch.drafter_factory import ensure_trained  # noqa: E402
from zoo import config as config_lib  # noqa: E402
from zoo.data.code_corpus import opening_prompts  # noqa: E402
from zoo.data import video, video_images, video_score  # noqa: E402
from zoo.data.tokenizer import ByteTokenizer  # noqa: E402
from zoo.decode import ar, next_block  # noqa: E402
from zoo.decode.clips import continue_clips  # noqa: E402
from zoo.decode.sampling import Sampler  # noqa: E402
from zoo.models import build_model  # noqa: E402
from zoo.runs import load_run  # noqa: E402

VIDEO = {"next-token": "configs/experiments/sprites_ar.yaml",
         "next-block": "configs/experiments/sprites_nbp.yaml",
         "next-block (rows)": "configs/experiments/sprites_nbp_rows.yaml"}
CODE = {"next-token": "configs/experiments/code_small.yaml",
        "next-block": "configs/experiments/code_nbp.yaml"}
GIVEN, GENERATED = 4, 4


def bench_run_dir(path: str) -> str:
    """The bench trains its own copies (code_small's run dir is the demo's)."""
    config = config_lib.load(path)
    return config.train.run_dir if "bench" in config.train.run_dir else f"runs/bench/{config.name}"


def load(path: str):
    config, params = load_run(bench_run_dir(path))
    evals = [json.loads(line) for line in
             pathlib.Path(bench_run_dir(path), "metrics.jsonl").read_text().splitlines()]
    val = [e for e in evals if "val_loss" in e][-1]
    return config, params, build_model(config.model), val


def bench_video(args) -> tuple[list[list], dict]:
    spec = video.video_spec("sprites")
    ft = spec.tokens_per_frame
    data = config_lib.load(VIDEO["next-block"]).data
    clips = video.load_clips(data.corpus, data.data_dir, "validation")[:args.clips]
    clips = clips[:, :(GIVEN + GENERATED) * ft]
    cond = video.tokens_to_clip(clips[:, :GIVEN * ft], spec.height, spec.width)
    rows, raw, frames_out = [], {}, {}
    for temperature in (0.0, 1.0):
        base = None
        for name in VIDEO:
            config, params, model, val = load(VIDEO[name])
            sampler = Sampler(temperature)
            run = lambda: continue_clips(model, params, config.objective, clips, GIVEN, ft,  # noqa: E731
                                         sampler=sampler, rng=jax.random.key(0), warmup=False)
            out = run()  # compile
            seconds = median_seconds(run, repeats=args.repeats, warmup=0)
            gen = video.tokens_to_clip(out.tokens, spec.height, spec.width)
            score = video_score.mean_consistency(cond, gen)
            fps = len(clips) * GENERATED / seconds
            base = base or fps
            frames_out[(name, temperature)] = gen
            raw[f"{name} T={temperature}"] = dict(seconds=seconds, frames_per_s=fps,
                                                  forwards=out.forwards, consistency=score,
                                                  val_nll=val["val_loss"])
            rows.append([f"video, {'greedy' if temperature == 0 else f'T={temperature:g}'}", name,
                         f"{out.forwards / GENERATED:.0f}", f"{fps:.1f}", f"{fps / base:.1f}x",
                         f"{val['val_loss']:.3f}", f"{score:.3f}"])
    for name, suffix in (("next-block", ""), ("next-token", "_next_token")):
        video_images.save_grid(list(zip(cond[:6], frames_out[(name, 0.0)][:6])),
                               RESULTS / f"next_block_grid{suffix}.png")
    return rows, raw


def bench_code(args) -> tuple[list[list], dict]:
    tok = ByteTokenizer()
    config, _, _, _ = load(CODE["next-token"])
    prompts = opening_prompts(config.data.corpus, config.data.data_dir, args.batch)
    rows, raw = [], {}
    for temperature in (0.8, 0.0):
        base = None
        for name in ("next-token", "next-block"):
            config, params, model, val = load(CODE[name])
            kw = dict(max_new_tokens=args.new_tokens, sampler=Sampler(temperature),
                      rng=jax.random.key(0), eos_id=-1, pad_id=tok.pad_id)
            if name == "next-block":
                fn = lambda: next_block.generate(model, params, prompts,  # noqa: E731
                                                 block_size=config.objective.block_size, **kw)
            else:
                fn = lambda: ar.generate(model, params, prompts, **kw)  # noqa: E731
            out = fn()
            seconds = median_seconds(fn, repeats=args.repeats, warmup=0)
            tps = int(out.num_tokens.sum()) / seconds
            base = base or tps
            forwards = getattr(out, "forwards", args.new_tokens)
            sample = tok.decode(out.tokens[0, :out.num_tokens[0]])
            distinct = len(set(sample)) / max(len(sample), 1)
            raw[f"{name} T={temperature}"] = dict(seconds=seconds, tokens_per_s=tps,
                                                  forwards=forwards, val_nll=val["val_loss"],
                                                  val_bits_per_byte=val["val_bits_per_byte"],
                                                  sample=sample)
            rows.append([f"code, {'greedy' if temperature == 0 else f'T={temperature:g}'}", name,
                         f"{forwards / args.new_tokens:.2f}", f"{tps:.0f} tok/s",
                         f"{tps / base:.1f}x", f"{val['val_loss']:.3f}",
                         f"distinct chars {distinct:.2f}"])
    return rows, raw


def train_once():
    """Train the five models once; the next-token code twin under runs/bench, not the demo's."""
    ensure_trained(*VIDEO.values(), CODE["next-block"])
    code_ar = config_lib.load(CODE["next-token"],
                              [f"train.run_dir={bench_run_dir(CODE['next-token'])}"])
    if not pathlib.Path(code_ar.train.run_dir, "checkpoints").is_dir():
        from zoo.train.loop import train
        print(f"training {code_ar.name} once into {code_ar.train.run_dir} ...", flush=True)
        train(code_ar)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4, help="code prompts decoded together")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.quick:
        args.clips, args.new_tokens, args.repeats = 4, 32, 1
    train_once()
    video_rows, video_raw = bench_video(args)
    code_rows, code_raw = bench_code(args)
    headers = ["task", "model", "forwards per frame / token", "speed", "speedup",
               "val NLL / token", "consistency / sample"]
    table = markdown_table(headers, video_rows + code_rows)
    print(table)
    write_result("next_block", {"machine": machine(), "clips": args.clips, "given": GIVEN,
                                "generated": GENERATED, "code_batch": args.batch,
                                "new_tokens": args.new_tokens, "repeats": args.repeats,
                                "video": video_raw, "code": code_raw}, table)


if __name__ == "__main__":
    main()

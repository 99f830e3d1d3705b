"""The same weights in zoo (JAX) and in transformers (PyTorch) on this CPU: AR greedy decoding at
batch 1 and 8, each side's speculative decoding (transformers: assisted generation with the
draft LM, prompt lookup decoding; zoo: its draft-LM chain and prompt lookup), and a training
step.

    python bench/vs_transformers.py [--target configs/experiments/code_ref.yaml]
    python bench/vs_transformers.py --ar-only [--model configs/experiments/decode_24m.yaml]
        [--dtype bfloat16]

`--ar-only`: AR greedy decoding alone at batches 1, 4 and 16, on a random-weight model (nothing
to train; decode speed does not depend on the weights), written to vs_transformers_ar.md; with
`--dtype bfloat16` both sides run the same bfloat16 weights (vs_transformers_ar_bfloat16.md).

The target and the draft LM (code_draft) are trained once (runs/bench) and exported with
zoo-export; transformers loads the folders in float32. Greedy rows also check both sides emit
the same tokens. Both sides run with EOS off, so every row decodes exactly --new-tokens tokens.
"""

import argparse
import pathlib
import sys
import tempfile

import jax
import numpy as np
import torch
import transformers

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import (machine, markdown_table, median_seconds, train_step_rates,  # noqa: E402
                    write_result)

from launch.drafter_factory import ensure_trained, make_drafter  # noqa: E402
from zoo import config as config_lib  # noqa: E402
from zoo.data.code_corpus import opening_prompts  # noqa: E402
from zoo.data.tokenizer import PAD_ID  # noqa: E402
from zoo.decode import ar, speculative  # noqa: E402
from zoo.decode.sampling import Sampler  # noqa: E402
from zoo.export.convert import export_run  # noqa: E402
from zoo.models import build_model  # noqa: E402
from zoo.runs import load_run  # noqa: E402

CODE_REF = "configs/experiments/code_ref.yaml"
DRAFT = "configs/experiments/code_draft.yaml"


def hf_generate(model, prompts, n, **kwargs) -> np.ndarray:
    """Greedy continuation of left-padded prompts -> int[B, n]."""
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD_ID] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=n,
                             min_new_tokens=n, eos_token_id=None, pad_token_id=PAD_ID, **kwargs)
    return out[:, width:].numpy()


def timed(fn, repeats):
    out = fn()  # compile / warm up
    return out, median_seconds(fn, repeats=repeats, warmup=0)


def ar_only(config_path: str, batches, n: int, repeats: int, dtype: str = "float32") -> None:
    """zoo vs transformers AR greedy decoding on the same random weights, both in `dtype`."""
    from zoo.export import hf, llama
    from zoo.models import in_dtype

    config = config_lib.load(config_path)
    params = build_model(config.model).init(jax.random.key(0))
    model_config, params = in_dtype(config.model, params, dtype)
    model = build_model(model_config)
    with tempfile.TemporaryDirectory() as tmp:
        hf.write(tmp, llama.hf_config(config.model), llama.tensor_map(config.model), params,
                 dtype=dtype)
        theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp,
                                                                   dtype=getattr(torch, dtype))
    theirs.eval()
    prompts = opening_prompts(config.data.corpus, config.data.data_dir, max(batches))
    rows, payload = [], {"model": config_path, "machine": machine(), "new_tokens": n, "rows": []}
    for batch in batches:
        p = prompts[:batch]
        ours, zoo_s = timed(lambda: ar.generate(model, params, p, max_new_tokens=n, eos_id=-1,
                                                pad_id=PAD_ID).tokens, repeats)
        hf_out, hf_s = timed(lambda: hf_generate(theirs, p, n), repeats)
        same = bool(np.array_equal(np.asarray(ours), hf_out))
        rows.append([batch, f"{batch * n / zoo_s:,.0f}", f"{batch * n / hf_s:,.0f}",
                     f"{hf_s / zoo_s:.2f}x", "yes" if same else "no"])
        payload["rows"].append({"batch": batch, "zoo_tokens_per_s": batch * n / zoo_s,
                                "hf_tokens_per_s": batch * n / hf_s, "same_tokens": same})
        print(rows[-1], flush=True)
    table = markdown_table(["batch", "zoo tokens/s", "transformers tokens/s",
                            "zoo / transformers", "same tokens"], rows)
    size = sum(x.size for x in jax.tree.leaves(params)) / 1e6
    table += (f"\n\nAR greedy, {config.name} ({size:.1f}M "
              f"params, random weights, {dtype} on both sides), corpus opening prompts, {n} new "
              f"tokens, EOS off; transformers eager with its KV cache; median of {repeats} after "
              "a warm-up.")
    print(table)
    write_result("vs_transformers_ar" + ("" if dtype == "float32" else f"_{dtype}"), payload,
                 table)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default=CODE_REF)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ar-only", action="store_true")
    parser.add_argument("--model", default="configs/experiments/decode_24m.yaml",
                        help="the random-weight model of --ar-only")
    parser.add_argument("--dtype", default="float32", choices=config_lib.DTYPES,
                        help="--ar-only: both sides' weights and compute")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.ar_only:
        return ar_only(args.model, (1, 4, 16), args.new_tokens, args.repeats, args.dtype)
    ensure_trained(args.target, DRAFT)
    target_cfg = config_lib.load(args.target)
    config, params = load_run(target_cfg.train.run_dir)
    model = build_model(config.model)
    draft_run = config_lib.load(DRAFT).train.run_dir
    hf_dir = pathlib.Path(tempfile.mkdtemp())
    export_run(target_cfg.train.run_dir, hf_dir / "target")
    export_run(draft_run, hf_dir / "draft")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(hf_dir / "target",
                                                               dtype=torch.float32).eval()
    their_draft = transformers.AutoModelForCausalLM.from_pretrained(hf_dir / "draft",
                                                                    dtype=torch.float32).eval()
    n = args.new_tokens
    prompts = opening_prompts(config.data.corpus, config.data.data_dir, 8)
    kw = dict(max_new_tokens=n, eos_id=-1, pad_id=PAD_ID)
    rows, payload = [], {"target": args.target, "machine": machine(), "rows": []}

    def add(what, batch, ours, theirs_out, zoo_s, hf_s):
        same = bool(np.array_equal(np.asarray(ours), theirs_out))
        tokens = batch * n
        rows.append([what, batch, f"{tokens / zoo_s:,.0f}", f"{tokens / hf_s:,.0f}",
                     f"{hf_s / zoo_s:.2f}x", "yes" if same else "no"])
        payload["rows"].append({"what": what, "batch": batch, "zoo_tokens_per_s": tokens / zoo_s,
                                "hf_tokens_per_s": tokens / hf_s, "same_tokens": same})
        print(rows[-1], flush=True)

    for batch in (1, 8):
        p = prompts[:batch]
        ours, zoo_s = timed(lambda: ar.generate(model, params, p, **kw).tokens, args.repeats)
        hf_out, hf_s = timed(lambda: hf_generate(theirs, p, n), args.repeats)
        add("AR greedy", batch, ours, hf_out, zoo_s, hf_s)

    sampler = Sampler(0.0)
    p = prompts[:1]
    for what, drafter_name, tree, hf_kwargs in (
            ("draft LM (zoo chain4 / HF assisted)", "draft", "chain4",
             {"assistant_model": their_draft}),
            ("prompt lookup (zoo chain6 / HF 6 tokens)", "prompt_lookup", "chain6",
             {"prompt_lookup_num_tokens": 6})):
        drafter, drafter_params = make_drafter(drafter_name, tree=tree, target_config=config,
                                               target_params=params, sampler=sampler,
                                               draft_run=draft_run)
        ours, zoo_s = timed(lambda: speculative.generate(
            model, params, p, drafter=drafter, drafter_params=drafter_params, **kw).tokens,
            args.repeats)
        hf_out, hf_s = timed(lambda: hf_generate(theirs, p, n, **hf_kwargs), args.repeats)
        add(what, 1, ours, hf_out, zoo_s, hf_s)

    zoo_rate, torch_rate = train_step_rates(config, args.repeats)
    dc = config.data
    rows.append([f"train step (AdamW, {dc.batch_size} x {dc.seq_len})", dc.batch_size,
                 f"{zoo_rate:,.0f}", f"{torch_rate:,.0f}", f"{zoo_rate / torch_rate:.2f}x", "—"])
    payload["train"] = {"zoo_tokens_per_s": zoo_rate, "torch_tokens_per_s": torch_rate}
    table = markdown_table(["what", "batch", "zoo tokens/s", "transformers tokens/s",
                            "zoo / transformers", "same tokens"], rows)
    print(table)
    write_result("vs_transformers", payload, table)


if __name__ == "__main__":
    main()

"""zoo-export / zoo-import: zoo run directories <-> Hugging Face folders (config.json +
safetensors, loadable with transformers' AutoModelForCausalLM.from_pretrained; tokenizer.json +
tokenizer_config.json and generation_config.json, so transformers.pipeline("text-generation",
model=folder) completes prompts as zoo-generate does).

    zoo-export --checkpoint runs/code_small --out hf/code_small [--dtype bfloat16]
    zoo-import --hf hf/code_small --out runs/code_small_imported

zoo-import keeps the folder's tokenizer with the run (zoo-generate then reads and writes text
through it); a folder without a tokenizer.json gives a run whose text is zoo's bytes.
"""

import argparse
import pathlib
import sys

from zoo.config import DTYPES  # no jax: argument errors come before heavy imports


def export_main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="zoo-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="zoo run directory")
    parser.add_argument("--out", required=True, help="Hugging Face folder to write")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    parser.add_argument("--max-shard-mb", type=float, default=2048,
                        help="split the weights into safetensors files of at most this size")
    args = parser.parse_args(argv)
    from zoo.export.convert import export_run  # heavy imports after argument checks

    try:
        files = export_run(args.checkpoint, args.out, args.dtype, args.step,
                           int(args.max_shard_mb * 2**20))
    except (FileNotFoundError, ValueError) as e:
        print(f"zoo-export: {e}", file=sys.stderr)
        return 2
    print(f"zoo-export: {args.checkpoint} -> {args.out} ({', '.join(files)}, {args.dtype})")
    return 0


def import_main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="zoo-import", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf", required=True, help="Hugging Face folder (config.json + "
                                                    "safetensors, tokenizer.json)")
    parser.add_argument("--out", required=True, help="zoo run directory to create")
    args = parser.parse_args(argv)
    from zoo.data.hf_tokenizer import TOKENIZER_JSON, HFTokenizer
    from zoo.export.convert import import_hf
    from zoo.runs import tokenizer_for_run

    try:
        config = import_hf(args.hf, args.out)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"zoo-import: {e}", file=sys.stderr)
        return 2
    tok = tokenizer_for_run(args.out, config)
    if isinstance(tok, HFTokenizer):
        text = f"text through its {TOKENIZER_JSON}, {tok.vocab_size} ids"
    elif (pathlib.Path(args.hf) / TOKENIZER_JSON).is_file():
        text = "text as zoo's bytes: its tokenizer.json is zoo's byte tokenizer"
    else:
        text = f"text as zoo's bytes: {args.hf} has no {TOKENIZER_JSON}"
    print(f"zoo-import: {args.hf} -> {args.out} ({config.model.family}, "
          f"{config.model.n_layers} layers, d_model {config.model.d_model}; {text})")
    return 0

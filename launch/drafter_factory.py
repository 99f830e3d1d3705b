"""Drafters by name, for zoo-generate and the benchmarks: builds the drafter and loads what it
needs (a draft model's or heads' checkpoint), training the benchmark's reference models once."""

import pathlib

from zoo import config as config_lib
from zoo.decode.drafters import DraftModelChain, PromptLookup
from zoo.models import build_model
from zoo.train.loop import load_run, train

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs" / "experiments"
DRAFT_EXPERIMENT = CONFIGS / "code_draft.yaml"

# (drafter, tree) pairs the speculative benchmark measures.
DRAFTER_SPECS = [
    ("prompt_lookup", "chain6"),
    ("draft", "chain4"),
]
DRAFTERS = sorted({name for name, _ in DRAFTER_SPECS})


def _chain_length(tree: str) -> int:
    if not (tree.startswith("chain") and tree[5:].isdigit() and int(tree[5:]) > 0):
        raise ValueError(f"tree {tree!r} is not a chain; use chainN, e.g. chain4")
    return int(tree[5:])


def _has_checkpoint(run_dir) -> bool:
    ckpt = pathlib.Path(run_dir) / "checkpoints"
    return ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())


def ensure_trained(target_experiment, needs=()) -> None:
    """Train (once) the target and whatever the named drafters need, skipping cached runs."""
    experiments = [config_lib.load(target_experiment)]
    if "draft" in needs:
        experiments.append(config_lib.load(DRAFT_EXPERIMENT))
    for config in experiments:
        if not _has_checkpoint(config.train.run_dir):
            print(f"training {config.name} once into {config.train.run_dir} ...", flush=True)
            train(config, resume=pathlib.Path(config.train.run_dir, "checkpoints").is_dir())


def make_drafter(name: str, *, tree: str | None, target_config, sampler, draft_run=None):
    """(drafter, drafter_params) for a drafter name and tree spec (see DRAFTER_SPECS)."""
    if name == "prompt_lookup":
        return PromptLookup(num_draft=_chain_length(tree or "chain6")), None
    if name == "draft":
        run = draft_run or config_lib.load(DRAFT_EXPERIMENT).train.run_dir
        config, params = load_run(run)
        if config.model.vocab_size != target_config.model.vocab_size:
            raise ValueError(f"draft model in {run} has vocab_size {config.model.vocab_size}, "
                             f"the target {target_config.model.vocab_size}: they must share a "
                             "tokenizer")
        return DraftModelChain(build_model(config.model), _chain_length(tree or "chain4"),
                               sampler), params
    raise ValueError(f"unknown drafter {name!r}; choose one of {DRAFTERS}")


__all__ = ["DRAFTERS", "DRAFTER_SPECS", "ensure_trained", "make_drafter"]

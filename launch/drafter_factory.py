"""Drafters by name, for zoo-generate and the benchmarks: builds the drafter from a name and a tree
spec and loads what it needs (a draft model's or draft heads' checkpoint).

    name            tree spec (default)          needs
    prompt_lookup   chainN (chain6)              nothing
    recycling       preset or chainN (medusa_small)  nothing
    draft           chainN (chain4)              a draft LM run (same tokenizer)
    draft_tree      preset or chainN (medusa_small)  a draft LM run
    draft_dynamic   dDkKwWbB (d4k4w4b16)         a draft LM run: EAGLE-2 tree, depth D, top-K
                                                 children, W expanded per depth, B nodes kept
    medusa, hydra   preset or chainN (medusa_small)  a draft-heads run on this target

Presets are `zoo.decode.trees.PRESETS` (chain4, medusa_small, medusa_63).
"""

import pathlib
import re

from zoo import config as config_lib
from zoo.decode.drafters import (DraftModelChain, DraftModelStaticTree, DraftModelTree,
                                 PromptLookup, TokenRecycling)
from zoo.decode.head_drafters import HydraDrafter, MedusaDrafter
from zoo.decode.trees import PRESETS, StaticTree, chain_tree
from zoo.models import build_model
from zoo.train.loop import load_run

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs" / "experiments"
DRAFT_EXPERIMENT = CONFIGS / "code_draft.yaml"

DEFAULT_TREES = {"prompt_lookup": "chain6", "recycling": "medusa_small", "draft": "chain4",
                 "draft_tree": "medusa_small", "draft_dynamic": "d4k4w4b16",
                 "medusa": "medusa_small", "hydra": "medusa_small"}
DRAFTERS = sorted(DEFAULT_TREES)
MODEL_DRAFTERS = ("draft", "draft_tree", "draft_dynamic")  # need a draft LM run
HEAD_DRAFTERS = ("medusa", "hydra")  # need a draft-heads run


def _chain_length(tree: str) -> int:
    if not (tree.startswith("chain") and tree[5:].isdigit() and int(tree[5:]) > 0):
        raise ValueError(f"tree {tree!r} is not a chain; use chainN, e.g. chain4")
    return int(tree[5:])


def static_template(tree: str) -> StaticTree:
    """A preset name or chainN."""
    if tree in PRESETS:
        return PRESETS[tree]
    if tree.startswith("chain"):
        return chain_tree(_chain_length(tree))
    raise ValueError(f"unknown tree {tree!r}; use one of {sorted(PRESETS)} or chainN")


def _dynamic(tree: str) -> dict:
    match = re.fullmatch(r"d(\d+)k(\d+)w(\d+)b(\d+)", tree)
    if not match:
        raise ValueError(f"tree {tree!r} is not a dynamic-tree spec; use dDkKwWbB, e.g. d4k4w4b16 "
                         "(depth, children per node, nodes expanded per depth, nodes kept)")
    return dict(zip(("depth", "k", "width", "budget"), map(int, match.groups())))


def _has_checkpoint(run_dir) -> bool:
    ckpt = pathlib.Path(run_dir) / "checkpoints"
    return ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())


def ensure_trained(*experiments) -> None:
    """Train (once, in order) the experiments (YAML paths) whose run has no checkpoint yet; a run
    stopped midway is resumed."""
    from zoo.train.loop import train

    for path in experiments:
        config = config_lib.load(path)
        if not _has_checkpoint(config.train.run_dir):
            print(f"training {config.name} once into {config.train.run_dir} ...", flush=True)
            train(config, resume=pathlib.Path(config.train.run_dir, "checkpoints").is_dir())


def _draft_model(run, target_config):
    config, params = load_run(run)
    if config.heads.kind != "none":
        raise ValueError(f"{run} is a draft-heads run; the draft model must be an LM run")
    if config.model.vocab_size != target_config.model.vocab_size:
        raise ValueError(f"draft model in {run} has vocab_size {config.model.vocab_size}, "
                         f"the target {target_config.model.vocab_size}: they must share a "
                         "tokenizer")
    return build_model(config.model), params


def _heads(run, target_config, target_params, kind):
    from zoo.models.heads import build_heads

    config, params = load_run(run)
    if config.heads.kind == "none":
        raise ValueError(f"{run} is an LM run, not a run of {kind} heads")
    if config.heads.kind != kind:
        raise ValueError(f"{run} holds {config.heads.kind!r} heads, not {kind!r} heads")
    diff = config_lib.first_difference(config.model, target_config.model)
    if diff:
        raise ValueError(f"the heads in {run} were trained for a target with model.{diff}="
                         f"{getattr(config.model, diff)!r}, this target has "
                         f"{getattr(target_config.model, diff)!r}")
    return build_heads(config.heads, config.model), {"heads": params, "target": target_params}


def make_drafter(name: str, *, tree: str | None, target_config, target_params, sampler,
                 draft_run=None):
    """(drafter, drafter_params) for a drafter name and tree spec (see the module docstring).

    `draft_run`: the run directory of the draft LM (default: configs/experiments/code_draft's)
    or, for medusa / hydra, of the heads (required).
    """
    if name not in DEFAULT_TREES:
        raise ValueError(f"unknown drafter {name!r}; choose one of {DRAFTERS}")
    tree = tree or DEFAULT_TREES[name]
    if name == "prompt_lookup":
        return PromptLookup(num_draft=_chain_length(tree)), None
    if name == "recycling":
        return TokenRecycling(target_config.model.vocab_size, static_template(tree)), None
    if name in HEAD_DRAFTERS:
        if not draft_run:
            raise ValueError(f"{name} needs the run directory of its trained heads "
                             f"(--draft-checkpoint); train them with zoo-train and a "
                             f"heads.kind={name} experiment")
        heads, params = _heads(draft_run, target_config, target_params, name)
        cls = MedusaDrafter if name == "medusa" else HydraDrafter
        return cls(heads, static_template(tree)), params
    run = draft_run or config_lib.load(DRAFT_EXPERIMENT).train.run_dir
    if name == "draft":
        length = _chain_length(tree)  # check the spec before loading anything
        model, params = _draft_model(run, target_config)
        return DraftModelChain(model, length, sampler), params
    if name == "draft_tree":
        template = static_template(tree)
        model, params = _draft_model(run, target_config)
        return DraftModelStaticTree(model, template), params
    sizes = _dynamic(tree)
    model, params = _draft_model(run, target_config)
    return DraftModelTree(model, **sizes), params


__all__ = ["DEFAULT_TREES", "DRAFTERS", "ensure_trained", "make_drafter", "static_template"]

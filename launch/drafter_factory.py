"""Drafters by name, for zoo-generate and the benchmarks: builds the drafter from a name and a tree
spec and loads what it needs (a draft model's or draft heads' checkpoint).

    name            tree spec (default)          needs
    prompt_lookup   chainN (chain6)              nothing
    recycling       preset or chainN (medusa_small)  nothing
    draft           chainN (chain4)              a draft LM run (same tokenizer)
    draft_tree      preset or chainN (medusa_small)  a draft LM run
    draft_dynamic   dDkKwWbB (d4k4w4b16)         a draft LM run: EAGLE-2 tree, depth D, top-K
                                                 children, W expanded per depth, B nodes kept
    medusa, hydra,  preset or chainN (medusa_small)  a draft-heads run on this target
    falcon

Presets are `zoo.decode.trees.PRESETS` (chain4, medusa_small, medusa_63). Every drafter but
draft_dynamic also takes `auto` (`choose_tree`): the tree, chain or no speculation that
maximises measured tokens/s on this device and batch.
"""

import dataclasses
import pathlib
import re

import jax

from zoo import config as config_lib
from zoo.decode.drafters import (DraftModelChain, DraftModelStaticTree, DraftModelTree,
                                 PromptLookup, TokenRecycling)
from zoo.decode.head_drafters import FalconDrafter, HydraDrafter, MedusaDrafter
from zoo.decode.trees import PRESETS, StaticTree, chain_tree
from zoo.models import build_model, cast_params
from zoo.runs import load_run, tokenizer_for_run

DRAFT_EXPERIMENT = "code_draft"  # in configs/experiments/

DEFAULT_TREES = {"prompt_lookup": "chain6", "recycling": "medusa_small", "draft": "chain4",
                 "draft_tree": "medusa_small", "draft_dynamic": "d4k4w4b16",
                 "medusa": "medusa_small", "hydra": "medusa_small",
                 "falcon": "medusa_small"}
DRAFTERS = sorted(DEFAULT_TREES)
MODEL_DRAFTERS = ("draft", "draft_tree", "draft_dynamic")  # need a draft LM run
HEAD_DRAFTER_CLASSES = {"medusa": MedusaDrafter, "hydra": HydraDrafter, "falcon": FalconDrafter}
HEAD_DRAFTERS = tuple(HEAD_DRAFTER_CLASSES)  # need a draft-heads run
CHAIN_DRAFTERS = ("prompt_lookup", "draft")  # draft chains only
# --tree auto: deepest tree (head drafters: their number of heads), candidates per node,
# calibration prompts (at least this many for acceptance) and their length.
AUTO_MAX_DEPTH, AUTO_FAN, AUTO_ACCEPTANCE_PROMPTS, AUTO_PROMPT_BYTES = 6, 4, 8, 96


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


def _checkpoint_steps(run_dir) -> list[int]:
    ckpt = pathlib.Path(run_dir) / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() else []


def ensure_trained(*experiments) -> None:
    """Train (once, in order) the experiments (YAML paths) whose run has not reached its
    `train.steps`: from scratch without a checkpoint, resumed from a run stopped midway (a
    benchmark must never measure a half-trained model it believes finished)."""
    from zoo.train.loop import train

    for path in experiments:
        config = config_lib.load(path)
        steps = _checkpoint_steps(config.train.run_dir)
        if not steps or steps[-1] < config.train.steps:
            what = f"resuming from step {steps[-1]}" if steps else "once"
            print(f"training {config.name} {what} into {config.train.run_dir} ...", flush=True)
            train(config, resume=bool(steps))


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
    # Heads serve in the dtype their target serves in (zoo-generate --dtype); the rest must match.
    dtypes = {"dtype": target_config.model.dtype, "param_dtype": target_config.model.param_dtype}
    serving = dataclasses.replace(config.model, **dtypes)
    diff = config_lib.first_difference(serving, target_config.model)
    if diff:
        raise ValueError(f"the heads in {run} were trained for a target with model.{diff}="
                         f"{getattr(config.model, diff)!r}, this target has "
                         f"{getattr(target_config.model, diff)!r}")
    if serving.param_dtype != config.model.param_dtype:
        params = cast_params(params, serving.param_dtype)
    return build_heads(config.heads, serving), {"heads": params, "target": target_params}


def make_drafter(name: str, *, tree: str | StaticTree | None, target_config, target_params,
                 sampler, draft_run=None):
    """(drafter, drafter_params) for a drafter name and tree spec (see the module docstring) or
    a `StaticTree` template.

    `draft_run`: the run directory of the draft LM (default: configs/experiments/code_draft's)
    or, for medusa / hydra / falcon, of the heads (required).
    """
    tree = tree or DEFAULT_TREES.get(name)
    if name == "draft_dynamic" and not isinstance(tree, StaticTree):
        sizes = _dynamic(tree)  # check the spec before loading anything
        model, params = _draft_model(draft_run or _default_draft_run(), target_config)
        return DraftModelTree(model, **sizes), params
    build = drafter_builder(name, target_config=target_config, target_params=target_params,
                            sampler=sampler, draft_run=draft_run, check_tree=tree)
    return build(tree if isinstance(tree, StaticTree) else _template(name, tree))


def _default_draft_run() -> str:
    return config_lib.load(DRAFT_EXPERIMENT).train.run_dir


def _template(name: str, tree: str) -> StaticTree:
    if name in CHAIN_DRAFTERS:
        return chain_tree(_chain_length(tree))
    return static_template(tree)


def drafter_builder(name: str, *, target_config, target_params, sampler, draft_run=None,
                    check_tree=None):
    """A function template -> (drafter, drafter_params) for a static-tree or chain drafter,
    loading its checkpoint once (so calibration can try many templates). `check_tree`: a spec
    to validate before anything is loaded."""
    if name not in DEFAULT_TREES:
        raise ValueError(f"unknown drafter {name!r}; choose one of {DRAFTERS}")
    if name == "draft_dynamic":
        raise ValueError("draft_dynamic grows its own tree each step; give its sizes "
                         "(dDkKwWbB) instead of a template")
    if isinstance(check_tree, str):
        _template(name, check_tree)

    def chain_length(template: StaticTree) -> int:
        if max(template.topk_per_depth) != 1:
            raise ValueError(f"{name} drafts chains; the tree {template.paths} is not a chain")
        return template.max_depth

    if name == "prompt_lookup":
        return lambda template: (PromptLookup(num_draft=chain_length(template)), None)
    if name == "recycling":
        vocab = target_config.model.vocab_size
        return lambda template: (TokenRecycling(vocab, template), None)
    if name in HEAD_DRAFTERS:
        if not draft_run:
            raise ValueError(f"{name} needs the run directory of its trained heads "
                             f"(--draft-checkpoint); train them with zoo-train and a "
                             f"heads.kind={name} experiment")
        heads, params = _heads(draft_run, target_config, target_params, name)
        cls = HEAD_DRAFTER_CLASSES[name]
        return lambda template: (cls(heads, template), params)
    model, params = _draft_model(draft_run or _default_draft_run(), target_config)
    if name == "draft":
        return lambda template: (DraftModelChain(model, chain_length(template), sampler), params)
    return lambda template: (DraftModelStaticTree(model, template), params)


def max_depth_of(name: str, draft_run=None) -> int:
    """The deepest tree `--tree auto` considers: the number of heads for head drafters."""
    if name in HEAD_DRAFTERS and draft_run:
        return config_lib.load(pathlib.Path(draft_run) / "config.yaml").heads.num_heads
    return AUTO_MAX_DEPTH


def calibration_key(name: str, *, batch: int, sampler, depth: int, fan: int,
                    draft_run=None, dtype: str = "float32") -> str:
    """What a calibration depends on besides the target: drafter, device, batch, sampling, and
    the dtype the target runs in (named when not float32, so older keys stay valid)."""
    device = jax.devices()[0]
    return (f"{name} | draft {draft_run or '-'} | {device.platform} {device.device_kind} | "
            f"batch {batch} | temperature {sampler.temperature} | depth {depth} fan {fan}"
            + ("" if dtype == "float32" else f" | dtype {dtype}"))


def choose_tree(name: str, *, target_config, target_params, sampler, run_dir, batch: int,
                draft_run=None, log=print):
    """`--tree auto`: the `zoo.decode.tree_search.Choice` (a tree, or no speculation) with the
    most expected tokens/s for this drafter, target, device and batch size. The calibration
    (costs and acceptance) is measured once and cached in `run_dir`/tree_calibration.json."""
    from zoo.decode import calibration
    from zoo.decode.tree_search import best_tree

    depth = max_depth_of(name, draft_run)
    fan = 1 if name in CHAIN_DRAFTERS else AUTO_FAN
    key = calibration_key(name, batch=batch, sampler=sampler, depth=depth, fan=fan,
                          draft_run=draft_run, dtype=target_config.model.dtype)
    path = pathlib.Path(run_dir) / calibration.FILENAME
    cal = calibration.load(path, key)
    if cal is None:  # measure once: load the drafter and run the target on corpus prompts
        log(f"tree auto: calibrating {name} at batch {batch} on {jax.devices()[0].device_kind} "
            f"(once; cached in {path}) ...")
        from zoo.data.code_corpus import opening_prompts
        from zoo.models import build_model
        build = drafter_builder(name, target_config=target_config, target_params=target_params,
                                sampler=sampler, draft_run=draft_run)
        prompts = opening_prompts(target_config.data.corpus, target_config.data.data_dir,
                                  max(batch, AUTO_ACCEPTANCE_PROMPTS), AUTO_PROMPT_BYTES,
                                  tokenizer_for_run(run_dir, target_config))
        target = build_model(target_config.model, target_config.decode.kernel_backend)
        cal = calibration.calibrate(target, target_params, build, prompts[:batch],
                                    acceptance_prompts=prompts, sampler=sampler, max_depth=depth,
                                    fan=fan)
        calibration.save(path, key, cal)
    return best_tree(cal.acceptance, cal.costs, max_depth=depth)


__all__ = ["DEFAULT_TREES", "DRAFTERS", "calibration_key", "choose_tree", "drafter_builder",
           "ensure_trained", "make_drafter", "static_template"]

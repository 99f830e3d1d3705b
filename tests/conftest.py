"""Shared fixtures: tiny model configs and a session-wide corpus directory."""

import gc
import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent

# One persistent compilation cache for the whole run, xdist workers and subprocesses (notebooks,
# 8-device and multi-process checks) included: XLA:CPU compiles are most of the suite's time, and
# many modules compile the same tiny programs (each module drops its in-memory programs, below).
# Entries are keyed by the exact program and jax version, so a changed program compiles anew.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# No size cap: with one, jax re-reads the cache directory on every write to evict, which grew
# the run's time quadratically in its ~13k entries (~120 MB a run; `make clean` deletes them).

import jax  # noqa: E402  (after the cache settings, which jax reads when imported)
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import config as config_lib
from zoo.config import ModelConfig


def tiny_model_config(**overrides) -> ModelConfig:
    base = dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=128)
    return ModelConfig(**{**base, **overrides})


def tiny_ssm_config(family: str = "mamba2", **overrides) -> ModelConfig:
    """A tiny Mamba2 (or, with family="hybrid", Mamba2-attention-Mamba2) model: 4 SSM heads of
    16 in 2 groups, state 16, chunks of 8 so that sequences span several chunks."""
    base = dict(family=family, d_model=32, n_layers=3 if family == "hybrid" else 2,
                layer_pattern="mam" if family == "hybrid" else "", n_heads=4, n_kv_heads=2,
                mlp_dim=64, ssm_heads=4, ssm_head_dim=16, ssm_state_dim=16, ssm_groups=2,
                ssm_chunk_size=8, init_std=0.1)
    return ModelConfig(**{**base, **overrides})


def loud_ssm_params(params):
    """Random Mamba2 init draws dt in [0.001, 0.1]: a state that barely moves, so a wrong state
    would hardly change the logits. Tests use dt ~ 0.5-3 and A ~ -0.2..-2 across heads (memories
    of a few tokens), where any error in a state or a convolution window shows in the logits."""
    def loud(path, leaf):
        name = getattr(path[-1], "key", None)
        if name == "dt_bias":
            return jnp.linspace(-0.5, 3.0, leaf.shape[-1]).astype(leaf.dtype)
        if name == "A_log":
            return jnp.linspace(np.log(0.2), np.log(2.0), leaf.shape[-1]).astype(leaf.dtype)
        return leaf
    return jax.tree_util.tree_map_with_path(loud, params)


def assert_speculative_equals_ar(model, params, prompts, drafter, drafter_params=None, *,
                                 max_new_tokens, verifier=None, **kwargs):
    """Greedy speculative decoding with `verifier` (default: `model` itself; e.g. the same model
    on another kernel backend) emits exactly AR greedy's tokens and lengths. Returns its result."""
    from zoo.data.tokenizer import PAD_ID
    from zoo.decode import ar, speculative
    want = ar.generate(model, params, prompts, max_new_tokens=max_new_tokens, eos_id=-1,
                       pad_id=PAD_ID)
    got = speculative.generate(verifier or model, params, prompts, drafter=drafter,
                               drafter_params=drafter_params, max_new_tokens=max_new_tokens,
                               eos_id=-1, pad_id=PAD_ID, **kwargs)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.num_tokens, want.num_tokens)
    return got


BPE_SPECIALS = ["<s>", "</s>", "<pad>"]  # ids 0, 1, 2 of `code_bpe`


def code_bpe(vocab_size: int = 400):
    """A byte-level BPE (a `tokenizers.Tokenizer`) trained on ~9 KB of the code corpus (stdlib
    sources), BOS by template."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    from zoo.data import code_corpus

    root = code_corpus.stdlib_root()
    text = "".join(open(f"{root}/{f}").read()[:3000]
                   for f in code_corpus.list_source_files(root)[:3])
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=BPE_SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", 0)])
    return tok


def zoo_completion(capsys, run, prompt, n) -> str:
    """zoo-generate's greedy completion of `prompt`, as it prints it."""
    from launch.generate import main as generate_main

    capsys.readouterr()
    assert generate_main(["--checkpoint", str(run), "--prompt", prompt,
                          "--max-new-tokens", str(n), "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    return out.split("--- completion ---\n", 1)[1].rsplit("\n\nAR: ", 1)[0]


def assert_loss_falls(losses: dict, by: float = 1.0, *context):
    """The mean train loss of the last 5 steps is at least `by` below that of the first 5."""
    steps = sorted(losses)
    first = np.mean([losses[s] for s in steps[:5]])
    last = np.mean([losses[s] for s in steps[-5:]])
    assert last < first - by, (*context, first, last)


def random_parents(rng: np.random.Generator, t: int, kind: str) -> np.ndarray:
    """A parents array of a chain, a star, a random topologically ordered tree, one block of
    nodes that all see each other, or a random tree of blocks (runs of SAME_BLOCK = -2)."""
    if kind == "chain":
        return np.arange(t) - 1
    if kind == "star":
        return np.array([-1] + [0] * (t - 1))
    if kind == "block":
        return np.array([-1] + [-2] * (t - 1))
    if kind == "block_tree":
        return np.array([-1] + [-2 if rng.random() < 0.6 else rng.integers(0, i)
                                for i in range(1, t)])
    return np.array([-1] + [rng.integers(0, i) for i in range(1, t)])



# The longest modules (minutes each, mostly one subprocess) start first: pytest-xdist hands out
# whole modules in collection order, and a long one handed out last leaves a worker idle.
LONG_MODULES = ("test_parallel.py", "test_notebooks.py", "test_multihost.py", "test_training.py",
                "test_heads_training.py", "test_lowering.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable within a rank


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Drop every compiled program after each test module. XLA:CPU maps each executable's code
    into memory (~230 mappings for a decode loop of the tiny model); the whole suite compiles
    thousands of programs and, held until exit, their mappings reach the kernel's
    vm.max_map_count (65530), where the next compile segfaults."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture
def tiny_experiment(data_dir, tmp_path):
    """The tiny experiment config, writing into a fresh run dir; call with extra overrides."""
    def make(*overrides: str) -> config_lib.ExperimentConfig:
        return config_lib.load(REPO / "configs/experiments/tiny.yaml", [
            f"data.data_dir={data_dir}", f"train.run_dir={tmp_path / 'run'}", *overrides])
    return make


@pytest.fixture(scope="session")
def tiny_model_and_params():
    from zoo.models import build_model
    model = build_model(tiny_model_config())
    return model, model.init(jax.random.key(0))


def lowered_text(fn, *args, platform: str) -> str:
    """The StableHLO of `jax.jit(fn)` traced on `args` (arrays or ShapeDtypeStructs) and lowered
    for `platform` ("cpu", "tpu" or "cuda"), with debug locations (named scopes such as
    `zoo.platform.CPU_WORKAROUND`). Lowering needs no device of that platform; nothing runs."""
    traced = jax.jit(fn).trace(*args)
    return traced.lower(lowering_platforms=(platform,)).as_text(debug_info=True)


"""Medusa / Hydra / Falcon drafters: lossless (greedy spec == AR greedy) and fed the right hidden
state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.config import HeadsConfig
from zoo.data.tokenizer import PAD_ID
from zoo.decode import ar, speculative
from zoo.decode.head_drafters import FalconDrafter, HydraDrafter, MedusaDrafter
from zoo.decode.trees import PRESETS, static_tree
from zoo.decode.verify import Verdict
from zoo.models.heads import build_heads

from conftest import tiny_model_config

DRAFTERS = {"medusa": MedusaDrafter, "hydra": HydraDrafter}


def _random_heads(model, kind, seed=1, noise=0.02, **config):
    """Heads with random weights. Zero-initialised W's would make every head the identity;
    small noise keeps them close to it (so trees still get accepted on the random target's
    repetitive output) while making every head, depth and path different."""
    heads = build_heads(HeadsConfig(kind=kind, target_run="unused", **config), model.config)
    params = heads.init(jax.random.key(seed))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return heads, tree.unflatten([x + noise * jax.random.normal(k, x.shape)
                                  for x, k in zip(leaves, keys)])


PROMPTS = [list(np.tile(np.random.default_rng(row).integers(0, 256, 2 + row % 3), 1 + row % 3))
           for row in range(8)]


@pytest.fixture(scope="module")
def eos(tiny_model_and_params):
    """Row 0's seventh free-running greedy token, made EOS (rows are independent, and row 0
    is the same prompt at every batch size)."""
    model, params = tiny_model_and_params
    free = ar.generate(model, params, PROMPTS[:1], max_new_tokens=8, eos_id=-1, pad_id=PAD_ID)
    return int(free.tokens[0, 6])


@pytest.mark.parametrize("batch", [1, 8])  # one row; ragged rows (falcon's test runs 3)
def test_greedy_speculative_with_heads_equals_ar(tiny_model_and_params, eos, batch):
    model, params = tiny_model_and_params
    prompts, max_new = PROMPTS[:batch], 23  # the length limit falls inside a tree
    want = ar.generate(model, params, prompts, max_new_tokens=max_new, eos_id=eos, pad_id=PAD_ID)
    assert want.num_tokens[0] <= 7  # row 0 stops at the EOS
    for kind, drafter in DRAFTERS.items():
        heads, head_params = _random_heads(model, kind)
        got = speculative.generate(model, params, prompts, drafter=drafter(heads),
                                   drafter_params={"heads": head_params, "target": params},
                                   max_new_tokens=max_new, eos_id=eos, pad_id=PAD_ID)
        np.testing.assert_array_equal(got.tokens, want.tokens, err_msg=kind)
        np.testing.assert_array_equal(got.num_tokens, want.num_tokens, err_msg=kind)
        # Trees do get accepted, so the EOS and the limit come in multi-token steps.
        assert got.tau > 1.2, kind
        assert got.target_forwards[0] < want.num_tokens[0] - 1, kind


@pytest.mark.parametrize("tree, block, batch", [("chain4", 3, 3), ("medusa_small", 2, 3)])
def test_greedy_speculative_with_falcon_equals_ar(tiny_model_and_params, eos, tree, block, batch):
    """A chain in blocks of 3 (depths 1-3, then 4 alone) and a branching tree in blocks of 2;
    the EOS and the length limit fall inside a drafted block."""
    model, params = tiny_model_and_params
    prompts, max_new = PROMPTS[:batch], 23
    want = ar.generate(model, params, prompts, max_new_tokens=max_new, eos_id=eos, pad_id=PAD_ID)
    heads, head_params = _random_heads(model, "falcon", block_size=block)
    got = speculative.generate(model, params, prompts,
                               drafter=FalconDrafter(heads, PRESETS[tree]),
                               drafter_params={"heads": head_params, "target": params},
                               max_new_tokens=max_new, eos_id=eos, pad_id=PAD_ID)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.num_tokens, want.num_tokens)
    assert got.tau > 1.1 and got.target_forwards[0] < want.num_tokens[0] - 1


def test_heads_drafters_keep_the_hidden_state_of_the_last_accepted_node():
    """After the prefill: h at each row's last prompt token; after a step: h at the last
    accepted node (the bonus after it is the next root, so head k drafts depth k under it)."""
    for kind, drafter_cls in {**DRAFTERS, "falcon": FalconDrafter}.items():
        heads = build_heads(HeadsConfig(kind=kind, target_run="x"), tiny_model_config())
        drafter = drafter_cls(heads, static_tree([(0,), (1,), (0, 0)]))
        prefill_hidden = jax.random.normal(jax.random.key(0), (3, 5, 64))
        lengths = jnp.array([2, 5, 1])
        state = drafter.init(None, jnp.zeros((3, 5), jnp.int32), lengths, 16,
                             target_hidden=prefill_hidden)
        np.testing.assert_array_equal(state["hidden"], prefill_hidden[jnp.arange(3), lengths - 1])
        tree_hidden = jax.random.normal(jax.random.key(1), (3, 4, 64))
        verdict = Verdict(path=jnp.array([[0, 1, 3], [0, 0, 0], [0, 2, 0]]),
                          n_accepted=jnp.array([3, 1, 2]), bonus=jnp.zeros(3, jnp.int32))
        state = drafter.update(None, state, None, verdict, None, target_hidden=tree_hidden)
        np.testing.assert_array_equal(state["hidden"],
                                      tree_hidden[jnp.arange(3), jnp.array([3, 0, 2])])


@pytest.mark.parametrize("kind", ["medusa", "hydra"])
def test_heads_drafts_fill_the_tree_template_by_rank(tiny_model_and_params, kind):
    """Node i is the ranks[i]-th best token of head depth[i]: from h alone (Medusa) or from h
    and the tokens on the path to i's parent (Hydra, so siblings' subtrees differ)."""
    model, params = tiny_model_and_params
    heads, head_params = _random_heads(model, kind, noise=1.0)  # far from the identity
    tree = PRESETS["medusa_small"]
    drafter = DRAFTERS[kind](heads, tree)
    hidden = jax.random.normal(jax.random.key(3), (2, 64))
    draft, _ = jax.jit(drafter.propose)({"heads": head_params, "target": params},
                                        {"hidden": hidden}, jnp.array([9, 100]), None)
    tokens = np.asarray(draft.tokens)
    np.testing.assert_array_equal(draft.parents, np.tile(tree.parents, (2, 1)))
    np.testing.assert_array_equal(tokens[:, 0], [9, 100])
    # Every node's head, as training runs it (teacher-forced: Hydra head k reads the first k
    # tokens of the path from the root; the padding after them is never read).
    paths = np.zeros((tree.num_nodes, heads.num_heads), np.int32)
    for i in range(1, tree.num_nodes):
        path = [tree.paths.index(tree.paths[i][:d]) for d in range(tree.depth[i])]
        paths[i, : len(path)] = tokens[0, path]
    logits = heads.logits(head_params, params, jnp.broadcast_to(hidden[0], (tree.num_nodes, 64)),
                          jnp.asarray(paths))
    for i in range(1, tree.num_nodes):
        want = np.argsort(-np.asarray(logits[i, tree.depth[i] - 1]), kind="stable")[tree.ranks[i]]
        assert tokens[0, i] == want, f"node {i}"
    best_at_depth_2 = tokens[:, (tree.depth == 2) & (tree.ranks == 0)]  # one per depth-1 parent
    assert (best_at_depth_2 != best_at_depth_2[:, :1]).any() == (kind == "hydra")


def test_head_drafters_reject_a_tree_deeper_than_the_heads(tiny_model_and_params):
    model, _ = tiny_model_and_params
    heads = build_heads(HeadsConfig(kind="medusa", target_run="x", num_heads=3), model.config)
    with pytest.raises(ValueError, match="4 deep but there are only 3 heads"):
        MedusaDrafter(heads, PRESETS["medusa_small"])
    with pytest.raises(ValueError, match="HydraDrafter needs hydra heads"):
        HydraDrafter(heads, PRESETS["chain4"])
    with pytest.raises(ValueError, match="FalconDrafter needs falcon heads"):
        FalconDrafter(heads, PRESETS["chain4"])
    assert hash(MedusaDrafter(heads, static_tree([(0,), (1,)]))) is not None  # a static jit arg


def test_falcon_drafts_fill_the_tree_template_by_block(tiny_model_and_params):
    """Node i at depth d in the block with boundary m is the ranks[i]-th best token of query d
    given the path to its depth-m ancestor, as training runs it (teacher-forced; the tokens after
    depth m are never read). So inside a block a candidate depends on its depth and that
    ancestor only (Medusa-like), across blocks on the path (Hydra-like)."""
    model, params = tiny_model_and_params
    heads, head_params = _random_heads(model, "falcon", noise=1.0, block_size=2)
    tree = PRESETS["medusa_small"]
    hidden = jax.random.normal(jax.random.key(3), (2, 64))
    draft, _ = jax.jit(FalconDrafter(heads, tree).propose)(
        {"heads": head_params, "target": params}, {"hidden": hidden}, jnp.array([9, 100]), None)
    tokens = np.asarray(draft.tokens)
    np.testing.assert_array_equal(draft.parents, np.tile(tree.parents, (2, 1)))
    np.testing.assert_array_equal(tokens[:, 0], [9, 100])
    paths = np.zeros((tree.num_nodes, heads.num_heads), np.int32)
    for i in range(1, tree.num_nodes):
        boundary = (tree.depth[i] - 1) // 2 * 2
        path = [tree.paths.index(tree.paths[i][:d]) for d in range(boundary + 1)]
        paths[i, : len(path)] = tokens[0, path]
    logits = jax.jit(heads.logits)(head_params, params,
                                   jnp.broadcast_to(hidden[0], (tree.num_nodes, 64)),
                                   jnp.asarray(paths))
    for i in range(1, tree.num_nodes):
        want = np.argsort(-np.asarray(logits[i, tree.depth[i] - 1]), kind="stable")[tree.ranks[i]]
        assert tokens[0, i] == want, f"node {i}"
    best = {d: tokens[:, (tree.depth == d) & (tree.ranks == 0)] for d in (2, 3)}
    assert (best[2] == best[2][:, :1]).all()  # depth 2: same block as depth 1, one anchor (root)
    assert (best[3] != best[3][:, :1]).any()  # depth 3: a new block on each depth-2 node's path

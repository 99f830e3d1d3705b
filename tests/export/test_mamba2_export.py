"""zoo's Mamba2 LM <-> transformers' Mamba2ForCausalLM: exported weights give transformers'
logits equal to zoo's and the same greedy tokens (its recurrent decode path, not only the
chunked scan); a model built by transformers imports with equal logits; broken checkpoints and
configs zoo cannot represent are named."""

import json
import math

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from zoo.export import hf, mamba2
from zoo.models import build_model

from conftest import loud_ssm_params, tiny_ssm_config
from hf_reference import assert_transformers_agrees, torch_logits, zoo_logits

CONFIGS = {  # heads, head dim, groups, state size, conv width, expand, tying all vary
    "groups2_untied": tiny_ssm_config(),
    "groups1_tied_expand1_conv3": tiny_ssm_config(ssm_expand=1, ssm_heads=2, ssm_head_dim=16,
                                                  ssm_groups=1, ssm_state_dim=8,
                                                  ssm_conv_width=3, tie_embeddings=True),
    "8heads_of_8_conv2": tiny_ssm_config(ssm_heads=8, ssm_head_dim=8, ssm_state_dim=4,
                                         ssm_conv_width=2, n_layers=3),
}
TOKENS = np.random.default_rng(0).integers(0, 256, (2, 21))  # chunks of 8: 2 full + a part


def random_params(model, seed=0):
    """Random weights (drawn on the host: compiling zoo's init costs more than the test) with
    norm scales and D away from one and conv biases away from zero, so a misplaced one shows,
    and loud SSM states, so a wrong state or conv window shows."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        noise = rng.normal(size=leaf.shape).astype(np.float32)
        if len(leaf.shape) > 1:
            return 0.2 * noise
        return (1.0 if path[-1].key in ("scale", "norm_scale", "D") else 0.0) + 0.3 * noise

    shapes = jax.eval_shape(model.init, jax.random.key(0))
    return loud_ssm_params(jax.tree_util.tree_map_with_path(draw, shapes))


def test_configs_round_trip():
    for config in CONFIGS.values():
        back = mamba2.zoo_config(mamba2.hf_config(config))
        for field in ("vocab_size", "d_model", "n_layers", "norm_eps", "tie_embeddings",
                      "ssm_heads", "ssm_head_dim", "ssm_expand", "ssm_state_dim", "ssm_groups",
                      "ssm_conv_width", "ssm_chunk_size"):
            assert getattr(back, field) == getattr(config, field), field


@pytest.mark.parametrize("name", list(CONFIGS))
def test_exported_weights_give_transformers_the_same_logits_and_tokens(name, tmp_path):
    config = CONFIGS[name]
    model = build_model(config)
    params = random_params(model)
    assert_transformers_agrees(mamba2, config, model, params, tmp_path, "Mamba2ForCausalLM",
                               TOKENS, 11)


def test_bfloat16_export_loads_and_stays_close(tmp_path):
    config = CONFIGS["groups2_untied"]
    model = build_model(config)
    params = random_params(model)
    hf.write(tmp_path, mamba2.hf_config(config), mamba2.tensor_map(config), params,
             dtype="bfloat16")
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    logits = torch_logits(theirs, TOKENS)  # bf16 weights, float32 math
    assert np.abs(logits - zoo_logits(model, params, TOKENS)).max() < 0.05 * np.abs(logits).max()
    rounded = jax.tree.map(lambda x: np.asarray(x, ml_dtypes.bfloat16).astype(np.float32), params)
    np.testing.assert_allclose(logits, zoo_logits(model, rounded, TOKENS), atol=1e-4, rtol=0)
    back = hf.read(tmp_path, mamba2.tensor_map(config))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2), back,
                 jax.tree.map(np.asarray, params))


@pytest.mark.parametrize("tied", [False, True])
def test_a_transformers_model_imports_with_equal_logits(tied, tmp_path):
    hf_config = transformers.Mamba2Config(
        vocab_size=260, hidden_size=24, num_hidden_layers=2, num_heads=6, head_dim=8,
        expand=2, state_size=8, n_groups=3, conv_kernel=3, chunk_size=8,
        layer_norm_epsilon=1e-6, tie_word_embeddings=tied)
    torch.manual_seed(0)
    theirs = transformers.Mamba2ForCausalLM(hf_config).eval()
    with torch.no_grad():  # transformers' init: unit norms, D = 1, dt ~ 0.001-0.1; make them matter
        for name, p in theirs.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight", ".D", "conv1d.bias")):
                p.add_(0.3 * torch.randn_like(p))
            elif name.endswith("dt_bias"):
                p.copy_(torch.linspace(-0.5, 3.0, len(p)))
    theirs.save_pretrained(tmp_path)
    config = mamba2.zoo_config(hf.read_config(tmp_path))
    assert (config.ssm_heads, config.ssm_head_dim, config.ssm_groups, config.ssm_state_dim,
            config.ssm_conv_width, config.norm_eps, config.tie_embeddings) == (
                6, 8, 3, 8, 3, 1e-6, tied)
    params = hf.read(tmp_path, mamba2.tensor_map(config))
    ours = zoo_logits(build_model(config), params, TOKENS)
    np.testing.assert_allclose(ours, torch_logits(theirs, TOKENS), atol=1e-4, rtol=0)


def test_missing_and_misshapen_tensors_are_named(tmp_path):
    config = CONFIGS["groups2_untied"]
    params = random_params(build_model(config))
    hf.write(tmp_path, mamba2.hf_config(config), mamba2.tensor_map(config), params)
    tensors = load_file(tmp_path / hf.SINGLE)
    tensors.pop("backbone.layers.1.mixer.conv1d.weight")
    save_file(tensors, tmp_path / hf.SINGLE)
    with pytest.raises(hf.CheckpointMismatch, match=r"missing tensor backbone\.layers\.1\.mixer\."
                       r"conv1d\.weight \(expected shape \(128, 1, 4\)\)"):
        hf.read(tmp_path, mamba2.tensor_map(config))
    tensors["backbone.layers.1.mixer.conv1d.weight"] = np.zeros((128, 1, 4), np.float32)
    tensors["backbone.layers.0.mixer.A_log"] = np.zeros((3,), np.float32)
    save_file(tensors, tmp_path / hf.SINGLE)
    with pytest.raises(hf.CheckpointMismatch, match=r"backbone\.layers\.0\.mixer\.A_log has "
                       r"shape \(3,\), expected \(4,\)"):
        hf.read(tmp_path, mamba2.tensor_map(config))


@pytest.mark.parametrize("change, message", [
    ({"use_bias": True}, "use_bias=True"),
    ({"use_conv_bias": False}, "use_conv_bias=False"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"time_step_limit": [0.0, 10.0]}, "time_step_limit"),
])
def test_configs_zoo_cannot_represent_are_named(change, message):
    good = mamba2.hf_config(CONFIGS["groups2_untied"])
    assert mamba2.zoo_config({**good, "time_step_limit": [0.0, {"__float__": "Infinity"}]})
    assert mamba2.zoo_config({**good, "time_step_limit": [0.0, math.inf]})
    with pytest.raises(hf.CheckpointMismatch, match=message):
        mamba2.zoo_config({**good, **change})

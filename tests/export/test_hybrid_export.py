"""zoo's hybrid LM <-> transformers' GraniteMoeHybridForCausalLM (dense, full RoPE): exported
weights give transformers' logits equal to zoo's and the same greedy tokens; a model built by
transformers imports with equal logits; Mamba layers whose MLP is not zero, broken checkpoints
and configs zoo cannot represent are named."""

import dataclasses
import json

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from zoo.export import hf, hybrid
from zoo.models import build_model

from conftest import tiny_ssm_config
from hf_reference import assert_transformers_agrees, torch_logits, zoo_logits
from test_mamba2_export import random_params

CONFIGS = {  # pattern, KV heads, head dim, RoPE theta, SSM shapes, tying all vary
    "mam_gqa_untied": tiny_ssm_config("hybrid", rope_theta=500.0),
    "amma_mha_tied_groups1": tiny_ssm_config(
        "hybrid", n_layers=4, layer_pattern="amma", n_kv_heads=4, head_dim=12, rope_theta=1e6,
        ssm_groups=1, ssm_state_dim=8, ssm_conv_width=3, tie_embeddings=True),
    "ma_mqa_8ssm_heads": tiny_ssm_config(
        "hybrid", n_layers=2, layer_pattern="ma", n_heads=8, n_kv_heads=1, ssm_heads=8,
        ssm_head_dim=8, ssm_state_dim=4, ssm_conv_width=2),
}
TOKENS = np.random.default_rng(0).integers(0, 256, (2, 21))  # chunks of 8: 2 full + a part


@pytest.mark.parametrize("name", list(CONFIGS))
def test_exported_weights_give_transformers_the_same_logits_and_tokens(name, tmp_path):
    config = CONFIGS[name]
    model = build_model(config)
    params = random_params(model)
    assert_transformers_agrees(hybrid, config, model, params, tmp_path,
                               "GraniteMoeHybridForCausalLM", TOKENS, 11)
    back = hf.read(tmp_path, hybrid.tensor_map(config))  # the fused gate/up splits back
    jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))
    back = hybrid.zoo_config(hf.read_config(tmp_path))  # all but the init scale round trips
    assert back == dataclasses.replace(config, head_dim=config.resolved_head_dim,
                                       init_std=back.init_std)


def test_bfloat16_export_loads_and_stays_close(tmp_path):
    config = CONFIGS["mam_gqa_untied"]
    model = build_model(config)
    params = random_params(model)
    hf.write(tmp_path, hybrid.hf_config(config), hybrid.tensor_map(config), params,
             dtype="bfloat16")
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    logits = torch_logits(theirs, TOKENS)  # bf16 weights, float32 math
    assert np.abs(logits - zoo_logits(model, params, TOKENS)).max() < 0.05 * np.abs(logits).max()
    rounded = jax.tree.map(lambda x: np.asarray(x, ml_dtypes.bfloat16).astype(np.float32), params)
    np.testing.assert_allclose(logits, zoo_logits(model, rounded, TOKENS), atol=1e-4, rtol=0)


def transformers_hybrid(tied: bool):
    """A GraniteMoeHybrid built by transformers (its own init) that zoo can hold: the Mamba
    layers' MLPs zeroed; norms, D, conv biases and dt moved off transformers' defaults."""
    config = transformers.GraniteMoeHybridConfig(
        vocab_size=260, hidden_size=24, num_hidden_layers=3,
        layer_types=["linear_attention", "full_attention", "linear_attention"],
        num_attention_heads=6, num_key_value_heads=2, head_dim=8, attention_multiplier=8 ** -0.5,
        num_local_experts=0, shared_intermediate_size=40, position_embedding_type="rope",
        rope_parameters={"rope_type": "default", "rope_theta": 2000.0}, mamba_n_heads=6,
        mamba_d_head=8, mamba_n_groups=3, mamba_d_state=8, mamba_d_conv=3, mamba_chunk_size=8,
        rms_norm_eps=1e-6, initializer_range=0.1, tie_word_embeddings=tied)
    torch.manual_seed(0)
    model = transformers.GraniteMoeHybridForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            layer = int(name.split(".")[2]) if name.startswith("model.layers.") else None
            if layer is not None and config.layer_types[layer] == "linear_attention" and (
                    "shared_mlp" in name or "post_attention_layernorm" in name):
                p.fill_(1.0 if "layernorm" in name else 0.0)
            elif name.endswith(("norm.weight", ".D", "conv1d.bias")):
                p.add_(0.3 * torch.randn_like(p))
            elif name.endswith("dt_bias"):
                p.copy_(torch.linspace(-0.5, 3.0, len(p)))
    return model


@pytest.mark.parametrize("tied", [False, True])
def test_a_transformers_model_imports_with_equal_logits(tied, tmp_path):
    theirs = transformers_hybrid(tied)
    theirs.save_pretrained(tmp_path)
    config = hybrid.zoo_config(hf.read_config(tmp_path))
    assert (config.layer_pattern, config.n_heads, config.n_kv_heads, config.head_dim,
            config.mlp_dim, config.rope_theta, config.ssm_heads, config.ssm_groups,
            config.ssm_conv_width, config.norm_eps, config.tie_embeddings) == (
                "mam", 6, 2, 8, 40, 2000.0, 6, 3, 3, 1e-6, tied)
    params = hf.read(tmp_path, hybrid.tensor_map(config))
    ours = zoo_logits(build_model(config), params, TOKENS)
    np.testing.assert_allclose(ours, torch_logits(theirs, TOKENS), atol=1e-4, rtol=0)


def test_a_mamba_layer_with_a_real_mlp_is_refused(tmp_path):
    theirs = transformers_hybrid(tied=False)
    with torch.no_grad():
        theirs.model.layers[2].shared_mlp.output_linear.weight[0, 0] = 0.5
    theirs.save_pretrained(tmp_path)
    config = hybrid.zoo_config(hf.read_config(tmp_path))
    with pytest.raises(hf.CheckpointMismatch, match=r"model\.layers\.2\.shared_mlp\."
                       r"output_linear\.weight must be all 0\.0"):
        hf.read(tmp_path, hybrid.tensor_map(config))


def test_missing_and_misshapen_tensors_are_named(tmp_path):
    config = CONFIGS["mam_gqa_untied"]
    params = random_params(build_model(config))
    hf.write(tmp_path, hybrid.hf_config(config), hybrid.tensor_map(config), params)
    tensors = load_file(tmp_path / hf.SINGLE)
    tensors.pop("model.layers.1.shared_mlp.input_linear.weight")
    save_file(tensors, tmp_path / hf.SINGLE)
    with pytest.raises(hf.CheckpointMismatch, match=r"missing tensor model\.layers\.1\."
                       r"shared_mlp\.input_linear\.weight \(expected shape \(128, 32\)\)"):
        hf.read(tmp_path, hybrid.tensor_map(config))
    tensors["model.layers.1.shared_mlp.input_linear.weight"] = np.zeros((128, 32), np.float32)
    tensors["model.layers.2.mamba.conv1d.weight"] = np.zeros((128, 1, 3), np.float32)
    save_file(tensors, tmp_path / hf.SINGLE)
    with pytest.raises(hf.CheckpointMismatch, match=r"model\.layers\.2\.mamba\.conv1d\.weight "
                       r"has shape \(128, 1, 3\), expected \(128, 1, 4\)"):
        hf.read(tmp_path, hybrid.tensor_map(config))


@pytest.mark.parametrize("change, message", [
    ({"num_local_experts": 8}, "num_local_experts=8"),
    ({"position_embedding_type": "nope"}, "position_embedding_type='nope'"),
    ({"embedding_multiplier": 12.0}, "embedding_multiplier=12.0"),
    ({"attention_multiplier": 0.0078125}, "attention_multiplier=0.0078125"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "rope type 'yarn'"),
    ({"layer_types": ["mamba"] * 3}, "layer_types"),
    ({"mamba_proj_bias": True}, "mamba_proj_bias=True"),
])
def test_configs_zoo_cannot_represent_are_named(change, message):
    good = hybrid.hf_config(CONFIGS["mam_gqa_untied"])
    with pytest.raises(hf.CheckpointMismatch, match=message):
        hybrid.zoo_config({**good, **change})

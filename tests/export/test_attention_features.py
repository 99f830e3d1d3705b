"""Attention features of current open dense models against transformers: RoPE scaling (llama3 as
Llama 3.1/3.2 use it, linear, dynamic), q/k/v biases (Qwen2/2.5), per-head q/k RMSNorm (Qwen3).
A random model built by transformers with the feature imports into zoo, and exported back it gives
transformers zoo's logits and 20 greedy tokens and the very tensors it came from. Configs zoo
cannot represent are refused, naming the field."""

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from zoo.config import ConfigError, ModelConfig
from zoo.export import convert, hf, hybrid, llama
from zoo.models import build_model

from conftest import tiny_ssm_config
from hf_reference import assert_transformers_agrees, random_hf_model

SHAPE = dict(vocab_size=260, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=6, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6,
             initializer_range=0.2)  # sharp enough that greedy tokens vary
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32, "rope_theta": 10000.0}
# name: (config class, its features, the zoo fields they import as, tokens checked, prompt)
MODELS = {
    "llama_llama3_rope_tied": (
        transformers.LlamaConfig, dict(rope_parameters=LLAMA3, max_position_embeddings=256,
                                       tie_word_embeddings=True),
        dict(rope_scaling="llama3", rope_factor=8.0, rope_original_max_len=32), 24, 7),
    "qwen2_bias_linear_rope": (
        transformers.Qwen2Config, dict(rope_parameters={"rope_type": "linear", "factor": 4.0,
                                                        "rope_theta": 1e4}),
        dict(qkv_bias=True, rope_scaling="linear", rope_factor=4.0), 24, 7),
    # Dynamic: the logits within max_position_embeddings, then 12 of the 20 greedy tokens past it.
    "qwen3_qk_norm_bias_dynamic_rope": (
        transformers.Qwen3Config, dict(attention_bias=True, max_position_embeddings=12,
                                       rope_parameters={"rope_type": "dynamic", "factor": 16.0,
                                                        "rope_theta": 1e4}),
        dict(qk_norm=True, qkv_bias=True, rope_scaling="dynamic", max_positions=12), 12, 4),
}
TOKENS = np.random.default_rng(0).integers(0, 256, (2, 24))


def transformers_model(name):
    """transformers' own random init, with norms and q/k/v biases moved off their defaults (ones,
    zeros) so a wrong mapping shows; o_proj's bias stays zero (zoo has none)."""
    cls, features, _, _, _ = MODELS[name]
    model = random_hf_model(transformers.AutoModelForCausalLM.from_config, cls(**SHAPE, **features))
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
                p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name", list(MODELS))
def test_transformers_model_imports_decodes_and_exports_back(name, tmp_path):
    theirs = transformers_model(name)
    theirs.save_pretrained(tmp_path / "hf")
    assert convert.architecture_of(hf.read_config(tmp_path / "hf")) is llama  # zoo-import's
    config = llama.zoo_config(hf.read_config(tmp_path / "hf"))
    _, _, fields, length, prompt = MODELS[name]
    assert {key: getattr(config, key) for key in fields} == fields
    params = hf.read(tmp_path / "hf", llama.tensor_map(config))
    assert_transformers_agrees(llama, config, build_model(config), params, tmp_path / "out",
                               type(theirs).__name__, TOKENS[:, :length], prompt)
    original, exported = load_file(tmp_path / "hf" / hf.SINGLE), load_file(
        tmp_path / "out" / hf.SINGLE)
    assert sorted(exported) == sorted(original)
    for key, value in original.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


@pytest.mark.parametrize("change, message", [
    ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "rope type 'yarn'"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor=0.5"),
    ({"use_sliding_window": True}, "use_sliding_window=True"),
    ({"layer_types": ["full_attention", "sliding_attention"]}, "'sliding_attention'"),
    ({"mlp_bias": True}, "mlp_bias=True"),
    ({"model_type": "mistral"}, "model_type 'mistral'"),
])
def test_configs_zoo_cannot_represent_are_named(change, message):
    good = llama.hf_config(ModelConfig(qk_norm=True, rope_scaling="llama3", rope_factor=8.0))
    assert llama.zoo_config(good).rope_scaling == "llama3"
    with pytest.raises(hf.CheckpointMismatch, match=message):
        llama.zoo_config({**good, **change})


def test_unrepresentable_weights_and_exports_are_refused(tmp_path):
    """A non-zero o_proj bias (Qwen3/Llama attention_bias) has no place in zoo; the hybrid's
    GraniteMoeHybrid export has no q/k norm, q/k/v-only bias or RoPE scaling; bad fields name
    themselves."""
    theirs = transformers_model("qwen3_qk_norm_bias_dynamic_rope")
    with torch.no_grad():
        theirs.model.layers[1].self_attn.o_proj.bias.fill_(0.5)
    theirs.save_pretrained(tmp_path)
    config = llama.zoo_config(hf.read_config(tmp_path))
    with pytest.raises(hf.CheckpointMismatch, match=r"model\.layers\.1\.self_attn\.o_proj\.bias "
                       r"must be all 0\.0"):
        hf.read(tmp_path, llama.tensor_map(config))
    for key, value in (("qk_norm", True), ("qkv_bias", True), ("rope_scaling", "linear")):
        with pytest.raises(hf.CheckpointMismatch, match=f"model.{key}={value!r}"):
            hybrid.hf_config(tiny_ssm_config("hybrid", **{key: value}))
    for fields, message in ((dict(rope_scaling="yarn"), "model.rope_scaling='yarn'"),
                            (dict(rope_scaling="linear", rope_factor=0.5), "model.rope_factor"),
                            (dict(rope_scaling="llama3", rope_low_freq_factor=4.0),
                             "model.rope_low_freq_factor=4.0")):
        with pytest.raises(ConfigError, match=message):
            ModelConfig(**fields)

"""The catalog of published models in configs/models/: each entry exports the published
config.json's architecture fields, and transformers builds from that config.json a model with
zoo's parameter count, to the parameter (and the published count where the model card gives it).
Both are built abstractly (zoo's init under jax.eval_shape, transformers' on the meta device), so
a 70B entry costs no memory."""

import json
import math

import jax
import pytest
import torch
import transformers

from zoo import config as config_lib
from zoo.config import ModelConfig
from zoo.export import convert
from zoo.models import build_model

from conftest import REPO

LLAMA3 = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=128256,
              num_key_value_heads=8, hidden_act="silu", rms_norm_eps=1e-5, rope_theta=500000.0,
              max_position_embeddings=131072, attention_bias=False, mlp_bias=False)


def llama3_rope(factor: float) -> dict:
    return dict(rope_type="llama3", factor=factor, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=8192)


QWEN = dict(vocab_size=151936, hidden_act="silu", rms_norm_eps=1e-6, rope_theta=1000000.0,
            use_sliding_window=False)
QWEN2 = dict(QWEN, architectures=["Qwen2ForCausalLM"], model_type="qwen2")
QWEN3 = dict(QWEN, architectures=["Qwen3ForCausalLM"], model_type="qwen3", head_dim=128,
             num_key_value_heads=8, max_position_embeddings=40960, rope_scaling=None,
             attention_bias=False)
# state-spaces/mamba2-*'s config.json is mamba_ssm's (d_model, n_layer, vocab_size 50277 with
# pad_vocab_size_multiple 16, Mamba2's defaults d_state 128, d_conv 4, expand 2, headdim 64,
# ngroups 1, chunk_size 256, no projection bias, conv bias): here in Mamba2Config's names.
MAMBA2 = dict(architectures=["Mamba2ForCausalLM"], model_type="mamba2", vocab_size=50288,
              state_size=128, head_dim=64, expand=2, n_groups=1, conv_kernel=4, chunk_size=256,
              use_bias=False, use_conv_bias=True, layer_norm_epsilon=1e-5,
              tie_word_embeddings=True)


def mamba2(width: int, layers: int) -> dict:
    return dict(MAMBA2, hidden_size=width, num_hidden_layers=layers, num_heads=2 * width // 64)


# catalog entry: (the published config.json's architecture fields, the published parameter count)
PUBLISHED = {
    "llama3_2_1b": (dict(LLAMA3, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, head_dim=64, rope_scaling=llama3_rope(32.0),
                         tie_word_embeddings=True), 1_235_814_400),
    "llama3_2_3b": (dict(LLAMA3, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                         num_attention_heads=24, head_dim=128, rope_scaling=llama3_rope(32.0),
                         tie_word_embeddings=True), 3_212_749_824),
    "llama3_1_8b": (dict(LLAMA3, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, rope_scaling=llama3_rope(8.0),
                         tie_word_embeddings=False), 8_030_261_248),
    "llama3_1_70b": (dict(LLAMA3, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                          num_attention_heads=64, rope_scaling=llama3_rope(8.0),
                          tie_word_embeddings=False), 70_553_706_496),
    "qwen2_5_0_5b": (dict(QWEN2, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                          num_attention_heads=14, num_key_value_heads=2,
                          max_position_embeddings=32768, tie_word_embeddings=True), 494_032_768),
    "qwen2_5_7b": (dict(QWEN2, vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                        num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                        max_position_embeddings=131072, tie_word_embeddings=False),
                   7_615_616_512),
    "qwen3_0_6b": (dict(QWEN3, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                        num_attention_heads=16, tie_word_embeddings=True), 596_049_920),
    "qwen3_8b": (dict(QWEN3, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                      num_attention_heads=32, tie_word_embeddings=False), 8_190_735_360),
    "mamba2_130m": (mamba2(768, 24), None),
    "mamba2_370m": (mamba2(1024, 48), None),
    "mamba2_780m": (mamba2(1536, 48), None),
    "mamba2_1_3b": (mamba2(2048, 48), None),
    "mamba2_2_7b": (mamba2(2560, 64), None),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_entry_exports_the_published_architecture_with_equal_parameter_count(name, tmp_path):
    fields, published_count = PUBLISHED[name]
    config = ModelConfig(**config_lib._read_yaml(REPO / "configs" / "models" / f"{name}.yaml"))
    exported = convert.architecture(config.family).hf_config(config)
    assert {key: exported.get(key) for key in fields} == fields
    (tmp_path / "config.json").write_text(json.dumps(exported))
    with torch.device("meta"):
        theirs = transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.from_pretrained(tmp_path))
    abstract = jax.eval_shape(build_model(config).init, jax.random.key(0))
    ours = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(abstract))
    assert ours == sum(p.numel() for p in theirs.parameters())  # tied weights counted once
    assert published_count in (None, ours)

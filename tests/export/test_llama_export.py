"""zoo's transformer <-> transformers' LlamaForCausalLM: exported weights give transformers'
logits equal to zoo's and the same greedy tokens; a model built by transformers imports into
zoo with equal logits; broken checkpoints are named."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from zoo.export import hf, llama
from launch.export import export_main, import_main
from zoo.export.convert import import_hf
from zoo.models import build_model

from conftest import tiny_model_config
from hf_reference import assert_transformers_agrees, random_hf_model, torch_logits

CONFIGS = {  # heads / KV heads / head dim / RoPE theta / tied embeddings all vary
    "gqa_untied": tiny_model_config(n_heads=4, n_kv_heads=2, rope_theta=500.0),
    "mha_tied_wide_heads": tiny_model_config(n_heads=4, n_kv_heads=4, head_dim=32,
                                             tie_embeddings=True),
    "mqa_theta_1e6": tiny_model_config(n_heads=8, n_kv_heads=1, rope_theta=1e6, n_layers=3),
}
TOKENS = np.random.default_rng(0).integers(0, 256, (2, 24))


def random_params(model):
    """Random init with non-trivial norm scales, so a norm mapped wrongly shows."""
    params = model.init(jax.random.key(0))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(treedef, [
        x + 0.3 * jax.random.normal(k, x.shape) if x.ndim == 1 else x
        for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_exported_weights_give_transformers_the_same_logits_and_tokens(name, tmp_path):
    config = CONFIGS[name]
    model = build_model(config)
    params = random_params(model)
    assert_transformers_agrees(llama, config, model, params, tmp_path, "LlamaForCausalLM",
                               TOKENS, 7)


def test_bfloat16_export_loads_and_stays_close(tmp_path):
    config = CONFIGS["gqa_untied"]
    model = build_model(config)
    params = random_params(model)
    hf.write(tmp_path, llama.hf_config(config), llama.tensor_map(config), params,
             dtype="bfloat16")
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    ours = np.asarray(model.forward(params, TOKENS)[0])
    assert np.abs(torch_logits(theirs, TOKENS) - ours).max() < 0.05  # bf16 weights, f32 math
    back = hf.read(tmp_path, llama.tensor_map(config))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2), back,
                 jax.tree.map(np.asarray, params))


def test_a_transformers_model_imports_with_equal_logits(tmp_path):
    hf_config = transformers.LlamaConfig(
        vocab_size=260, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 2000.0},
        tie_word_embeddings=False)
    theirs = random_hf_model(transformers.LlamaForCausalLM, hf_config)
    theirs.save_pretrained(tmp_path / "hf")
    config = import_hf(tmp_path / "hf", tmp_path / "run")
    assert (config.model.n_heads, config.model.n_kv_heads, config.model.head_dim,
            config.model.rope_theta, config.model.norm_eps) == (6, 2, 8, 2000.0, 1e-6)
    from zoo.runs import load_run
    _, params = load_run(tmp_path / "run")
    ours = np.asarray(build_model(config.model).forward(params, TOKENS)[0])
    np.testing.assert_allclose(ours, torch_logits(theirs, TOKENS), atol=1e-4, rtol=0)


def test_sharded_export_round_trips_through_the_run_directory(tmp_path, tiny_experiment):
    """zoo-export: a zoo run -> a sharded HF folder (index + several files) -> transformers;
    zoo-import: back to a zoo run with identical params (and it will not overwrite one)."""
    from zoo.runs import load_run
    from zoo.train.loop import train
    config = tiny_experiment("train.steps=2", "train.warmup_steps=1", "train.eval_every=2",
                             "train.checkpoint_every=2",
                             f"train.run_dir={tmp_path / 'run'}")
    train(config, progress=False)
    assert export_main(["--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "hf"),
                        "--max-shard-mb", "0.04"]) == 0
    assert len(list((tmp_path / "hf").glob("model-*-of-*.safetensors"))) > 1
    assert (tmp_path / "hf" / hf.INDEX).is_file()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    _, params = load_run(tmp_path / "run")
    ours = np.asarray(build_model(config.model).forward(params, TOKENS)[0])
    np.testing.assert_allclose(torch_logits(theirs, TOKENS), ours, atol=1e-4, rtol=0)
    assert import_main(["--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    assert import_main(["--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 2
    _, back = load_run(tmp_path / "back")
    jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))


def test_missing_and_misshapen_tensors_are_named(tmp_path):
    config = CONFIGS["gqa_untied"]
    params = build_model(config).init(jax.random.key(0))
    hf.write(tmp_path, llama.hf_config(config), llama.tensor_map(config), params)
    tensors = load_file(tmp_path / hf.SINGLE)
    tensors.pop("model.layers.1.mlp.up_proj.weight")
    save_file(tensors, tmp_path / hf.SINGLE)
    with pytest.raises(hf.CheckpointMismatch, match=r"missing tensor model\.layers\.1\.mlp\."
                       r"up_proj\.weight \(expected shape \(128, 64\)\)"):
        hf.read(tmp_path, llama.tensor_map(config))
    tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((128, 64), np.float32)
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((16, 64), np.float32)
    save_file(tensors, tmp_path / hf.SINGLE)
    with pytest.raises(hf.CheckpointMismatch, match=r"model\.layers\.0\.self_attn\.k_proj\.weight "
                       r"has shape \(16, 64\), expected \(32, 64\)"):
        hf.read(tmp_path, llama.tensor_map(config))
    with pytest.raises(hf.CheckpointMismatch, match="hidden_act='gelu'"):
        llama.zoo_config({**llama.hf_config(config), "hidden_act": "gelu"})

"""zoo-import of folders in the layout the Hub publishes: every catalog architecture, at reduced
depth and width but with its features (llama3 RoPE and tied embeddings, Qwen2's biases, Qwen3's
q/k norm, Mamba2), written by transformers itself in bfloat16 and sharded under an index, imports
as the model transformers runs from those bfloat16 weights."""

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
import transformers

from zoo import config as config_lib
from zoo.config import ModelConfig
from zoo.export import convert
from zoo.models import build_model
from zoo.runs import load_run

from conftest import REPO
from hf_reference import random_hf_model, torch_logits, zoo_logits

CATALOG = REPO / "configs" / "models"


def reduced(name: str) -> ModelConfig:
    """Catalog entry `name` at 2 layers of width 64 and 512 ids, features kept."""
    config = ModelConfig(**config_lib._read_yaml(CATALOG / f"{name}.yaml"))
    small = dict(vocab_size=512, d_model=64, n_layers=2)
    if config.family == "mamba2":
        return dataclasses.replace(config, **small, ssm_heads=8, ssm_head_dim=16,
                                   ssm_state_dim=16, ssm_chunk_size=16)
    return dataclasses.replace(config, **small, n_heads=4, n_kv_heads=2, head_dim=16,
                               mlp_dim=128)


@pytest.mark.parametrize("name", ["llama3_2_1b", "qwen2_5_0_5b", "qwen3_0_6b", "mamba2_130m"])
def test_bf16_sharded_folder_imports_as_transformers_runs_it(name, tmp_path):
    config = reduced(name)
    exported = convert.architecture(config.family).hf_config(config)
    hf_config = transformers.AutoConfig.for_model(**copy.deepcopy(exported))  # it edits rope dicts
    theirs = random_hf_model(transformers.AutoModelForCausalLM.from_config(hf_config).__class__,
                             hf_config)
    folder = tmp_path / "hf"
    theirs.to(torch.bfloat16).save_pretrained(folder, max_shard_size="64KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded, as published

    imported = convert.import_hf(folder, tmp_path / "run").model
    assert convert.architecture(imported.family).hf_config(imported) == exported
    _, params = load_run(tmp_path / "run")
    model = build_model(imported)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (2, 24))
    # The reference: transformers runs the folder's bfloat16 weights in float32, as zoo holds them.
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    np.testing.assert_allclose(zoo_logits(model, params, tokens), torch_logits(reference, tokens),
                               atol=1e-4, rtol=0)

"""Shared fixtures: tiny model configs and a session-wide corpus directory."""

import pathlib

import jax
import numpy as np
import pytest

from zoo import config as config_lib
from zoo.config import ModelConfig

REPO = pathlib.Path(__file__).resolve().parent.parent


def tiny_model_config(**overrides) -> ModelConfig:
    base = dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=128)
    return ModelConfig(**{**base, **overrides})


def random_parents(rng: np.random.Generator, t: int, kind: str) -> np.ndarray:
    """A parents array of a chain, a star or a random topologically ordered tree."""
    if kind == "chain":
        return np.arange(t) - 1
    if kind == "star":
        return np.array([-1] + [0] * (t - 1))
    return np.array([-1] + [rng.integers(0, i) for i in range(1, t)])



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

import subprocess
import sys

import pytest

from zoo import config as config_lib
from zoo.config import ConfigError, DecodeConfig, ModelConfig, TrainConfig

from conftest import REPO


def test_shipped_configs_load():
    for path in sorted((REPO / "configs/experiments").glob("*.yaml")):
        cfg = config_lib.load(path)
        assert cfg.name == path.stem
    for path in sorted((REPO / "configs/models").glob("*.yaml")):
        ModelConfig(**config_lib._read_yaml(path))


def test_overrides_are_typed_and_applied():
    cfg = config_lib.load(REPO / "configs/experiments/tiny.yaml",
                          ["model.d_model=128", "train.learning_rate=1e-3",
                           "model.tie_embeddings=false", "decode.temperature=1"])
    assert cfg.model.d_model == 128
    assert cfg.train.learning_rate == 1e-3
    assert cfg.model.tie_embeddings is False
    assert cfg.decode.temperature == 1.0 and isinstance(cfg.decode.temperature, float)


@pytest.mark.parametrize("override, message", [
    (["model.d_modl=3"], "unknown config key model.d_modl"),
    (["modle.d_model=3"], "unknown config key modle.d_model"),
    (["model.d_model=-8"], "model.d_model=-8: must be > 0"),
    (["model.n_heads=5"], "model.n_heads=5: must divide model.d_model=64"),
    (["model.n_kv_heads=3"], "model.n_kv_heads=3: must divide model.n_heads=4"),
    (["model.dtype=float16"], "model.dtype='float16': must be one of"),
    (["model.d_model=abc"], "model.d_model='abc': must be of type int"),
    (["model.tie_embeddings=1"], "model.tie_embeddings=1: must be true or false"),
    (["train.warmup_steps=100"], "train.warmup_steps=100: must be < train.steps=40"),
    (["decode.top_p=0"], "decode.top_p=0.0: must be in (0, 1]"),
    (["data.corpus=wiki"], "data.corpus='wiki'"),
    (["train.steps"], "must look like section.key=value"),
    (["model.family=mamba2", "model.ssm_heads=3", "model.ssm_head_dim=32"],
     "model.ssm_heads=3: x model.ssm_head_dim=32 must equal the inner width "
     "model.ssm_expand * model.d_model = 128"),
    (["model.family=mamba2", "model.ssm_heads=4", "model.ssm_head_dim=32", "model.ssm_groups=3"],
     "model.ssm_groups=3: must divide model.ssm_heads=4"),
    (["model.family=hybrid", "model.layer_pattern=ax"], "names unknown layer kind ['x']"),
    (["model.family=hybrid", "model.layer_pattern=aam"], "must have one letter per layer"),
    (["model.family=hybrid", "model.layer_pattern=aa"], "a hybrid model's layers are 'a' and 'm'"),
    (["model.family=rwkv"], "model.family='rwkv': must be one of"),
    (["objective.kind=next_token"], "objective.kind='next_token': must be one of"),
    (["objective.block_size=4"], "objective.block_size=4: must be 1 unless objective.kind is "
     "next_block"),
    (["objective.kind=next_block", "objective.block_size=5"],
     "objective.block_size=5: must divide data.seq_len=64"),
    (["objective.kind=next_block", "objective.block_size=4", "model.family=mamba2",
      "model.ssm_heads=4", "model.ssm_head_dim=32"],
     "objective.kind='next_block': next_block needs bidirectional attention"),
    (["data.corpus=sprites", "objective.kind=next_block", "objective.block_size=12",
      "data.seq_len=960"], "objective.block_size=12: a video block is whole rows of a frame"),
    (["data.corpus=sprites", "objective.kind=next_block", "objective.block_size=32",
      "data.seq_len=1024"], "data.seq_len=1024: plus the objective's shift (32) must fit one clip"),
])
def test_bad_values_name_the_key_and_rule(override, message):
    with pytest.raises(ConfigError) as err:
        config_lib.load(REPO / "configs/experiments/tiny.yaml", override)
    assert message in str(err.value)


def test_explicit_head_dim_lifts_divisibility():
    assert ModelConfig(d_model=100, n_heads=3, n_kv_heads=1, head_dim=32).resolved_head_dim == 32


def test_dataclass_rules_apply_to_direct_construction():
    with pytest.raises(ConfigError, match="train.end_lr_ratio"):
        TrainConfig(end_lr_ratio=2.0)
    with pytest.raises(ConfigError, match="decode.max_new_tokens"):
        DecodeConfig(max_new_tokens=10, max_len=10)
    with pytest.raises(ConfigError, match="decode.kernel_backend='triton'"):
        DecodeConfig(kernel_backend="triton")


def test_missing_files_and_unknown_sections(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config_lib.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {}\noptimizer: {lr: 1}\n")
    with pytest.raises(ConfigError, match="unknown config key optimizer"):
        config_lib.load(bad)
    missing_model = tmp_path / "experiments" / "x.yaml"
    missing_model.parent.mkdir()
    missing_model.write_text("model: no_such_model\n")
    with pytest.raises(ConfigError, match="no_such_model.yaml"):
        config_lib.load(missing_model)


def test_save_load_round_trip(tmp_path):
    cfg = config_lib.load(REPO / "configs/experiments/code_small.yaml", ["model.n_layers=7"])
    config_lib.save(cfg, tmp_path / "c.yaml")
    assert config_lib.load(tmp_path / "c.yaml") == cfg


def test_config_loads_and_rejects_without_importing_jax():
    """Config errors come before heavy imports: zoo.config imports neither jax nor Pallas."""
    code = ("import sys\nfrom zoo import config\n"
            "config.load('configs/experiments/tiny.yaml')\n"
            "try:\n    config.load('configs/experiments/tiny.yaml', ['train.steps=0'])\n"
            "except config.ConfigError as e:\n    print('rejected:', e)\n"
            "print(sorted(m for m in sys.modules if m == 'jax' or m.startswith('jax.')))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rejected: " in done.stdout and "train.steps" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_run_readers_do_not_import_the_training_loop():
    """Inference, export and the drafter factory read runs through zoo.runs, not the loop."""
    code = ("import sys\nimport zoo.runs, zoo.export.convert, zoo.train.heads, "
            "launch.drafter_factory\nprint('zoo.train.loop' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_configs_found_when_installed_outside_the_checkout(tmp_path):
    """The wheel carries configs/ as zoo/configs: unpacked away from the checkout (and run from
    another folder), an experiment loads by name, and a user's experiment names a shipped model."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "wheel"), str(REPO)], check=True, timeout=300)
    subprocess.run([sys.executable, "-m", "zipfile", "-e", *map(str, (tmp_path / "wheel").glob(
        "*.whl")), str(tmp_path / "site")], check=True)
    (tmp_path / "mine.yaml").write_text("name: mine\nmodel: code_small\n")
    script = ("from zoo import config\n"
              "assert config.__file__.startswith(%r), config.__file__\n"
              "print(config.load('code_small').model.d_model, config.load('mine.yaml').model.d_model)"
              % str(tmp_path / "site"))
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, env={"PYTHONPATH": str(tmp_path / "site"), "PATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    d_model = config_lib.load(REPO / "configs/experiments/code_small.yaml").model.d_model
    assert done.stdout.split() == [str(d_model)] * 2


def test_unknown_experiment_and_model_names_are_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*no_such_run.yaml"):
        config_lib.load("no_such_run")
    (tmp_path / "mine.yaml").write_text("name: mine\nmodel: no_such_model\n")
    with pytest.raises(ConfigError, match="model 'no_such_model' is neither"):
        config_lib.load(tmp_path / "mine.yaml")

"""Configuration: frozen dataclasses, YAML files and `section.key=value` overrides.

Every run is described by one `ExperimentConfig` (model, data, train, decode). It is loaded from
`configs/experiments/<name>.yaml` (or a bare `<name>`), whose `model:` entry may name a file in
`configs/models/`, then patched by command-line overrides such as `model.d_model=256`. Unknown
keys, wrong types and values that break a rule raise `ConfigError` naming the key and the rule,
before any work starts.
"""

from __future__ import annotations

import dataclasses
import pathlib
import typing
from typing import Any, Mapping, Sequence

import yaml

from zoo_kernels.names import BACKENDS as KERNEL_BACKENDS

DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
    """A config key is unknown, has the wrong type, or breaks a rule."""


def _require(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"invalid config value {key}={value!r}: {rule}")


def _positive(obj, section: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _require(value > 0, f"{section}.{name}", "must be > 0", value)


def _non_negative(obj, section: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _require(value >= 0, f"{section}.{name}", "must be >= 0", value)


MODEL_FAMILIES = ("transformer", "mamba2", "hybrid")
# model.rope_scaling: transformers' rope_type of the same maths (zoo/layers/rope.py).
ROPE_SCALINGS = ("none", "linear", "dynamic", "llama3")
LAYER_KINDS = {"a": "attention + SwiGLU MLP", "m": "Mamba2 mixer"}
# model.remat: "none" (keep every activation), "full" (recompute each block in the backward
# pass) or one of the argument-free `jax.checkpoint_policies` (named here so this module stays
# jax-free; tests/models/test_scan_layers.py checks each exists).
REMAT_POLICIES = ("checkpoint_dots", "checkpoint_dots_with_no_batch_dims", "dots_saveable",
                  "dots_with_no_batch_dims_saveable", "everything_saveable", "nothing_saveable")
REMAT = ("none", "full", *REMAT_POLICIES)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The backbone shared by every generator family.

    transformer: Llama-style attention blocks. mamba2: Mamba2 mixer blocks. hybrid: a
    `layer_pattern` of both, one letter per layer ("a" attention, "m" Mamba2), e.g. "mmamma".
    The attention fields (n_heads, n_kv_heads, head_dim, mlp_dim, rope_*, max_positions,
    qkv_bias, qk_norm) shape attention blocks, the ssm_* fields Mamba2 blocks.
    """

    family: str = "transformer"
    vocab_size: int = 260
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 4
    head_dim: int = 0  # 0: d_model // n_heads (which must then divide evenly)
    mlp_dim: int = 704
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: str = "none"  # none | linear | dynamic | llama3 (transformers' rope_type)
    rope_factor: float = 1.0  # linear / dynamic / llama3: how far RoPE is stretched (>= 1)
    rope_low_freq_factor: float = 1.0  # llama3: wavelengths > original_max_len / this: / factor
    rope_high_freq_factor: float = 4.0  # llama3: wavelengths < original_max_len / this: kept
    rope_original_max_len: int = 8192  # llama3: the pretraining context length
    max_positions: int = 8192  # context length (max_position_embeddings); dynamic scales past it
    qkv_bias: bool = False  # biases on the q, k, v projections (Qwen2 / Qwen2.5)
    qk_norm: bool = False  # RMSNorm over each head's q and k before RoPE (Qwen3)
    tie_embeddings: bool = False
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    init_std: float = 0.02
    layer_pattern: str = ""  # hybrid: one of LAYER_KINDS per layer; "" = the family's only kind
    ssm_heads: int = 8
    ssm_head_dim: int = 64  # ssm_heads * ssm_head_dim must equal ssm_expand * d_model
    ssm_expand: int = 2
    ssm_state_dim: int = 64
    ssm_groups: int = 1  # B and C are shared by ssm_heads / ssm_groups heads
    ssm_conv_width: int = 4
    ssm_chunk_size: int = 64
    scan_layers: bool = False  # blocks under nn.scan, params stacked [repeats, ...] under "layers"
    remat: str = "none"  # none | full | a policy of REMAT_POLICIES: what backward recomputes

    def __post_init__(self):
        _require(self.family in MODEL_FAMILIES, "model.family", f"must be one of "
                 f"{list(MODEL_FAMILIES)}", self.family)
        _positive(self, "model", "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads",
                  "mlp_dim", "norm_eps", "rope_theta", "init_std", "ssm_heads", "ssm_head_dim",
                  "ssm_expand", "ssm_state_dim", "ssm_groups", "ssm_chunk_size")
        _non_negative(self, "model", "head_dim")
        if self.head_dim == 0:
            _require(self.d_model % self.n_heads == 0, "model.n_heads",
                     f"must divide model.d_model={self.d_model} (or set model.head_dim)",
                     self.n_heads)
        _require(self.n_heads % self.n_kv_heads == 0, "model.n_kv_heads",
                 f"must divide model.n_heads={self.n_heads}", self.n_kv_heads)
        for name in ("dtype", "param_dtype"):
            _require(getattr(self, name) in DTYPES, f"model.{name}", f"must be one of {list(DTYPES)}",
                     getattr(self, name))
        _require(self.remat in REMAT, "model.remat", f"must be one of {list(REMAT)}", self.remat)
        self._check_rope()
        self._check_layers()

    def _check_rope(self):
        _require(self.rope_scaling in ROPE_SCALINGS, "model.rope_scaling",
                 f"must be one of {list(ROPE_SCALINGS)}", self.rope_scaling)
        _positive(self, "model", "rope_original_max_len", "max_positions")
        _require(self.rope_scaling == "none" or self.rope_factor >= 1, "model.rope_factor",
                 f"must be >= 1 with model.rope_scaling={self.rope_scaling!r}", self.rope_factor)
        if self.rope_scaling == "llama3":
            _require(0 < self.rope_low_freq_factor < self.rope_high_freq_factor,
                     "model.rope_low_freq_factor", f"must be in (0, model.rope_high_freq_factor="
                     f"{self.rope_high_freq_factor}) for llama3 RoPE", self.rope_low_freq_factor)
        _require(self.rope_scaling != "dynamic" or self.resolved_head_dim > 2, "model.head_dim",
                 "must be > 2 for dynamic RoPE (its base grows as ^(head_dim / (head_dim - 2)))",
                 self.resolved_head_dim)

    def _check_layers(self):
        pattern = self.layer_pattern
        unknown = sorted(set(pattern) - set(LAYER_KINDS))
        _require(not unknown, "model.layer_pattern", f"names unknown layer kind {unknown[:1]}; "
                 f"kinds: {LAYER_KINDS}", pattern)
        _require(pattern == "" or len(pattern) == self.n_layers, "model.layer_pattern",
                 f"must have one letter per layer (model.n_layers={self.n_layers})", pattern)
        wanted = {"transformer": {"a"}, "mamba2": {"m"}, "hybrid": {"a", "m"}}[self.family]
        _require(pattern == "" and self.family != "hybrid" or set(pattern) == wanted,
                 "model.layer_pattern", f"a {self.family} model's layers are "
                 + " and ".join(repr(k) for k in sorted(wanted)), pattern)
        if "m" in self.layers:
            _require(self.ssm_heads * self.ssm_head_dim == self.ssm_expand * self.d_model,
                     "model.ssm_heads", f"x model.ssm_head_dim={self.ssm_head_dim} must equal the "
                     f"inner width model.ssm_expand * model.d_model = "
                     f"{self.ssm_expand * self.d_model}", self.ssm_heads)
            _require(self.ssm_heads % self.ssm_groups == 0, "model.ssm_groups",
                     f"must divide model.ssm_heads={self.ssm_heads}", self.ssm_groups)
            _require(self.ssm_conv_width >= 2, "model.ssm_conv_width", "must be >= 2",
                     self.ssm_conv_width)
        _require(not self.scan_layers or len(self.scan_period) < self.n_layers
                 or self.n_layers == 1, "model.scan_layers",
                 f"needs a model.layer_pattern that repeats a shorter period (one compiled "
                 f"period, scanned); {self.layers!r} does not: set model.scan_layers=false or "
                 f"make model.layer_pattern periodic", self.scan_layers)

    @property
    def layers(self) -> str:
        """The layer kinds, one letter per layer."""
        default = {"transformer": "a", "mamba2": "m"}.get(self.family, "")
        return self.layer_pattern or default * self.n_layers

    @property
    def scan_period(self) -> str:
        """The shortest run of layer kinds that `layers` repeats ("mma" for "mmamma"); with
        `scan_layers` one period is the body nn.scan repeats n_layers / len(period) times."""
        layers = self.layers
        return next(layers[:p] for p in range(1, len(layers) + 1)
                    if len(layers) % p == 0 and layers[:p] * (len(layers) // p) == layers)

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.n_heads


TEXT_CORPORA = ("stdlib", "stdlib_small")  # zoo/data/code_corpus.py
# zoo/data/video.py: clips of 16 frames of 16x16 pixels, a token per 2x2 patch (8x8 per frame).
VIDEO_CORPORA = ("sprites", "sprites_small")
VIDEO_FRAMES, VIDEO_ROW_TOKENS, VIDEO_FRAME_TOKENS = 16, 8, 64


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which corpus, how it is cut into sequences and how it is shuffled.

    Text corpora are packed into one stream cut into windows; a video corpus gives one window
    per clip, so `seq_len` plus the objective's shift must fit in a clip.
    """

    corpus: str = "stdlib"  # stdlib | stdlib_small (code) | sprites | sprites_small (video)
    data_dir: str = "~/tensorflow_datasets"
    tokenizer: str = ""  # "": zoo's bytes; else a tokenizer.json, or the folder holding it and
    #                      its tokenizer_config.json (which names bos/eos/pad/mask), run by the
    #                      `tokenizers` library, checked and copied into the run when training
    #                      starts (text corpora only; its ids must fit model.vocab_size)
    seq_len: int = 256  # tokens per training sequence (model input)
    batch_size: int = 16
    shuffle: bool = True
    seed: int = 0

    def __post_init__(self):
        corpora = [*TEXT_CORPORA, *VIDEO_CORPORA]
        _require(self.corpus in corpora, "data.corpus", f"must be one of {corpora}", self.corpus)
        _require(not (self.tokenizer and self.is_video), "data.tokenizer",
                 f"a video corpus ({self.corpus}) has its own patch tokens; leave it empty",
                 self.tokenizer)
        _positive(self, "data", "seq_len", "batch_size")

    @property
    def is_video(self) -> bool:
        return self.corpus in VIDEO_CORPORA


OBJECTIVES = ("lm", "next_block", "masked_diffusion")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """What a run trains, recorded with the run so that decoding follows it.

    lm: next-token prediction, causal attention. next_block: next-block prediction (NBP) with
    blocks of `block_size` tokens, bidirectional inside a block and causal across blocks;
    position k of block b is trained on token k of block b + 1 (inputs shift by one block).
    masked_diffusion: the MDLM / LLaDA masked-diffusion loss (zoo/train/diffusion.py), over one
    bidirectional window (block_size 0) or block diffusion (BD3-LM) with blocks of block_size.
    """

    kind: str = "lm"  # lm | next_block | masked_diffusion
    block_size: int = 1  # next_block: tokens per block (a text span; a video row or frame);
    #                      masked_diffusion: 0 = bidirectional window, >= 2 = block diffusion
    t_min: float = 1e-3  # masked_diffusion: the mask rate t is drawn from U(t_min, 1]

    def __post_init__(self):
        _require(self.kind in OBJECTIVES, "objective.kind", f"must be one of {list(OBJECTIVES)}",
                 self.kind)
        if self.kind == "masked_diffusion":
            _require(self.block_size == 0 or self.block_size >= 2, "objective.block_size",
                     "must be 0 (one bidirectional window) or >= 2 (block diffusion) for "
                     "masked_diffusion", self.block_size)
            _require(0 < self.t_min < 1, "objective.t_min", "must be in (0, 1)", self.t_min)
        else:
            _positive(self, "objective", "block_size")
        _require(self.kind != "lm" or self.block_size == 1, "objective.block_size",
                 f"must be 1 unless objective.kind is next_block or masked_diffusion (got kind "
                 f"{self.kind!r})", self.block_size)

    @property
    def shift(self) -> int:
        """How far ahead of its input each target is: 1 token, or one block (a diffusion model
        reads only the inputs: its targets are the inputs themselves)."""
        return self.block_size if self.kind == "next_block" else 1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule, evaluation and checkpointing."""

    steps: int = 1000
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    end_lr_ratio: float = 0.1  # cosine decays to learning_rate * end_lr_ratio
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 8
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    log_every: int = 10
    seed: int = 0
    run_dir: str = "runs/default"

    def __post_init__(self):
        _positive(self, "train", "steps", "learning_rate", "eval_every", "eval_batches",
                  "checkpoint_every", "keep_checkpoints", "log_every", "grad_clip")
        _non_negative(self, "train", "warmup_steps", "weight_decay")
        _require(self.warmup_steps < self.steps, "train.warmup_steps",
                 f"must be < train.steps={self.steps}", self.warmup_steps)
        _require(0 <= self.end_lr_ratio <= 1, "train.end_lr_ratio", "must be in [0, 1]",
                 self.end_lr_ratio)
        for name in ("b1", "b2"):
            _require(0 <= getattr(self, name) < 1, f"train.{name}", "must be in [0, 1)",
                     getattr(self, name))


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """How tokens are generated: length, sampling, cache size."""

    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    max_len: int = 1024  # KV-cache length: prompt + generated tokens must fit
    seed: int = 0
    kernel_backend: str = "auto"  # Pallas/XLA backend of tree attention and the SSM tree scan
    steps: int = 0  # masked diffusion: sampling steps over the answer (0: one token per step)
    threshold: float = 0.0  # masked diffusion: unmask every confidence above it (0: off)
    block_size: int = 0  # masked diffusion: semi-AR blocks with a KV cache (0: whole answer)

    def __post_init__(self):
        _positive(self, "decode", "max_new_tokens", "max_len")
        _non_negative(self, "decode", "temperature", "top_k", "steps", "block_size")
        _require(0 <= self.threshold <= 1, "decode.threshold", "must be in (0, 1] (or 0: off)",
                 self.threshold)
        _require(0 < self.top_p <= 1, "decode.top_p", "must be in (0, 1]", self.top_p)
        _require(self.max_new_tokens < self.max_len, "decode.max_new_tokens",
                 f"must be < decode.max_len={self.max_len} (room for the prompt)",
                 self.max_new_tokens)
        _require(self.kernel_backend in KERNEL_BACKENDS, "decode.kernel_backend",
                 f"must be one of {KERNEL_BACKENDS}", self.kernel_backend)


HEAD_KINDS = ("none", "medusa", "hydra", "falcon")


@dataclasses.dataclass(frozen=True)
class HeadsConfig:
    """Draft heads (Medusa, Hydra) or a semi-autoregressive drafter (Falcon) trained on a frozen
    target run; kind "none" trains the LM.

    The target run is checked when training starts, not here, so an experiment loads (and can be
    inspected or overridden) before its target has been trained.
    """

    kind: str = "none"  # none | medusa | hydra | falcon
    target_run: str = ""  # run directory of the frozen target (written by zoo-train)
    num_heads: int = 4  # the deepest draft depth: head k predicts the token k+1 places ahead
    num_layers: int = 1  # medusa/hydra: residual `h + SiLU(W h)` blocks; falcon: decoder layers
    shared_lm_head: bool = True  # reuse the target's frozen LM head; else each head owns a copy
    block_size: int = 2  # falcon: tokens drafted per forward (bidirectional inside the block)

    def __post_init__(self):
        _require(self.kind in HEAD_KINDS, "heads.kind", f"must be one of {list(HEAD_KINDS)}",
                 self.kind)
        _positive(self, "heads", "num_heads", "num_layers", "block_size")
        if self.kind == "falcon":
            _require(self.block_size <= self.num_heads, "heads.block_size",
                     f"must be <= heads.num_heads={self.num_heads} (the deepest draft depth)",
                     self.block_size)
        if self.kind != "none":
            _require(bool(self.target_run), "heads.target_run",
                     f"must name the target's run directory when heads.kind={self.kind!r}",
                     self.target_run)


MESH_AXES = ("data", "fsdp", "tensor")
# Logical axis names carried by parameters and activations -> mesh axes ("+" joins several).
DEFAULT_RULES = ("batch=data+fsdp embed=fsdp heads=tensor kv_heads=tensor mlp=tensor "
                 "ssm_heads=tensor ssm_proj=tensor ssm_inner=tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """How devices form a mesh and how logical axis names map onto it (see zoo/parallel.py).

    `data`, `fsdp`, `tensor` are sizes within a slice (over its fast interconnect) and multiply
    to the devices of a slice; one of them may be -1 (the remaining devices). `dcn_*` are sizes
    across the slices of a multi-slice pod (over the data-center network; a mesh axis spans
    size x dcn_size devices). Logical names absent from `rules` are replicated.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    dcn_data: int = 1
    dcn_fsdp: int = 1
    dcn_tensor: int = 1
    rules: str = DEFAULT_RULES

    def __post_init__(self):
        sizes = [getattr(self, a) for a in MESH_AXES]
        for axis, size in zip(MESH_AXES, sizes):
            _require(size == -1 or size > 0, f"mesh.{axis}", "must be > 0 or -1 (the rest)", size)
            _require(getattr(self, f"dcn_{axis}") > 0, f"mesh.dcn_{axis}", "must be > 0",
                     getattr(self, f"dcn_{axis}"))
        _require(sizes.count(-1) <= 1, "mesh.data", "only one mesh size may be -1", sizes)
        for rule in self.rules.split():
            name, _, axes = rule.partition("=")
            _require(bool(name) and all(a in MESH_AXES for a in axes.split("+") if a),
                     "mesh.rules", f"{rule!r} must look like logical=axis[+axis] with axes "
                     f"from {list(MESH_AXES)}", self.rules)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str = "default"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    decode: DecodeConfig = DecodeConfig()
    heads: HeadsConfig = HeadsConfig()
    mesh: MeshConfig = MeshConfig()
    objective: ObjectiveConfig = ObjectiveConfig()

    def __post_init__(self):
        """Rules that span sections."""
        obj, data = self.objective, self.data
        if obj.kind != "lm":
            _require(self.model.family == "transformer", "objective.kind", f"{obj.kind} needs "
                     "bidirectional attention, which Mamba2 layers cannot give; use "
                     f"model.family=transformer (got {self.model.family!r})", obj.kind)
            _require(self.heads.kind == "none", "objective.kind",
                     f"{obj.kind} trains the model itself; draft heads need heads.kind=none",
                     obj.kind)
            _require(obj.block_size == 0 or data.seq_len % obj.block_size == 0,
                     "objective.block_size",
                     f"must divide data.seq_len={data.seq_len} (blocks start at position 0)",
                     obj.block_size)
        if data.is_video:
            _require(obj.kind != "masked_diffusion", "objective.kind", "masked_diffusion runs "
                     "on the text corpora", obj.kind)
            _require(VIDEO_FRAME_TOKENS % obj.block_size == 0
                     and obj.block_size % VIDEO_ROW_TOKENS == 0 or obj.block_size == 1,
                     "objective.block_size", f"a video block is whole rows of a frame: a "
                     f"multiple of {VIDEO_ROW_TOKENS} tokens dividing the frame's "
                     f"{VIDEO_FRAME_TOKENS} (or 1 for next-token)", obj.block_size)
            clip = VIDEO_FRAMES * VIDEO_FRAME_TOKENS
            _require(data.seq_len + obj.shift <= clip, "data.seq_len",
                     f"plus the objective's shift ({obj.shift}) must fit one clip of {clip} "
                     f"tokens", data.seq_len)


def first_difference(a, b) -> str | None:
    """The name of the first field where two configs of one dataclass differ, or None."""
    return next((f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)),
                None)


_SECTIONS = {f.name: f.type for f in dataclasses.fields(ExperimentConfig)}


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check a YAML value against a dataclass field type; ints (and YAML 1.1's unparsed "1e-3")
    are accepted for floats."""
    if typ is float and not isinstance(value, bool):
        try:
            return float(value) if isinstance(value, (int, str)) else value
        except ValueError:
            pass
    if typ is bool and not isinstance(value, bool):
        raise ConfigError(f"invalid config value {key}={value!r}: must be true or false")
    if typ in (int, str, float) and (not isinstance(value, typ) or isinstance(value, bool)):
        raise ConfigError(f"invalid config value {key}={value!r}: must be of type {typ.__name__}")
    return value


def _build(cls, values: Mapping[str, Any], section: str):
    if not isinstance(values, Mapping):
        raise ConfigError(f"config section {section!r} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown config key {section}.{unknown[0]}; "
                          f"valid keys of {section}: {sorted(known)}")
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def from_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate an ExperimentConfig from nested plain data (as read from YAML)."""
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]}; valid top-level keys: "
                          f"{sorted(_SECTIONS)}")
    kwargs = {}
    for name, value in raw.items():
        if name == "name":
            kwargs[name] = _coerce(value, str, "name")
        else:
            cls = typing.get_type_hints(ExperimentConfig)[name]
            kwargs[name] = _build(cls, value or {}, name)
    return ExperimentConfig(**kwargs)


def to_dict(config: ExperimentConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _read_yaml(path: pathlib.Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """`model.d_model=256` -> (['model', 'd_model'], 256); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"override {text!r} has an empty key part")
    return path, yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    raw = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    for text in overrides:
        path, value = parse_override(text)
        if len(path) == 1:
            if path[0] != "name":
                raise ConfigError(f"unknown config key {path[0]} in override {text!r}; "
                                  "use section.key=value")
            raw["name"] = value
        elif len(path) == 2 and path[0] in _SECTIONS and path[0] != "name":
            raw.setdefault(path[0], {})[path[1]] = value
        else:
            raise ConfigError(f"unknown config key {'.'.join(path)} in override {text!r}")
    return raw


def configs_dir() -> pathlib.Path:
    """The `configs/` folder: the checkout's, or the copy installed inside the package
    (`zoo/configs`, see setup.py) when zoo is installed outside a checkout."""
    package = pathlib.Path(__file__).resolve().parent
    for candidate in (package.parent / "configs", package / "configs"):
        if (candidate / "experiments").is_dir():
            return candidate
    raise ConfigError(f"no configs/ folder beside or inside the zoo package ({package}); "
                      "reinstall zoo")


def experiment_path(name: str | pathlib.Path) -> pathlib.Path:
    """A YAML path as given, or a bare experiment name (`code_small`) from configs/experiments/."""
    path = pathlib.Path(name)
    if path.is_file() or path.suffix or len(path.parts) > 1:
        return path
    return configs_dir() / "experiments" / f"{name}.yaml"


def _model_file(experiment: pathlib.Path, name: str) -> pathlib.Path:
    """`model: <name>`: configs/models/<name>.yaml beside the experiment's folder, else the
    catalog shipped with zoo (so a user's experiment outside the checkout can name one)."""
    beside = experiment.resolve().parent.parent / "models" / f"{name}.yaml"
    if beside.is_file():
        return beside
    shipped = configs_dir() / "models" / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(f"{experiment}: model {name!r} is neither {beside} nor {shipped}")


def load(path: str | pathlib.Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load an experiment YAML (or a bare name from configs/experiments/; `model: <name>` from
    configs/models/, or `model: {base: <name>, key: value, ...}` for that model with some keys
    changed, e.g. its dtype for a pod run) and overrides."""
    path = experiment_path(path)
    raw = _read_yaml(path)
    model = raw.get("model")
    model = {"base": model} if isinstance(model, str) else model
    if isinstance(model, dict) and "base" in model:
        changed = {k: v for k, v in model.items() if k != "base"}
        raw["model"] = {**_read_yaml(_model_file(path, str(model["base"]))), **changed}
    return from_dict(apply_overrides(raw, overrides))


def dumps(config: ExperimentConfig) -> str:
    """The config as YAML text (what `save` writes and `load` reads)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def save(config: ExperimentConfig, path: str | pathlib.Path) -> None:
    pathlib.Path(path).write_text(dumps(config))

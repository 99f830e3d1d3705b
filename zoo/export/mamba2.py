"""zoo's Mamba2 LM (family mamba2) <-> transformers' `Mamba2ForCausalLM`.

Both compute the same function (checked against transformers 5.23's PyTorch path):
RMSNorm -> mixer -> residual per layer; the mixer's in_proj splits into [z, xBC, dt] in the same
order, the depthwise causal conv (+ bias) and SiLU run over xBC = [x, B, C]; dt =
softplus(dt + dt_bias) (transformers clamps it to time_step_limit in its chunked scan but not in
its one-token decode step: with the (0, inf) written here both are no-ops); A = -exp(A_log);
head h reads B/C group h // (heads / groups) (zoo's repeat is torch's repeat_interleave); D x is
added; then RMSNorm(y * silu(z)) over each group's channels (gate before norm) and out_proj.
One epsilon serves every norm in both. residual_in_fp32 only matters below float32.

Layout: torch Linear weights are [out, in] (zoo kernels [in, out]); the conv weight is
[C, 1, w], zoo's [w, C], both oldest tap first (torch's conv1d is a correlation over
left-padded input).
"""

import math

from zoo.config import ModelConfig
from zoo.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from zoo.export.hf import CheckpointMismatch, Tensor


def transposed(name, path, shape_hf):
    """A 2-D zoo kernel [in, out] as a torch Linear weight [out, in]."""
    return Tensor(name, shape_hf, path, to_hf=lambda k: k.T, from_hf=lambda w: w.T)


def mixer_tensors(prefix: str, block: str, c: ModelConfig) -> list[Tensor]:
    """One Mamba2 mixer's tensors under `prefix` (e.g. backbone.layers.0.mixer), from the zoo
    block `block`'s "mixer" params."""
    e, h, d_inner = c.d_model, c.ssm_heads, c.ssm_heads * c.ssm_head_dim
    conv_dim = d_inner + 2 * c.ssm_groups * c.ssm_state_dim
    mixer = lambda *names: (block, "mixer", *names)  # noqa: E731
    return [
        transposed(f"{prefix}.in_proj.weight", mixer("in_proj", "kernel"),
                   (d_inner + conv_dim + h, e)),
        Tensor(f"{prefix}.conv1d.weight", (conv_dim, 1, c.ssm_conv_width), mixer("conv_weight"),
               to_hf=lambda w: w.T[:, None, :], from_hf=lambda w: w[:, 0, :].T),
        Tensor(f"{prefix}.conv1d.bias", (conv_dim,), mixer("conv_bias")),
        Tensor(f"{prefix}.dt_bias", (h,), mixer("dt_bias")),
        Tensor(f"{prefix}.A_log", (h,), mixer("A_log")),
        Tensor(f"{prefix}.D", (h,), mixer("D")),
        Tensor(f"{prefix}.norm.weight", (d_inner,), mixer("norm_scale")),
        transposed(f"{prefix}.out_proj.weight", mixer("out_proj", "kernel"), (e, d_inner)),
    ]


def as_float(value) -> float:
    """A config float, also as transformers 5 writes infinities ({"__float__": "Infinity"})."""
    return float(value["__float__"] if isinstance(value, dict) else value)


def check_time_step_limit(limit) -> None:
    """zoo never clamps dt: only a limit that cannot bind (softplus > 0) is representable."""
    low, high = (as_float(v) for v in limit or (0.0, math.inf))
    if low > 0 or high != math.inf:
        raise CheckpointMismatch(f"config.json time_step_limit=({low}, {high}): zoo's Mamba2 "
                                 "does not clamp dt; it needs (0.0, inf)")


def require(hf: dict, key: str, want, why: str) -> None:
    """An absent key takes transformers' default, which is what zoo needs."""
    if hf.get(key, want) != want:
        raise CheckpointMismatch(f"config.json {key}={hf[key]!r}: {why} (needs {want!r})")


def hf_config(config: ModelConfig) -> dict:
    c = config
    return {
        "architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2",
        "vocab_size": c.vocab_size, "hidden_size": c.d_model, "num_hidden_layers": c.n_layers,
        "num_heads": c.ssm_heads, "head_dim": c.ssm_head_dim, "expand": c.ssm_expand,
        "state_size": c.ssm_state_dim, "n_groups": c.ssm_groups, "conv_kernel": c.ssm_conv_width,
        "chunk_size": c.ssm_chunk_size, "use_conv_bias": True, "use_bias": False,
        "hidden_act": "silu", "residual_in_fp32": True, "time_step_limit": [0.0, math.inf],
        "layer_norm_epsilon": c.norm_eps, "tie_word_embeddings": c.tie_embeddings,
        "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID,
    }


def zoo_config(hf: dict) -> ModelConfig:
    require(hf, "use_bias", False, "zoo's Mamba2 projections have no bias")
    require(hf, "use_conv_bias", True, "zoo's Mamba2 convolution always has a bias")
    require(hf, "hidden_act", "silu", "zoo's Mamba2 uses SiLU")
    check_time_step_limit(hf.get("time_step_limit"))
    return ModelConfig(  # absent keys: transformers' defaults
        family="mamba2", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"], n_heads=1, n_kv_heads=1,  # no attention layers
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=hf.get("tie_word_embeddings", False), ssm_heads=hf.get("num_heads", 128),
        ssm_head_dim=hf.get("head_dim", 64), ssm_expand=hf.get("expand", 2),
        ssm_state_dim=hf.get("state_size", 128), ssm_groups=hf.get("n_groups", 8),
        ssm_conv_width=hf.get("conv_kernel", 4), ssm_chunk_size=hf.get("chunk_size", 256))


def tensor_map(config: ModelConfig) -> list[Tensor]:
    c = config
    tensors = [Tensor("backbone.embeddings.weight", (c.vocab_size, c.d_model),
                      ("embed", "embedding"))]
    for i in range(c.n_layers):
        tensors += [Tensor(f"backbone.layers.{i}.norm.weight", (c.d_model,),
                           (f"block_{i}", "norm", "scale"))]
        tensors += mixer_tensors(f"backbone.layers.{i}.mixer", f"block_{i}", c)
    tensors.append(Tensor("backbone.norm_f.weight", (c.d_model,), ("final_norm", "scale")))
    if not c.tie_embeddings:
        tensors.append(transposed("lm_head.weight", ("lm_head", "kernel"),
                                  (c.vocab_size, c.d_model)))
    return tensors

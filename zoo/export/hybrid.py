"""zoo's hybrid LM (family hybrid) <-> transformers' `GraniteMoeHybridForCausalLM`, dense.

Why this architecture. zoo's hybrid is a pattern of "m" blocks (RMSNorm -> Mamba2 -> residual,
no MLP) and "a" blocks (the Llama block: full RoPE, SwiGLU). Among transformers' Mamba2 hybrids
(5.23):
- GraniteMoeHybrid holds it exactly: with num_local_experts=0 each layer is norm -> (Mamba2 or
  attention) -> residual, norm -> gated SiLU MLP -> residual; its Mamba2 layer is transformers'
  Mamba2 mixer (group-wise gated RMSNorm); position_embedding_type="rope" is full rotate-half
  RoPE (it has no partial_rotary_factor); embedding/residual multipliers and logits_scaling of 1 and
  attention_multiplier = 1/sqrt(head_dim) make it plain. An "m" block is written with an MLP
  that adds nothing: output_linear (and input_linear) zero, its norm ones.
- Bamba has the same layer shape and separate gate/up projections, but its config forces
  partial_rotary_factor=0.5: transformers 5 only honours an explicit rope_parameters
  partial_rotary_factor of 1.0, and transformers 4.x hardcodes 0.5 and rope_theta=10000, so a
  Bamba export of zoo's full RoPE would run as another model there, silently.
- NemotronH has MLP-free Mamba2 layers, but its MLP is non-gated (relu2 up/down): no SwiGLU.
- FalconH1 runs attention and Mamba2 in parallel in every layer with muP multiplier vectors;
  Zamba2 shares attention blocks fed with the embeddings concatenated: neither is zoo's stack.

GraniteMoeHybrid fuses the MLP's gate and up projections into one input_linear [2F, E] (gate
rows first), so that tensor's zoo path is the whole "mlp" subtree. Layer kinds are written with
the legacy names "mamba"/"attention" that every version reads (transformers 5 remaps them).

Not importable into zoo: Granite 4.0's released checkpoints (MoE experts, NoPE attention,
multipliers != 1, Mamba layers with a real MLP), any checkpoint whose Mamba layers' MLPs are not
exactly zero / ones, and models without both layer kinds.
"""

import math

import numpy as np

from zoo.config import ModelConfig
from zoo.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from zoo.export.hf import CheckpointMismatch, Tensor
from zoo.export import llama
from zoo.export.llama import MAX_POSITIONS
from zoo.export.mamba2 import check_time_step_limit, mixer_tensors, require, transposed

KINDS = {"m": "mamba", "a": "attention"}
FROM_HF_KIND = {"mamba": "m", "linear_attention": "m", "attention": "a", "full_attention": "a"}
PLAIN_MULTIPLIERS = ("embedding_multiplier", "residual_multiplier", "logits_scaling")


def hf_config(config: ModelConfig) -> dict:
    c = config
    llama.require_plain_attention(c, "GraniteMoeHybrid")
    d = c.resolved_head_dim
    return {
        "architectures": ["GraniteMoeHybridForCausalLM"], "model_type": "granitemoehybrid",
        "vocab_size": c.vocab_size, "hidden_size": c.d_model, "num_hidden_layers": c.n_layers,
        "layer_types": [KINDS[kind] for kind in c.layers],
        "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads, "head_dim": d,
        "attention_multiplier": 1 / math.sqrt(d), "attention_bias": False,
        "position_embedding_type": "rope",
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "rope_theta": c.rope_theta, "max_position_embeddings": MAX_POSITIONS,
        "num_local_experts": 0, "shared_intermediate_size": c.mlp_dim,
        "intermediate_size": c.mlp_dim, "hidden_act": "silu",
        **{key: 1.0 for key in PLAIN_MULTIPLIERS},
        "mamba_n_heads": c.ssm_heads, "mamba_d_head": c.ssm_head_dim,
        "mamba_expand": c.ssm_expand, "mamba_n_groups": c.ssm_groups,
        "mamba_d_state": c.ssm_state_dim, "mamba_d_conv": c.ssm_conv_width,
        "mamba_chunk_size": c.ssm_chunk_size, "mamba_conv_bias": True, "mamba_proj_bias": False,
        "time_step_limit": [0.0, math.inf], "rms_norm_eps": c.norm_eps,
        "tie_word_embeddings": c.tie_embeddings,
        "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID,
    }


def _rope_theta(hf: dict) -> float:
    if hf.get("position_embedding_type") != "rope":
        raise CheckpointMismatch(f"config.json position_embedding_type="
                                 f"{hf.get('position_embedding_type')!r}: zoo's attention uses "
                                 "RoPE (needs 'rope')")
    return llama.rope_theta(hf)


def zoo_config(hf: dict) -> ModelConfig:
    if hf.get("num_local_experts", 8):
        raise CheckpointMismatch(f"config.json num_local_experts={hf.get('num_local_experts', 8)}"
                                 ": zoo's hybrid has a dense MLP only (needs 0)")
    for key in PLAIN_MULTIPLIERS:
        require(hf, key, 1.0, "zoo scales nothing there")
    require(hf, "hidden_act", "silu", "zoo's MLP is SwiGLU and its Mamba2 uses SiLU")
    require(hf, "attention_bias", False, "zoo's attention has no bias")
    require(hf, "mamba_proj_bias", False, "zoo's Mamba2 projections have no bias")
    require(hf, "mamba_conv_bias", True, "zoo's Mamba2 convolution always has a bias")
    check_time_step_limit(hf.get("time_step_limit"))
    e, heads = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or e // heads
    scale = hf.get("attention_multiplier", 1.0)
    if not math.isclose(scale, 1 / math.sqrt(head_dim), rel_tol=1e-6):
        raise CheckpointMismatch(f"config.json attention_multiplier={scale}: zoo's attention "
                                 f"scales by 1/sqrt(head_dim) = {1 / math.sqrt(head_dim)}")
    kinds = hf.get("layer_types") or hf.get("layers_block_type") or []
    unknown = sorted(set(kinds) - set(FROM_HF_KIND))
    pattern = "".join(FROM_HF_KIND.get(k, "?") for k in kinds)
    if unknown or len(kinds) != hf["num_hidden_layers"] or set(pattern) != {"a", "m"}:
        raise CheckpointMismatch(f"config.json layer_types={kinds!r}: zoo's hybrid needs one "
                                 "'mamba' or 'attention' per layer, with both kinds present")
    ssm_heads = hf.get("mamba_n_heads", 128)
    expand = hf.get("mamba_expand", 2)
    ssm_head_dim = hf.get("mamba_d_head", "auto")
    if ssm_head_dim == "auto":
        ssm_head_dim = expand * e // ssm_heads
    return ModelConfig(
        family="hybrid", vocab_size=hf["vocab_size"], d_model=e,
        n_layers=hf["num_hidden_layers"], layer_pattern=pattern, n_heads=heads,
        n_kv_heads=hf.get("num_key_value_heads") or heads, head_dim=head_dim,
        mlp_dim=hf["shared_intermediate_size"], norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=_rope_theta(hf), tie_embeddings=hf.get("tie_word_embeddings", False),
        ssm_heads=ssm_heads, ssm_head_dim=ssm_head_dim, ssm_expand=expand,
        ssm_state_dim=hf.get("mamba_d_state", 256), ssm_groups=hf.get("mamba_n_groups", 1),
        ssm_conv_width=hf.get("mamba_d_conv", 4), ssm_chunk_size=hf.get("mamba_chunk_size", 256))


def gate_up(name: str, block: str, e: int, f: int) -> Tensor:
    """SwiGLU's gate and up kernels [E, F] fused as input_linear [2F, E], gate rows first."""
    return Tensor(name, (2 * f, e), (block, "mlp"),
                  to_hf=lambda mlp: np.concatenate([mlp["gate"]["kernel"].T,
                                                    mlp["up"]["kernel"].T]),
                  from_hf=lambda w: {"gate": {"kernel": w[:f].T}, "up": {"kernel": w[f:].T}})


def attention_layer(prefix: str, block: str, c: ModelConfig) -> list[Tensor]:
    e, f = c.d_model, c.mlp_dim
    return [
        Tensor(f"{prefix}.input_layernorm.weight", (e,), (block, "attn_norm", "scale")),
        *llama.attention_tensors(f"{prefix}.self_attn", block, c),
        Tensor(f"{prefix}.post_attention_layernorm.weight", (e,), (block, "mlp_norm", "scale")),
        gate_up(f"{prefix}.shared_mlp.input_linear.weight", block, e, f),
        transposed(f"{prefix}.shared_mlp.output_linear.weight", (block, "mlp", "down", "kernel"),
                   (e, f)),
    ]


def mamba_layer(prefix: str, block: str, c: ModelConfig) -> list[Tensor]:
    """The Mamba2 block, plus the MLP GraniteMoeHybrid gives every layer: zero, so it adds
    nothing (and required zero on import, as zoo has no place for it)."""
    e, f = c.d_model, c.mlp_dim
    return [
        Tensor(f"{prefix}.input_layernorm.weight", (e,), (block, "norm", "scale")),
        *mixer_tensors(f"{prefix}.mamba", block, c),
        Tensor(f"{prefix}.post_attention_layernorm.weight", (e,), None, constant=1.0),
        Tensor(f"{prefix}.shared_mlp.input_linear.weight", (2 * f, e), None, constant=0.0),
        Tensor(f"{prefix}.shared_mlp.output_linear.weight", (e, f), None, constant=0.0),
    ]


def tensor_map(config: ModelConfig) -> list[Tensor]:
    c = config
    tensors = [Tensor("model.embed_tokens.weight", (c.vocab_size, c.d_model),
                      ("embed", "embedding"))]
    for i, kind in enumerate(c.layers):
        layer = attention_layer if kind == "a" else mamba_layer
        tensors += layer(f"model.layers.{i}", f"block_{i}", c)
    tensors.append(Tensor("model.norm.weight", (c.d_model,), ("final_norm", "scale")))
    if not c.tie_embeddings:
        tensors.append(transposed("lm_head.weight", ("lm_head", "kernel"),
                                  (c.vocab_size, c.d_model)))
    return tensors

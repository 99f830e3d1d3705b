"""zoo's transformer <-> transformers' `LlamaForCausalLM`.

The two compute the same function: pre-norm RMSNorm blocks, grouped-query attention with RoPE in
the rotate-half layout (so q/k need no permutation), SwiGLU, optional tied embeddings, no biases.
zoo keeps projections as [in, heads, head_dim] kernels; PyTorch's Linear weights are [out, in].
"""

import numpy as np

from zoo.config import ModelConfig
from zoo.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from zoo.export.hf import CheckpointMismatch, Tensor

MAX_POSITIONS = 8192  # RoPE has no length limit; transformers wants a number


def hf_config(config: ModelConfig) -> dict:
    c = config
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": c.vocab_size, "hidden_size": c.d_model, "intermediate_size": c.mlp_dim,
        "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads, "head_dim": c.resolved_head_dim,
        "hidden_act": "silu", "rms_norm_eps": c.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "rope_theta": c.rope_theta, "max_position_embeddings": MAX_POSITIONS,
        "tie_word_embeddings": c.tie_embeddings, "attention_bias": False, "mlp_bias": False,
        "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID,
    }


def rope_theta(hf: dict) -> float:
    """theta of plain RoPE from a config.json; other rope types are refused."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise CheckpointMismatch(f"config.json rope type {kind!r}: zoo implements plain RoPE only")
    return float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))


def zoo_config(hf: dict) -> ModelConfig:
    for key, want in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if hf.get(key, want) != want:
            raise CheckpointMismatch(f"config.json {key}={hf[key]!r}: zoo's transformer needs "
                                     f"{want!r}")
    heads = hf["num_attention_heads"]
    return ModelConfig(
        family="transformer", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"], n_heads=heads,
        n_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        mlp_dim=hf["intermediate_size"], norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=rope_theta(hf), tie_embeddings=hf.get("tie_word_embeddings", False))


def linear(name, path, n_in, out_dims):
    """A zoo kernel [in, *out_dims] as a torch Linear weight [prod(out_dims), in]."""
    n_out = int(np.prod(out_dims))
    return Tensor(name, (n_out, n_in), path, to_hf=lambda k: k.reshape(n_in, n_out).T,
                  from_hf=lambda w: w.T.reshape(n_in, *out_dims))


def linear_in(name, path, in_dims, n_out):
    """A zoo kernel [*in_dims, out] (e.g. the attention output [H, D, E]) as [out, prod(in)]."""
    n_in = int(np.prod(in_dims))
    return Tensor(name, (n_out, n_in), path, to_hf=lambda k: k.reshape(n_in, n_out).T,
                  from_hf=lambda w: w.T.reshape(*in_dims, n_out))


def vector(name, path, n):
    return Tensor(name, (n,), path)


def attention_block(prefix: str, block: str, c: ModelConfig) -> list[Tensor]:
    """One transformer block (attention + SwiGLU, each pre-normed) under `prefix`."""
    e, h, k, d, f = c.d_model, c.n_heads, c.n_kv_heads, c.resolved_head_dim, c.mlp_dim
    return [
        vector(f"{prefix}.input_layernorm.weight", (block, "attn_norm", "scale"), e),
        linear(f"{prefix}.self_attn.q_proj.weight", (block, "attn", "q", "kernel"), e, (h, d)),
        linear(f"{prefix}.self_attn.k_proj.weight", (block, "attn", "k", "kernel"), e, (k, d)),
        linear(f"{prefix}.self_attn.v_proj.weight", (block, "attn", "v", "kernel"), e, (k, d)),
        linear_in(f"{prefix}.self_attn.o_proj.weight", (block, "attn", "o", "kernel"), (h, d), e),
        vector(f"{prefix}.post_attention_layernorm.weight", (block, "mlp_norm", "scale"), e),
        linear(f"{prefix}.mlp.gate_proj.weight", (block, "mlp", "gate", "kernel"), e, (f,)),
        linear(f"{prefix}.mlp.up_proj.weight", (block, "mlp", "up", "kernel"), e, (f,)),
        linear_in(f"{prefix}.mlp.down_proj.weight", (block, "mlp", "down", "kernel"), (f,), e),
    ]


def tensor_map(config: ModelConfig) -> list[Tensor]:
    c = config
    tensors = [Tensor("model.embed_tokens.weight", (c.vocab_size, c.d_model),
                      ("embed", "embedding"))]
    for i in range(c.n_layers):
        tensors += attention_block(f"model.layers.{i}", f"block_{i}", c)
    tensors.append(vector("model.norm.weight", ("final_norm", "scale"), c.d_model))
    if not c.tie_embeddings:
        tensors.append(linear("lm_head.weight", ("lm_head", "kernel"), c.d_model,
                              (c.vocab_size,)))
    return tensors

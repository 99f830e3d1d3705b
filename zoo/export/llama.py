"""zoo's transformer <-> transformers' `LlamaForCausalLM`, `Qwen2ForCausalLM`, `Qwen3ForCausalLM`.

They compute the same function: pre-norm RMSNorm blocks, grouped-query attention with RoPE in
the rotate-half layout (so q/k need no permutation), SwiGLU, optional tied embeddings. The three
differ in attention only: Llama has no biases, Qwen2 has q/k/v biases (zoo's `qkv_bias`), Qwen3
normalises each head's q and k before RoPE (`qk_norm`). Llama's and Qwen3's `attention_bias`
biases o_proj too: zoo has no o bias, so one is written as zeros and required zero on import.
RoPE scaling (`rope_type` linear, dynamic, llama3) is the same in all three (zoo/layers/rope.py).
A config exports as Qwen3 with qk_norm, else Qwen2 with qkv_bias, else Llama.
zoo keeps projections as [in, heads, head_dim] kernels; PyTorch's Linear weights are [out, in].
"""

import numpy as np

from zoo.config import ModelConfig
from zoo.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from zoo.export.hf import CheckpointMismatch, Tensor

MAX_POSITIONS = 8192  # RoPE has no length limit; transformers wants a number
ROPE_TYPES = {"default": "none", "linear": "linear", "dynamic": "dynamic", "llama3": "llama3"}
CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def model_type(config: ModelConfig) -> str:
    """The transformers architecture that holds `config`'s attention."""
    return "qwen3" if config.qk_norm else "qwen2" if config.qkv_bias else "llama"


def rope_scaling(config: ModelConfig) -> dict | None:
    """config.json's rope_scaling (None: plain RoPE), as Llama 3.x's are written."""
    c = config
    if c.rope_scaling == "none":
        return None
    scaling = {"rope_type": c.rope_scaling, "factor": c.rope_factor}
    if c.rope_scaling == "llama3":
        scaling.update(low_freq_factor=c.rope_low_freq_factor,
                       high_freq_factor=c.rope_high_freq_factor,
                       original_max_position_embeddings=c.rope_original_max_len)
    return scaling


def hf_config(config: ModelConfig) -> dict:
    c = config
    kind = model_type(c)
    scaling = rope_scaling(c)
    out = {
        "architectures": [CLASSES[kind]], "model_type": kind,
        "vocab_size": c.vocab_size, "hidden_size": c.d_model, "intermediate_size": c.mlp_dim,
        "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads, "head_dim": c.resolved_head_dim,
        "hidden_act": "silu", "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta,
        "rope_scaling": scaling,  # transformers 4.x reads these two; 5.x rope_parameters
        "rope_parameters": {"rope_type": "default", **(scaling or {}), "rope_theta": c.rope_theta},
        "max_position_embeddings": c.max_positions, "tie_word_embeddings": c.tie_embeddings,
        "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID,
    }
    if kind == "llama":
        out.update(attention_bias=False, mlp_bias=False)
    else:
        out.update(use_sliding_window=False)
    if kind == "qwen3":
        out.update(attention_bias=c.qkv_bias)
    return out


def rope_fields(hf: dict) -> dict:
    """ModelConfig's rope_* and max_positions from a config.json; rope types zoo lacks (yarn,
    longrope, ...) and partial rotation are refused."""
    rope = {**(hf.get("rope_parameters") or {}), **(hf.get("rope_scaling") or {})}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise CheckpointMismatch(f"config.json rope type {kind!r}: zoo implements "
                                 f"{sorted(ROPE_TYPES)}")
    partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise CheckpointMismatch(f"config.json partial_rotary_factor={partial}: zoo rotates "
                                 "whole heads (needs 1.0)")
    max_positions = hf.get("max_position_embeddings", MAX_POSITIONS)
    fields = dict(rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
                  rope_scaling=ROPE_TYPES[kind], max_positions=max_positions)
    if kind != "default":
        fields["rope_factor"] = float(rope["factor"])
    if kind == "llama3":
        fields.update(rope_low_freq_factor=float(rope["low_freq_factor"]),
                      rope_high_freq_factor=float(rope["high_freq_factor"]),
                      rope_original_max_len=rope.get("original_max_position_embeddings",
                                                     max_positions))
    return fields


def rope_theta(hf: dict) -> float:
    """theta of plain RoPE, for architectures whose export maps no scaling (hybrid.py)."""
    fields = rope_fields(hf)
    if fields["rope_scaling"] != "none":
        raise CheckpointMismatch(f"config.json rope type {fields['rope_scaling']!r}: zoo maps "
                                 f"plain RoPE only for {hf.get('model_type')!r}")
    return fields["rope_theta"]


def require_plain_attention(config: ModelConfig, architecture: str) -> None:
    """Refuse exporting attention features `architecture` has no place for (zoo would write a
    different model, silently)."""
    c = config
    for key, value, plain in (("qkv_bias", c.qkv_bias, False), ("qk_norm", c.qk_norm, False),
                              ("rope_scaling", c.rope_scaling, "none")):
        if value != plain:
            raise CheckpointMismatch(f"model.{key}={value!r}: zoo's {architecture} export maps "
                                     f"plain attention only (needs {plain!r})")


def _require(hf: dict, key: str, want) -> None:
    """An absent key takes transformers' default, which is what zoo needs."""
    if hf.get(key, want) != want:
        raise CheckpointMismatch(f"config.json {key}={hf[key]!r}: zoo's transformer needs "
                                 f"{want!r}")


def zoo_config(hf: dict) -> ModelConfig:
    kind = hf.get("model_type", "llama")
    if kind not in CLASSES:
        raise CheckpointMismatch(f"config.json model_type {kind!r}: zoo's transformer maps "
                                 f"{sorted(CLASSES)}")
    _require(hf, "hidden_act", "silu")
    _require(hf, "mlp_bias", False)
    _require(hf, "use_sliding_window", False)
    windowed = [t for t in hf.get("layer_types") or [] if t != "full_attention"]
    if windowed:
        raise CheckpointMismatch(f"config.json layer_types has {windowed[0]!r}: zoo's attention "
                                 "is global (needs 'full_attention' only)")
    heads = hf["num_attention_heads"]
    return ModelConfig(
        family="transformer", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"], n_heads=heads,
        n_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        mlp_dim=hf["intermediate_size"], norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=hf.get("tie_word_embeddings", False), **rope_fields(hf),
        qkv_bias=kind == "qwen2" or hf.get("attention_bias", False), qk_norm=kind == "qwen3")


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


def flat(name, path, dims):
    """A zoo [*dims] param (a q/k/v bias [heads, head_dim]) as a flat [prod(dims)] vector."""
    n = int(np.prod(dims))
    return Tensor(name, (n,), path, to_hf=lambda b: b.reshape(n),
                  from_hf=lambda b: b.reshape(dims))


def attention_tensors(prefix: str, block: str, c: ModelConfig) -> list[Tensor]:
    """One block's self_attn tensors under `prefix` (e.g. model.layers.0.self_attn)."""
    e, h, k, d = c.d_model, c.n_heads, c.n_kv_heads, c.resolved_head_dim
    attn = lambda *names: (block, "attn", *names)  # noqa: E731
    tensors = [linear(f"{prefix}.{x}_proj.weight", attn(x, "kernel"), e, (n, d))
               for x, n in (("q", h), ("k", k), ("v", k))]
    tensors.append(linear_in(f"{prefix}.o_proj.weight", attn("o", "kernel"), (h, d), e))
    if c.qkv_bias:
        tensors += [flat(f"{prefix}.{x}_proj.bias", attn(x, "bias"), (n, d))
                    for x, n in (("q", h), ("k", k), ("v", k))]
        if model_type(c) != "qwen2":  # attention_bias: o_proj's too, which zoo lacks
            tensors.append(Tensor(f"{prefix}.o_proj.bias", (e,), None, constant=0.0))
    if c.qk_norm:
        tensors += [vector(f"{prefix}.{x}_norm.weight", attn(f"{x}_norm", "scale"), d)
                    for x in ("q", "k")]
    return tensors


def attention_block(prefix: str, block: str, c: ModelConfig) -> list[Tensor]:
    """One transformer block (attention + SwiGLU, each pre-normed) under `prefix`."""
    e, f = c.d_model, c.mlp_dim
    return [
        vector(f"{prefix}.input_layernorm.weight", (block, "attn_norm", "scale"), e),
        *attention_tensors(f"{prefix}.self_attn", block, c),
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

"""transformers as the reference for the export tests: its logits and greedy tokens, and the one
check every architecture's export must pass."""

import jax
import numpy as np
import torch
import transformers

from zoo.data.tokenizer import PAD_ID
from zoo.decode import ar
from zoo.export import hf


def zoo_logits(model, params, tokens) -> np.ndarray:
    return np.asarray(jax.jit(model.forward)(params, tokens)[0])


def torch_logits(hf_model, tokens) -> np.ndarray:
    with torch.no_grad():
        return hf_model(torch.tensor(tokens)).logits.float().numpy()


def random_hf_model(hf_class, hf_config, seed: int = 0):
    """A random transformers model in eval mode whose norm scales are not all ones (transformers'
    init), so a norm mapped wrongly shows in the logits."""
    torch.manual_seed(seed)
    model = hf_class(hf_config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.3 * torch.randn_like(p))
    return model


def torch_greedy(hf_model, prompt, n) -> list[int]:
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n,
                                min_new_tokens=n, eos_token_id=None, pad_token_id=PAD_ID)
    return out[0, len(prompt):].tolist()


def assert_transformers_agrees(arch, config, model, params, directory, hf_class, tokens,
                               prompt_length):
    """Export `params` with architecture module `arch`; transformers loads them as `hf_class`
    and gives zoo's logits on `tokens` and zoo's 20 greedy tokens after a prompt."""
    hf.write(directory, arch.hf_config(config), arch.tensor_map(config), params)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    assert type(theirs).__name__ == hf_class
    np.testing.assert_allclose(torch_logits(theirs, tokens), zoo_logits(model, params, tokens),
                               atol=1e-4, rtol=0)
    prompt = tokens[0, :prompt_length].tolist()
    want = ar.generate(model, params, [prompt], max_new_tokens=20, eos_id=-1, pad_id=PAD_ID)
    assert torch_greedy(theirs, prompt, 20) == want.tokens[0].tolist()

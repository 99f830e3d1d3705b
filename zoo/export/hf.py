"""Write and read Hugging Face checkpoint folders (`config.json` + safetensors) through an
architecture's tensor map.

An architecture module (llama.py, mamba2.py, ...) gives `hf_config(config)`, `zoo_config(hf)`
and `tensor_map(config)`: for each Hugging Face tensor, its name, shape, and the zoo parameter it
comes from (a path into the params pytree) with the reshapes/transposes both ways. Export pulls
one array at a time to the host (never the whole state on one device) and writes shards of at
most `max_shard_bytes` with a `model.safetensors.index.json` when there is more than one.
Import checks every expected tensor is present with its shape before building params.

Beside the weights a folder carries its tokenizer (`write_tokenizer`: tokenizer.json +
tokenizer_config.json, zoo's bytes or the run's own) and a generation_config.json, and
config.json names the tokenizer's special ids, so transformers' pipeline decodes as zoo does.
"""

import dataclasses
import json
import pathlib
from typing import Callable

import jax
import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from zoo.data.hf_tokenizer import tokenizer_files
from zoo.data.tokenizer import Tokenizer

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
GENERATION_CONFIG = "generation_config.json"
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


class CheckpointMismatch(ValueError):
    """A Hugging Face checkpoint lacks a tensor, has one of the wrong shape, or has one zoo
    cannot represent."""


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One Hugging Face tensor. `path` is the zoo param it comes from (None: a constant zoo does
    not store, written as `constant` and required to equal it on import), or a subtree of params
    when one tensor fuses several (e.g. gate + up): to_hf then takes, and from_hf returns, that
    dict."""

    name: str
    shape: tuple[int, ...]
    path: tuple[str, ...] | None
    to_hf: Callable[[np.ndarray], np.ndarray] = lambda x: x
    from_hf: Callable[[np.ndarray], np.ndarray] = lambda x: x
    constant: float = 0.0


def get_path(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def set_path(tree: dict, path, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def write(out_dir, hf_config: dict, tensors: list[Tensor], params, dtype: str = "float32",
          max_shard_bytes: int = 2 * 2**30) -> list[str]:
    """Export `params` as `tensors` into `out_dir`; returns the safetensors file names."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np_dtype = DTYPES[dtype]
    shards, current, size = [], {}, 0
    for t in tensors:
        if t.path is None:
            array = np.full(t.shape, t.constant, np.float32)
        else:  # one parameter at a time, gathered from wherever it is sharded
            array = t.to_hf(jax.tree.map(lambda a: np.asarray(jax.device_get(a), np.float32),
                                         get_path(params, t.path)))
        if array.shape != t.shape:
            raise CheckpointMismatch(f"{t.name}: zoo param {'/'.join(t.path)} maps to shape "
                                     f"{array.shape}, expected {t.shape}")
        array = np.ascontiguousarray(array.astype(np_dtype))
        if current and size + array.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[t.name] = array
        size += array.nbytes
    shards.append(current)
    names = ([SINGLE] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map, total = {}, 0
    for name, shard in zip(names, shards):
        save_file(shard, str(out / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
        total += sum(a.nbytes for a in shard.values())
    if len(shards) > 1:
        (out / INDEX).write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (out / "config.json").write_text(json.dumps({**hf_config, "torch_dtype": dtype}, indent=2))
    return names


def with_token_ids(hf_config: dict, tok: Tokenizer) -> dict:
    """`hf_config` naming `tok`'s BOS/EOS/PAD ids (those it declares) instead of its own."""
    ids = {f"{role}_token_id": i for role, i in tok.special_ids.items()
           if f"{role}_token_id" in TOKEN_ID_KEYS}
    return {**{k: v for k, v in hf_config.items() if k not in TOKEN_ID_KEYS}, **ids}


def write_tokenizer(out_dir, tok: Tokenizer, temperature: float = 0.0, top_k: int = 0,
                    top_p: float = 1.0, max_new_tokens: int | None = None) -> list[str]:
    """`tok`'s files and a generation_config.json (its special ids and the given sampling:
    greedy at temperature 0) into `out_dir`; returns the file names."""
    sampling = ({"do_sample": False} if temperature == 0 else
                {"do_sample": True, "temperature": temperature, "top_k": top_k, "top_p": top_p})
    generation = {**with_token_ids({}, tok), **sampling,
                  **({"max_new_tokens": max_new_tokens} if max_new_tokens else {})}
    files = {**tokenizer_files(tok), GENERATION_CONFIG: json.dumps(generation, indent=2)}
    out = pathlib.Path(out_dir)
    for name, text in files.items():
        (out / name).write_text(text)
    return list(files)


def read_config(hf_dir) -> dict:
    path = pathlib.Path(hf_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{hf_dir} is not a Hugging Face checkpoint (no config.json)")
    return json.loads(path.read_text())


def _files(hf_dir: pathlib.Path) -> dict[str, str]:
    """tensor name -> file holding it."""
    if (hf_dir / INDEX).is_file():
        return json.loads((hf_dir / INDEX).read_text())["weight_map"]
    if not (hf_dir / SINGLE).is_file():
        raise FileNotFoundError(f"{hf_dir} has neither {SINGLE} nor {INDEX}")
    with safe_open(str(hf_dir / SINGLE), "np") as f:
        return {k: SINGLE for k in f.keys()}


def _load(handle, name: str) -> np.ndarray:
    """One tensor as float32 on the host. safetensors' numpy reader has no bfloat16 (most
    published checkpoints), so tensors come through its flax reader onto the CPU device."""
    with jax.default_device(jax.devices("cpu")[0]):
        return np.asarray(handle.get_tensor(name), np.float32)


def read(hf_dir, tensors: list[Tensor], param_dtype: str = "float32",
         place: Callable[[tuple[str, ...], np.ndarray], object] = lambda path, array: array):
    """zoo params from the checkpoint's tensors (float32 or bfloat16, one file or sharded with
    an index); every tensor checked before any is loaded. Each parameter is handed to
    `place(path, array)` as soon as it is converted, and the params hold what `place` returns
    (e.g. the array put on its shards), so the host holds one tensor at a time."""
    hf_dir = pathlib.Path(hf_dir)
    files = _files(hf_dir)
    missing = [t for t in tensors if t.name not in files]
    if missing:
        raise CheckpointMismatch(f"{hf_dir}: missing tensor {missing[0].name} (expected shape "
                                 f"{missing[0].shape})" + (f" and {len(missing) - 1} more"
                                                           if len(missing) > 1 else ""))
    unknown = sorted(set(files) - {t.name for t in tensors})
    if unknown:
        raise CheckpointMismatch(f"{hf_dir}: tensor {unknown[0]} has no place in this zoo "
                                 "model" + (f" (and {len(unknown) - 1} more)"
                                            if len(unknown) > 1 else ""))
    handles = {}
    try:
        for t in tensors:  # shapes first: a mismatch fails before anything is converted
            f = handles.setdefault(files[t.name], safe_open(str(hf_dir / files[t.name]), "flax"))
            shape = tuple(f.get_slice(t.name).get_shape())
            if shape != t.shape:
                raise CheckpointMismatch(f"{hf_dir}: tensor {t.name} has shape {shape}, "
                                         f"expected {t.shape}")
        params = {}
        for t in tensors:
            array = _load(handles[files[t.name]], t.name)
            if t.path is None:
                if not np.all(array == t.constant):
                    raise CheckpointMismatch(
                        f"{hf_dir}: tensor {t.name} must be all {t.constant} for a zoo model "
                        "(zoo has no parameter for it)")
                continue
            for keys, leaf in jax.tree_util.tree_leaves_with_path(t.from_hf(array)):
                path = t.path + tuple(k.key for k in keys)  # a fused tensor's leaves below
                set_path(params, path, place(path, leaf.astype(DTYPES[param_dtype])))
    finally:
        handles.clear()
    return params

"""Hugging Face tokenizers behind zoo's `Tokenizer` interface, and zoo's byte tokenizer written
as one, so a run's text can go through either and an exported folder carries its tokenizer.

A folder's tokenizer is the two files transformers saves: tokenizer.json (vocabulary and
pipeline, run by the `tokenizers` library) and tokenizer_config.json (which tokens are
BOS/EOS/PAD/MASK). A run directory holds the same two files when its text is not bytes (it was
imported with them, or trained on `data.tokenizer`); `load_tokenizer` reads either kind of
directory, falling back to bytes where there is no tokenizer.json.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pathlib
import re

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors

from zoo.data.tokenizer import BOS_ID, BYTE_VOCAB, VOCAB_SIZE, ByteTokenizer, Tokenizer

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
ROLES = ("bos", "eos", "pad", "mask")
BYTE_SPECIALS = tuple(f"<|{role}|>" for role in ROLES)  # ids 256.. in ROLES order


class HFTokenizer:
    """A `tokenizers.Tokenizer` from tokenizer.json, with the roles tokenizer_config.json names.

    `encode(text, bos=True)` applies the tokenizer's own template (its post-processor), as
    transformers does to a prompt: BOS for Llama-style tokenizers, nothing for GPT-2-style ones.
    `files` are the texts it was read from, written unchanged into runs and exported folders.
    """

    def __init__(self, tokenizer_json: str, tokenizer_config: str = "{}"):
        self.files = {TOKENIZER_JSON: tokenizer_json, TOKENIZER_CONFIG: tokenizer_config}
        self._tok = tokenizers.Tokenizer.from_str(tokenizer_json)
        config = json.loads(tokenizer_config)
        # transformers' split_special_tokens: "<|eos|>" typed in a prompt is text, not EOS
        self._tok.encode_special_tokens = bool(config.get("split_special_tokens", False))
        self.vocab_size = max(self._tok.get_vocab(with_added_tokens=True).values()) + 1
        self.special_ids = {role: self._role_id(config, role) for role in ROLES
                            if config.get(f"{role}_token") is not None}
        self.bos_id, self.eos_id, self.mask_id = (self.special_ids.get(r)
                                                  for r in ("bos", "eos", "mask"))
        self.pad_id = next(i for i in (self.special_ids.get("pad"), self.eos_id, 0)
                           if i is not None)

    def _role_id(self, config: dict, role: str) -> int:
        token = config[f"{role}_token"]
        token = token["content"] if isinstance(token, dict) else token  # older AddedToken form
        token_id = self._tok.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{TOKENIZER_CONFIG} names {role}_token {token!r}, which "
                             f"{TOKENIZER_JSON} does not have")
        return token_id

    @classmethod
    def from_dir(cls, directory, fallback_ids: dict | None = None) -> HFTokenizer:
        """The tokenizer of a folder. A role tokenizer_config.json leaves out (or a missing
        tokenizer_config.json) is taken from `fallback_ids` ({"bos_token_id": 1, ...}, as in a
        config.json), written into the config so a run keeps it."""
        directory = pathlib.Path(directory)
        tokenizer_json = (directory / TOKENIZER_JSON).read_text()
        config_path = directory / TOKENIZER_CONFIG
        config_text = config_path.read_text() if config_path.is_file() else "{}"
        config, vocab = json.loads(config_text), tokenizers.Tokenizer.from_str(tokenizer_json)
        added = {}
        for role in ROLES:
            token_id = (fallback_ids or {}).get(f"{role}_token_id")
            if (config.get(f"{role}_token") is None and isinstance(token_id, int)
                    and vocab.id_to_token(token_id) is not None):
                added[f"{role}_token"] = vocab.id_to_token(token_id)
        return cls(tokenizer_json,
                   json.dumps({**config, **added}, indent=2) if added else config_text)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """`text`'s ids, with the tokenizer's template when `bos`, and EOS appended when `eos`."""
        ids = self._tok.encode(text, add_special_tokens=bos).ids
        if eos:
            if self.eos_id is None:
                raise ValueError(f"this tokenizer has no eos_token ({TOKENIZER_CONFIG})")
            ids.append(self.eos_id)
        return ids

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), np.uint16 if self.vocab_size <= 2**16 else np.uint32)

    def decode(self, ids) -> str:
        """The text of `ids`, special tokens dropped (as zoo's bytes and transformers' pipeline
        do); ids the tokenizer lacks (a model's vocabulary padded past it) are skipped."""
        return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                                skip_special_tokens=True)

    def byte_lengths(self, size: int) -> np.ndarray:
        """int32[size]: how many bytes of text each id stands for, so that a text's ids sum to
        its UTF-8 length (bits per byte). A byte-level token counts its bytes and a byte-fallback
        <0xNN> one (decoded alone, a piece of a character would read as U+FFFD); any other
        token what it adds to a text: the token decoded twice less once (decoders strip a
        leading space at a text's start only). Special tokens and ids past the vocabulary: 0."""
        decoder = json.loads(self.files[TOKENIZER_JSON]).get("decoder") or {}
        steps = [decoder, *decoder.get("decoders", [])]  # one decoder, or a Sequence of them
        byte_level = any(step.get("type") == "ByteLevel" for step in steps)
        byte_chars = set(_byte_chars()) if byte_level else set()
        added = self._tok.get_added_tokens_decoder()
        vocab = sorted((i, token) for token, i in self._tok.get_vocab(True).items() if i < size)
        others = [(i, token) for i, token in vocab if not (added.get(i) and added[i].special)]
        lengths = np.zeros(size, np.int32)
        text_ids = []
        for i, token in others:
            if i not in added and byte_chars and set(token) <= byte_chars:
                lengths[i] = len(token)
            elif i not in added and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
                lengths[i] = 1
            else:
                text_ids.append(i)
        once = self._tok.decode_batch([[i] for i in text_ids])
        twice = self._tok.decode_batch([[i, i] for i in text_ids])
        for i, one, two in zip(text_ids, once, twice):
            lengths[i] = len(two.encode()) - len(one.encode())
        return lengths


def _byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table, which tokenizers' ByteLevel pre-tokenizer and
    decoder use: printable Latin-1 bytes stand for themselves, the rest map to U+0100 onwards."""
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    moved = iter(range(256, 512))
    return [chr(b) if b in kept else chr(next(moved)) for b in range(BYTE_VOCAB)]


@functools.cache
def byte_tokenizer_files() -> dict[str, str]:
    """zoo's byte tokenizer as tokenizer.json + tokenizer_config.json, built by `tokenizers`:
    a byte-level BPE without merges whose 256 base tokens are ids 0..255, the specials after them
    at zoo's ids, and a template that starts a prompt with BOS as zoo's decoding does."""
    tok = tokenizers.Tokenizer(models.BPE(
        vocab={c: b for b, c in enumerate(_byte_chars())}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(BYTE_SPECIALS))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BYTE_SPECIALS[0]} $A", special_tokens=[(BYTE_SPECIALS[0], BOS_ID)])
    config = {"tokenizer_class": "PreTrainedTokenizerFast",
              **{f"{role}_token": token for role, token in zip(ROLES, BYTE_SPECIALS)},
              "clean_up_tokenization_spaces": False, "split_special_tokens": True}
    return {TOKENIZER_JSON: tok.to_str(pretty=True), TOKENIZER_CONFIG: json.dumps(config, indent=2)}


def is_byte_tokenizer(tok: HFTokenizer) -> bool:
    """Whether `tok` is zoo's byte tokenizer as exported (then a run reads it as bytes)."""
    files = byte_tokenizer_files()
    return (json.loads(tok.files[TOKENIZER_JSON]) == json.loads(files[TOKENIZER_JSON])
            and tok.special_ids == dict(ByteTokenizer.special_ids))


def tokenizer_files(tok: Tokenizer) -> dict[str, str]:
    """The files that carry `tok` into a folder (file name -> text)."""
    return tok.files if isinstance(tok, HFTokenizer) else byte_tokenizer_files()


BYTES = "bytes"  # `tokenizer_identity` of zoo's byte tokenizer


def tokenizer_identity(tok: Tokenizer) -> str:
    """"bytes", or a hash of the tokenizer's files (their JSON, whatever its layout): what a
    packed corpus's cache and a checkpoint record, so a stream or a run made with one tokenizer
    is never read with another."""
    if not isinstance(tok, HFTokenizer):
        return BYTES
    canonical = json.dumps({name: json.loads(text) for name, text in tok.files.items()},
                           sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def token_byte_lengths(tok: Tokenizer, size: int) -> np.ndarray:
    """int32[size]: the bytes of text each of a model's `size` ids stands for under `tok`
    (`HFTokenizer.byte_lengths`; zoo's bytes: 1 for ids below 256, 0 for the specials)."""
    if isinstance(tok, HFTokenizer):
        return tok.byte_lengths(size)
    return (np.arange(size) < BYTE_VOCAB).astype(np.int32)


def tokenizer_at(path) -> Tokenizer:
    """The tokenizer a training config names: a tokenizer.json file, or a folder holding one,
    with the tokenizer_config.json beside it when there is one (it names the special tokens);
    zoo's bytes when it is the byte tokenizer. FileNotFoundError names the missing file."""
    path = pathlib.Path(path).expanduser()
    file = path / TOKENIZER_JSON if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist (a tokenizer.json, or a folder holding "
                                "one, is expected)")
    config = file.parent / TOKENIZER_CONFIG
    tok = HFTokenizer(file.read_text(), config.read_text() if config.is_file() else "{}")
    return ByteTokenizer() if is_byte_tokenizer(tok) else tok


def write_run_tokenizer(run_dir, tok: Tokenizer) -> None:
    """Keep `tok` with a run (`run_dir`: a pathlib or etils path): its files, or none for zoo's
    bytes, removing any earlier tokenizer files there so that `load_tokenizer` reads bytes."""
    for name in (TOKENIZER_JSON, TOKENIZER_CONFIG):
        text = tok.files.get(name) if isinstance(tok, HFTokenizer) else None
        if text is not None:
            (run_dir / name).write_text(text)
        elif (run_dir / name).exists():
            (run_dir / name).unlink()


def load_tokenizer(directory, vocab_size: int, fallback_ids: dict | None = None) -> Tokenizer:
    """The tokenizer of a run directory or Hugging Face folder: its tokenizer.json, or zoo's
    bytes where there is none (or it is the byte tokenizer); refused, before any work, when its
    ids do not fit a model of `vocab_size`."""
    directory = pathlib.Path(directory)
    if (directory / TOKENIZER_JSON).is_file():
        tok = HFTokenizer.from_dir(directory, fallback_ids)
        if tok.vocab_size > vocab_size:
            raise ValueError(f"{directory / TOKENIZER_JSON} has {tok.vocab_size} token ids but "
                             f"the model's vocab_size is {vocab_size}: it is not this model's "
                             "tokenizer")
        return ByteTokenizer() if is_byte_tokenizer(tok) else tok
    if VOCAB_SIZE > vocab_size:
        raise FileNotFoundError(f"{directory} has no {TOKENIZER_JSON}, and zoo's byte tokenizer "
                                f"({VOCAB_SIZE} ids) does not fit the model's vocab_size "
                                f"{vocab_size}")
    return ByteTokenizer()

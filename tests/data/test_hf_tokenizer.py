import json

import numpy as np
import pytest
import tokenizers

from zoo.data import hf_tokenizer as ht
from zoo.data import tokenizer as tk

TEXTS = ["", "def f(x):\n\treturn x + 1  # ok\r\n", "日本語のテキスト", "🙂🚀 emoji",
         "e\u0301 n\u0303", "\x00\x01\x7f\u00a0\u00ad\u00ff", "a<|eos|>b<|bos|>", "  lead"]


def byte_hf_tokenizer() -> ht.HFTokenizer:
    files = ht.byte_tokenizer_files()
    return ht.HFTokenizer(files[ht.TOKENIZER_JSON], files[ht.TOKENIZER_CONFIG])


@pytest.mark.parametrize("text", TEXTS)
def test_byte_tokenizer_json_gives_zoo_byte_ids(text):
    """zoo's bytes written as tokenizer.json and run by `tokenizers` give zoo's ids and text,
    BOS by the template, and a typed "<|eos|>" stays text."""
    ours, theirs = tk.ByteTokenizer(), byte_hf_tokenizer()
    for bos in (False, True):
        assert theirs.encode(text, bos=bos, eos=True) == ours.encode(text, bos=bos, eos=True)
    assert theirs.decode(ours.encode(text, bos=True, eos=True)) == text
    assert theirs.encode_array(text).tolist() == ours.encode_array(text).tolist()


def test_byte_tokenizer_json_declares_zoo_special_ids_and_decodes_cut_chars_alike():
    theirs = byte_hf_tokenizer()
    assert (theirs.vocab_size, theirs.bos_id, theirs.eos_id, theirs.pad_id, theirs.mask_id) == (
        tk.VOCAB_SIZE, tk.BOS_ID, tk.EOS_ID, tk.PAD_ID, tk.MASK_ID)
    assert ht.is_byte_tokenizer(theirs)
    cut = [0xF0, 0x9F, 0x41, 0xE6, 0x97, 0xFF, 0x80, tk.EOS_ID, 0xC3]  # broken UTF-8
    assert theirs.decode(cut) == tk.ByteTokenizer().decode(cut) == "\ufffdA\ufffd\ufffd\ufffd\ufffd"


def _folder(tmp_path, tokenizer_config=None):
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "b": 1, "<e>": 2}, "a"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    (tmp_path / ht.TOKENIZER_JSON).write_text(tok.to_str())
    if tokenizer_config is not None:
        (tmp_path / ht.TOKENIZER_CONFIG).write_text(json.dumps(tokenizer_config))
    return tmp_path


def test_roles_come_from_tokenizer_config_else_config_json_ids(tmp_path):
    tok = ht.load_tokenizer(_folder(tmp_path, {"eos_token": {"content": "<e>"}}), 3)
    assert (tok.vocab_size, tok.eos_id, tok.bos_id, tok.pad_id) == (3, 2, None, 2)
    assert tok.encode("b a", eos=True) == [1, 0, 2] and tok.decode([1, 0]) == "b a"
    (tmp_path / ht.TOKENIZER_CONFIG).unlink()
    tok = ht.load_tokenizer(tmp_path, 3, fallback_ids={"pad_token_id": 1, "eos_token_id": [2]})
    assert tok.special_ids == {"pad": 1} and tok.eos_id is None
    assert json.loads(tok.files[ht.TOKENIZER_CONFIG]) == {"pad_token": "b"}
    with pytest.raises(ValueError, match="no eos_token"):
        tok.encode("a", eos=True)


def test_a_tokenizer_that_does_not_fit_the_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"names bos_token '<s>', which tokenizer\.json does not"):
        ht.load_tokenizer(_folder(tmp_path, {"bos_token": "<s>"}), 3)
    with pytest.raises(ValueError, match=r"tokenizer\.json has 3 token ids but the model's "
                                         r"vocab_size is 2"):
        ht.load_tokenizer(_folder(tmp_path, {}), 2)
    assert isinstance(ht.load_tokenizer(tmp_path / "missing", tk.VOCAB_SIZE), tk.ByteTokenizer)
    with pytest.raises(FileNotFoundError, match=r"has no tokenizer\.json, and zoo's byte "
                                                r"tokenizer \(260 ids\) does not fit the model's "
                                                r"vocab_size 100"):
        ht.load_tokenizer(tmp_path / "missing", 100)


def test_byte_tokenizer_folder_reads_as_bytes(tmp_path):
    for name, text in ht.byte_tokenizer_files().items():
        (tmp_path / name).write_text(text)
    assert isinstance(ht.load_tokenizer(tmp_path, 512), tk.ByteTokenizer)
    assert np.array_equal(byte_hf_tokenizer().encode_array("é"), [0xC3, 0xA9])


def test_byte_lengths_count_what_each_token_adds_to_a_text():
    """Llama-2 style pieces: "▁" is a space (stripped at a text's start only, so a piece counts
    it), <0xNN> is one byte of a character, specials and ids past the vocabulary count 0."""
    vocab = {"▁def": 0, "▁f": 1, "(x):": 2, "<0xC3>": 3, "<0xA9>": 4, "<s>": 5}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, "<s>"))
    tok.add_special_tokens(["<s>"])
    d = tokenizers.decoders
    tok.decoder = d.Sequence([d.Replace("▁", " "), d.ByteFallback(), d.Fuse(), d.Strip(" ", 1, 0)])
    ours = ht.HFTokenizer(tok.to_str())
    assert ours.decode(range(6)) == "def f(x):é"
    assert ht.token_byte_lengths(ours, 8).tolist() == [4, 2, 4, 1, 1, 0, 0, 0]
    assert ht.token_byte_lengths(tk.ByteTokenizer(), 262).tolist() == [1] * 256 + [0] * 6

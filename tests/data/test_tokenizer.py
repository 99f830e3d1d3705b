import numpy as np
import pytest

from zoo.data import tokenizer as tk

TEXTS = [
    "",
    "def f(x):\n    return x + 1\n",
    "日本語のテキスト",  # CJK, 3 bytes per char
    "🙂🚀 emoji",  # 4 bytes per char
    "e\u0301 n\u0303",  # combining accents
]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("bos,eos", [(False, False), (True, False), (False, True), (True, True)])
def test_round_trip(text, bos, eos):
    tok = tk.ByteTokenizer()
    ids = tok.encode(text, bos=bos, eos=eos)
    payload = list(text.encode("utf-8"))
    assert ids == [tk.BOS_ID] * bos + payload + [tk.EOS_ID] * eos
    assert tok.decode(ids) == text
    assert tok.decode(np.array(ids)) == text


@pytest.mark.parametrize("text", TEXTS)
def test_encode_array_matches_encode(text):
    tok = tk.ByteTokenizer()
    arr = tok.encode_array(text)
    assert arr.dtype == np.uint16
    assert arr.tolist() == tok.encode(text)


def test_decode_drops_special_ids_without_stopping():
    tok = tk.ByteTokenizer()
    h, i = ord("h"), ord("i")
    assert tok.decode([tk.BOS_ID, h, tk.PAD_ID, tk.EOS_ID, tk.MASK_ID, i, tk.EOS_ID]) == "hi"


def test_decode_replaces_truncated_multibyte_char():
    tok = tk.ByteTokenizer()
    assert tok.decode(tok.encode("aé")[:-1]) == "a\ufffd"


@pytest.mark.parametrize("bad", [tk.VOCAB_SIZE, -1, 10**6])
def test_decode_rejects_out_of_range_id(bad):
    with pytest.raises(ValueError, match=rf"{bad} at index 2\b"):
        tk.ByteTokenizer().decode([65, 66, bad, 67])


def test_vocab_constants():
    assert tk.BYTE_VOCAB == 256
    specials = [tk.BOS_ID, tk.EOS_ID, tk.PAD_ID, tk.MASK_ID]
    assert specials == [256, 257, 258, 259]
    assert tk.VOCAB_SIZE == 260 == tk.BYTE_VOCAB + len(specials)
    tok = tk.ByteTokenizer()
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id) == (
        tk.VOCAB_SIZE,
        *specials,
    )

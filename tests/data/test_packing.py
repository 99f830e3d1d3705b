import os

import numpy as np
import pytest
import tokenizers

from zoo.data import code_corpus, packing
from zoo.data.hf_tokenizer import HFTokenizer
from zoo.data.packing import (BatchIterator, ClipDataset, PackedDataset, eval_batches,
                              pack_documents)
from zoo.data.tokenizer import BOS_ID, EOS_ID

L = 4


def _dataset(n_windows):
    """Stream 0, 1, 2, ...: window i's first input is i*L, so batches reveal their window ids."""
    return PackedDataset(np.arange(n_windows * L + 1, dtype=np.int32), L)


def _ids(batch):
    return (batch["inputs"][:, 0] // L).tolist()


def _take(it, k):
    return [next(it) for _ in range(k)]


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
        np.testing.assert_array_equal(a["targets"], b["targets"])


def test_pack_documents_layout():
    stream = pack_documents(["ab", "", "é"])
    assert stream.dtype == np.uint16
    assert stream.tolist() == [BOS_ID, 97, 98, EOS_ID, BOS_ID, EOS_ID, BOS_ID, 0xC3, 0xA9, EOS_ID]
    assert pack_documents([]).size == 0


def test_windows_are_shifted_by_one():
    stream = pack_documents(["hello", "world!"])  # 15 tokens -> (15 - 1) // 4 = 3 windows
    ds = PackedDataset(stream, L)
    assert len(ds) == 3
    w = ds.windows(np.arange(3))
    assert w["inputs"].dtype == w["targets"].dtype == np.int32
    assert w["inputs"].shape == w["targets"].shape == (3, L)
    np.testing.assert_array_equal(w["inputs"].ravel(), stream[: 3 * L])
    np.testing.assert_array_equal(w["targets"].ravel(), stream[1 : 3 * L + 1])


def test_next_block_windows_shift_targets_by_a_block():
    """Next-block prediction: token k of block b is the target of position k of block b - 1."""
    stream = np.arange(50, dtype=np.uint16)
    ds = PackedDataset(stream, 8, shift=4)
    assert len(ds) == (50 - 4) // 8
    w = ds.windows(np.array([2, 0]))
    np.testing.assert_array_equal(w["inputs"][0], np.arange(16, 24))
    np.testing.assert_array_equal(w["targets"][0], np.arange(20, 28))
    np.testing.assert_array_equal(w["targets"][1].reshape(2, 4), w["inputs"][1].reshape(2, 4) + 4)


def test_clip_windows_stay_inside_their_clip():
    clips = np.arange(3 * 12).reshape(3, 12)
    ds = ClipDataset(clips, seq_len=8, shift=4)
    w = ds.windows(np.array([1]))
    np.testing.assert_array_equal(w["inputs"][0], clips[1, :8])
    np.testing.assert_array_equal(w["targets"][0], clips[1, 4:12])
    with pytest.raises(ValueError, match="seq_len=9 plus shift=4 must fit a clip of 12"):
        ClipDataset(clips, seq_len=9, shift=4)


def test_too_short_stream_is_rejected():
    PackedDataset(np.zeros(L + 1, np.uint16), L)  # exactly one window
    with pytest.raises(ValueError, match=rf"has {L} tokens.*needs {L + 1}"):
        PackedDataset(np.zeros(L, np.uint16), L)


def test_each_epoch_is_the_seeded_permutation():
    it = BatchIterator(_dataset(12), batch_size=3, seed=7)
    for epoch in range(2):
        ids = sum((_ids(b) for b in _take(it, 4)), [])
        assert ids == np.random.default_rng([7, epoch]).permutation(12).tolist()


def test_no_shuffle_is_window_order_and_drops_epoch_remainder():
    it = BatchIterator(_dataset(7), batch_size=3, seed=0, shuffle=False)
    assert [_ids(b) for b in _take(it, 4)] == [[0, 1, 2], [3, 4, 5], [0, 1, 2], [3, 4, 5]]


def test_seed_determines_batches():
    ds = _dataset(20)
    first = _take(BatchIterator(ds, 4, seed=1), 6)
    _assert_same(first, _take(BatchIterator(ds, 4, seed=1), 6))
    other = _take(BatchIterator(ds, 4, seed=2), 6)
    assert [_ids(b) for b in first] != [_ids(b) for b in other]


def test_restored_state_continues_exactly():
    ds = _dataset(10)  # batch 3 -> 3 batches per epoch; 8 batches cross two epoch boundaries
    uninterrupted = _take(BatchIterator(ds, 3, seed=5), 8)
    it = BatchIterator(ds, 3, seed=5)
    _take(it, 2)
    state = it.get_state()
    assert state == {"position": 2}
    resumed = BatchIterator(ds, 3, seed=5)
    resumed.set_state(state)
    _assert_same(_take(resumed, 6), uninterrupted[2:])


def test_processes_split_the_global_batch():
    ds = _dataset(11)
    whole = _take(BatchIterator(ds, 4, seed=3), 7)
    parts = [
        _take(BatchIterator(ds, 2, seed=3, process_index=p, process_count=2), 7) for p in range(2)
    ]
    for k in range(7):
        a, b = _ids(parts[0][k]), _ids(parts[1][k])
        assert not set(a) & set(b)
        assert a + b == _ids(whole[k])
        np.testing.assert_array_equal(
            np.concatenate([parts[0][k]["targets"], parts[1][k]["targets"]]), whole[k]["targets"]
        )


def test_too_large_batch_is_rejected():
    BatchIterator(_dataset(6), batch_size=3, seed=0, process_count=2)  # exactly fits
    with pytest.raises(ValueError, match=r"global batch of 8 .* 6 windows"):
        BatchIterator(_dataset(6), batch_size=4, seed=0, process_count=2)
    with pytest.raises(ValueError, match="process_index 2"):
        BatchIterator(_dataset(6), batch_size=1, seed=0, process_index=2, process_count=2)


def test_eval_batches_spread_over_the_split():
    ds = _dataset(7)
    assert [_ids(b) for b in eval_batches(ds, 3, max_batches=10)] == [[0, 1, 2], [3, 4, 5]]
    assert [_ids(b) for b in eval_batches(ds, 3, max_batches=1)] == [[0, 2, 4]]
    assert [_ids(b) for b in eval_batches(_dataset(100), 4, max_batches=2)] == [
        [0, 12, 25, 37], [50, 62, 75, 87]]
    with pytest.raises(ValueError, match="batch_size 8 .* 7 windows"):
        eval_batches(ds, 8, max_batches=1)


def test_load_token_stream_packs_the_corpus_and_caches_it(tmp_path, monkeypatch):
    data_dir = str(tmp_path)
    stream = packing.load_token_stream("stdlib_small", data_dir, "validation")
    docs = code_corpus.corpus_documents("stdlib_small", data_dir, "validation")
    np.testing.assert_array_equal(stream, pack_documents(docs))
    assert stream.dtype == np.uint16

    def fail(*args):
        raise AssertionError("the cached stream should have been used")

    monkeypatch.setattr(code_corpus, "corpus_documents", fail)
    again = packing.load_token_stream("stdlib_small", data_dir, "validation")
    np.testing.assert_array_equal(again, stream)
    cache_dir = code_corpus.build_corpus("stdlib_small", data_dir).data_dir
    assert [n for n in os.listdir(cache_dir) if n.endswith(".npy")] == ["tokens_v1_validation.npy"]


def test_ids_past_65535_are_packed_as_uint32():
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "b": 70000}, "a"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    stream = pack_documents(["b a", "a"], HFTokenizer(tok.to_str()))  # no BOS/EOS named
    assert stream.dtype == np.uint32 and stream.tolist() == [70000, 0, 0]

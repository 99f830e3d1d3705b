"""Documents -> one token stream -> fixed-length windows -> deterministic, resumable batches.

Packing documents back to back (each as BOS + its tokens + EOS) wastes no compute on padding;
the separators tell the model where documents end. The tokens are zoo's bytes or the run's
Hugging Face tokenizer's (`data.tokenizer`); a cached stream is named by the tokenizer's hash. The batch order is a pure function of
(seed, batch number), so the iterator's whole state is one integer that fits in a checkpoint,
and a restored run sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import os
import re

import numpy as np

from zoo.data import code_corpus
from zoo.data.hf_tokenizer import BYTES, tokenizer_identity
from zoo.data.tokenizer import ByteTokenizer, Tokenizer

_STREAM_FORMAT = 1  # bump when pack_documents changes, to invalidate cached streams


def pack_documents(docs: list[str], tok: Tokenizer | None = None) -> np.ndarray:
    """One stream: BOS + the document's ids + EOS for each document, in order, by `tok`
    (default zoo's bytes; a BOS or EOS it lacks is left out). uint16, or uint32 when ids pass
    65535."""
    tok = tok or ByteTokenizer()
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    bos, eos = (np.array([] if i is None else [i], dtype) for i in (tok.bos_id, tok.eos_id))
    ids = (tok.encode_array(doc).astype(dtype, copy=False) for doc in docs)
    pieces = [p for doc_ids in ids for p in (bos, doc_ids, eos)]
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype)


class PackedDataset:
    """Non-overlapping windows: window i maps stream[iL : iL+L] to targets
    stream[iL+shift : iL+L+shift] (shift 1: next token; the block size: next block).

    Consecutive windows share `shift` tokens (a window's last targets are the next window's first
    inputs), so no token of the stream is left out of both inputs and targets.
    """

    def __init__(self, stream: np.ndarray, seq_len: int, shift: int = 1):
        stream = np.asarray(stream)
        if stream.ndim != 1:
            raise ValueError(f"token stream must be 1-D, got shape {stream.shape}")
        if seq_len < 1 or shift < 1:
            raise ValueError(f"seq_len ({seq_len}) and shift ({shift}) must be positive")
        if len(stream) < seq_len + shift:
            raise ValueError(
                f"token stream has {len(stream)} tokens; one window of seq_len={seq_len} "
                f"needs {seq_len + shift} (inputs plus the target shifted by {shift})"
            )
        self.stream = stream
        self.seq_len = seq_len
        self.shift = shift

    def __len__(self) -> int:
        return (len(self.stream) - self.shift) // self.seq_len

    def windows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The windows at `indices`, as {"inputs", "targets"}: int32[len(indices), seq_len]."""
        indices = _check_indices(indices, len(self))
        offsets = indices[:, None] * self.seq_len + np.arange(self.seq_len + self.shift)
        return _shifted(self.stream[offsets], self.seq_len, self.shift)


class ClipDataset:
    """One window per fixed-length example (a video clip): inputs clip[:L], targets
    clip[shift:L+shift]. Clips are not packed: a clip's frames never mix with the next clip's."""

    def __init__(self, clips: np.ndarray, seq_len: int, shift: int = 1):
        clips = np.asarray(clips)
        if clips.ndim != 2 or len(clips) == 0:
            raise ValueError(f"clips must be a non-empty [N, tokens] array, got {clips.shape}")
        if seq_len < 1 or shift < 1 or seq_len + shift > clips.shape[1]:
            raise ValueError(f"seq_len={seq_len} plus shift={shift} must fit a clip of "
                             f"{clips.shape[1]} tokens (and both be positive)")
        self.clips, self.seq_len, self.shift = clips, seq_len, shift

    def __len__(self) -> int:
        return len(self.clips)

    def windows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The clips at `indices`, as {"inputs", "targets"}: int32[len(indices), seq_len]."""
        indices = _check_indices(indices, len(self))
        return _shifted(self.clips[indices, : self.seq_len + self.shift], self.seq_len, self.shift)


def _check_indices(indices, n: int) -> np.ndarray:
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise IndexError(f"window indices must lie in [0, {n})")
    return indices


def _shifted(block: np.ndarray, seq_len: int, shift: int) -> dict[str, np.ndarray]:
    block = block.astype(np.int32)
    return {"inputs": np.ascontiguousarray(block[:, :seq_len]),
            "targets": np.ascontiguousarray(block[:, shift:seq_len + shift])}


def load_dataset(corpus: str, data_dir: str, split: str, seq_len: int, shift: int = 1,
                 is_video: bool = False, tok: Tokenizer | None = None):
    """The windows of a corpus split: a PackedDataset of a text corpus's stream (tokenized by
    `tok`, default zoo's bytes), or a ClipDataset of a video corpus's clips."""
    if is_video:
        from zoo.data import video  # TFDS builder of the synthetic clips
        return ClipDataset(video.load_clips(corpus, data_dir, split), seq_len, shift)
    return PackedDataset(load_token_stream(corpus, data_dir, split, tok), seq_len, shift)


class BatchIterator:
    """Infinite shuffled batches of a PackedDataset; this process's share of each global batch.

    Epoch e visits the windows in the order `default_rng([seed, e]).permutation(n)` (identity
    without shuffling), cut into global batches of `batch_size * process_count` windows; the
    remainder of each epoch is dropped, so no batch straddles two epochs or repeats a window.
    Process p takes slice [p*B, (p+1)*B) of every global batch, so processes are disjoint and
    together see exactly what one process with batch P*B would see.
    """

    def __init__(
        self,
        dataset: PackedDataset,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if batch_size < 1 or process_count < 1:
            raise ValueError(
                f"batch_size ({batch_size}) and process_count ({process_count}) must be positive"
            )
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} is outside [0, {process_count})")
        global_batch = batch_size * process_count
        if global_batch > len(dataset):
            raise ValueError(
                f"global batch of {global_batch} windows (batch_size {batch_size} x "
                f"process_count {process_count}) exceeds the {len(dataset)} windows of the dataset"
            )
        self.dataset, self.batch_size, self.seed, self.shuffle = dataset, batch_size, seed, shuffle
        self.process_index, self.process_count = process_index, process_count
        self.batches_per_epoch = len(dataset) // global_batch
        self.position = 0  # batches consumed
        self._order = (-1, None)  # (epoch, window order) of the last epoch used

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order[0] != epoch:
            n = len(self.dataset)
            if self.shuffle:
                self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(n))
            else:
                self._order = (epoch, np.arange(n))
        return self._order[1]

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        epoch, step = divmod(self.position, self.batches_per_epoch)
        start = (step * self.process_count + self.process_index) * self.batch_size
        batch = self.dataset.windows(self._epoch_order(epoch)[start : start + self.batch_size])
        self.position += 1
        return batch

    def get_state(self) -> dict[str, int]:
        """The number of batches consumed: with the constructor arguments, the whole state."""
        return {"position": self.position}

    def set_state(self, state: dict[str, int]) -> None:
        """Continues after `state["position"]` batches; the constructor arguments must match."""
        position = state["position"]
        if int(position) != position or position < 0:
            raise ValueError(f"position must be a non-negative integer, got {position!r}")
        self.position = int(position)


def eval_batches(
    dataset: PackedDataset, batch_size: int, max_batches: int | None = None
) -> list[dict[str, np.ndarray]]:
    """`max_batches` full batches (all when None) of windows spread evenly over the whole split,
    in window order, for validation: the first windows alone would be the first few files of the
    split (in path order), standing in for all of it."""
    available = len(dataset) // batch_size if batch_size > 0 else 0
    if available == 0:
        raise ValueError(f"batch_size {batch_size} leaves no full batch in {len(dataset)} windows")
    count = available if max_batches is None else min(available, max_batches)
    if count < 1:
        raise ValueError(f"max_batches must be at least 1, got {max_batches}")
    total = count * batch_size
    indices = np.arange(total) * len(dataset) // total  # strictly increasing: total <= len
    return [dataset.windows(indices[i * batch_size:(i + 1) * batch_size]) for i in range(count)]


def load_token_stream(config_name: str, data_dir: str, split: str,
                      tok: Tokenizer | None = None) -> np.ndarray:
    """The packed stream of a corpus split by `tok` (default zoo's bytes), cached as .npy beside
    the TFDS files, under a name with the tokenizer's hash unless it is bytes."""
    if not re.fullmatch(r"\w+", split):
        raise ValueError(f"split must be a plain split name such as 'train', got {split!r}")
    builder = code_corpus.build_corpus(config_name, data_dir)
    identity = tokenizer_identity(tok or ByteTokenizer())
    name = f"tokens_v{_STREAM_FORMAT}_{split}" + ("" if identity == BYTES else f"_{identity}")
    path = os.path.join(os.fspath(builder.data_dir), f"{name}.npy")
    if not os.path.exists(path):
        stream = pack_documents(code_corpus.corpus_documents(config_name, data_dir, split), tok)
        tmp = f"{path}.{os.getpid()}.tmp.npy"
        np.save(tmp, stream)
        os.replace(tmp, path)  # atomic: a reader never sees a half-written cache
    return np.load(path)

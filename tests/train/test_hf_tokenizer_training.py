"""Training on text tokenized by a Hugging Face tokenizer (`data.tokenizer`): a BPE trained on
the code corpus packs the corpus, trains a tiny transformer, goes with the run to zoo-generate,
and sets the bytes of bits per byte; what does not fit is refused before any work."""

import json
import math
import pathlib
import re

import numpy as np
import pytest

from zoo import config as config_lib
from zoo.config import ConfigError
from zoo.checkpoint import Checkpointer
from zoo.data import code_corpus
from zoo.data.hf_tokenizer import (TOKENIZER_CONFIG, TOKENIZER_JSON, HFTokenizer, tokenizer_at,
                                   tokenizer_identity)
from zoo.data.packing import PackedDataset, eval_batches, load_token_stream
from zoo.data.tokenizer import PAD_ID, ByteTokenizer
from zoo.decode import ar
from zoo.models import build_model
from zoo.runs import load_run, tokenizer_for_run
from zoo.train.loop import ResumeError, check_resumable, data_identity, loss_pad_id, train

from conftest import REPO, code_bpe, zoo_completion

TINY = REPO / "configs/experiments/tiny.yaml"
PROMPT = "def fibonacci(n):\n    "


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    """(folder, tokenizer): the code BPE as a Hugging Face folder naming <s>, </s>, <pad>."""
    folder = tmp_path_factory.mktemp("bpe")
    code_bpe().save(str(folder / TOKENIZER_JSON))
    (folder / TOKENIZER_CONFIG).write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}))
    return folder, tokenizer_at(folder)


def bpe_config(data_dir, run_dir, folder, *overrides):
    """The tiny experiment on the BPE's 400 ids: 4 steps, one validation batch."""
    return config_lib.load(TINY, [
        f"data.data_dir={data_dir}", f"train.run_dir={run_dir}", f"data.tokenizer={folder}",
        "model.vocab_size=400", "train.steps=4", "train.warmup_steps=1", "train.eval_every=4",
        "train.eval_batches=1", "train.checkpoint_every=4", "train.log_every=4", *overrides])


@pytest.fixture(scope="module")
def bpe_run(bpe, data_dir, tmp_path_factory):
    """(run directory, TrainResult) of the tiny transformer trained on the BPE's stream."""
    run = tmp_path_factory.mktemp("bpe_run") / "run"
    return run, train(bpe_config(data_dir, run, bpe[0]), progress=False)


def test_the_packed_stream_is_each_document_as_bpe_ids(bpe, data_dir):
    _, tok = bpe
    stream = load_token_stream("stdlib_small", data_dir, "validation", tok)
    docs = code_corpus.corpus_documents("stdlib_small", data_dir, "validation")
    pieces = np.split(stream, np.flatnonzero(stream == tok.bos_id)[1:])
    assert stream.dtype == np.uint16 and stream.max() >= 256  # BPE ids, not bytes
    assert all(p[0] == tok.bos_id and p[-1] == tok.eos_id for p in pieces)
    assert [tok.decode(p) for p in pieces] == docs
    cache = pathlib.Path(code_corpus.build_corpus("stdlib_small", data_dir).data_dir)
    assert (cache / f"tokens_v1_validation_{tokenizer_identity(tok)}.npy").exists()


def test_a_bpe_run_keeps_its_tokenizer_and_generates_bpe_text(bpe, bpe_run, capsys):
    folder, tok = bpe
    run, result = bpe_run
    assert sorted(result.losses) == [1, 2, 3, 4]
    for name in (TOKENIZER_JSON, TOKENIZER_CONFIG):
        assert (run / name).read_text() == (folder / name).read_text()
    assert tokenizer_identity(tokenizer_for_run(run)) == tokenizer_identity(tok)
    config, params = load_run(run)
    want = ar.generate(build_model(config.model), params, [tok.encode(PROMPT, bos=True)],
                       max_new_tokens=12, eos_id=tok.eos_id, pad_id=tok.pad_id)
    ids = want.tokens[0, :want.num_tokens[0]]
    assert len(ids) == 12 and ids.max() >= 256  # BPE ids, which bytes would not decode
    assert zoo_completion(capsys, run, PROMPT, 12) == tok.decode(ids)


def test_bits_per_byte_counts_the_bytes_of_the_bpe_tokens(bpe, bpe_run, data_dir):
    """val_bits_per_byte = nats / ln 2 / the UTF-8 bytes of the validation batch's text."""
    _, tok = bpe
    _, result = bpe_run
    val = PackedDataset(load_token_stream("stdlib_small", data_dir, "validation", tok), 64)
    targets = eval_batches(val, 8, 1)[0]["targets"]
    text_bytes = sum(len(tok.decode(row).encode()) for row in targets)
    assert text_bytes != (targets < 256).sum()  # what counting ids as bytes would give
    record = result.evals[-1]
    nats = record["val_loss"] * (targets != tok.special_ids["pad"]).sum()
    assert record["val_bits_per_byte"] == pytest.approx(nats / math.log(2) / text_bytes,
                                                        rel=1e-6)


def test_the_loss_leaves_out_pad_unless_it_is_bos_or_eos(bpe):
    _, tok = bpe
    text = tok.files[TOKENIZER_JSON]
    assert loss_pad_id(ByteTokenizer()) == PAD_ID and loss_pad_id(tok) == 2
    assert loss_pad_id(HFTokenizer(text)) is None  # names no pad
    assert loss_pad_id(HFTokenizer(text, json.dumps({"eos_token": "</s>",
                                                     "pad_token": "</s>"}))) is None


def test_tokenizers_that_cannot_train_are_refused_before_any_work(bpe, bpe_run, data_dir,
                                                                   tmp_path):
    folder, _ = bpe
    missing = tmp_path / "nowhere" / TOKENIZER_JSON
    cases = [
        ([f"data.tokenizer={missing}"], FileNotFoundError,
         f"data.tokenizer='{missing}': {missing} does not exist"),
        (["model.vocab_size=300"], ConfigError,
         f"data.tokenizer='{folder}' has 400 token ids but model.vocab_size is 300"),
        (["data.tokenizer=", "model.vocab_size=200"], ConfigError,
         "zoo's byte tokenizer has 260 token ids but model.vocab_size is 200"),
        (["objective.kind=masked_diffusion", "objective.block_size=0"], ConfigError,
         f"data.tokenizer='{folder}' names none (mask_token"),
        (["heads.kind=medusa", f"heads.target_run={bpe_run[0]}", "data.tokenizer="], ConfigError,
         f"heads.target_run='{bpe_run[0]}' reads text with another tokenizer than "
         "data.tokenizer=''"),
    ]
    for overrides, error, message in cases:
        with pytest.raises(error, match=re.escape(message)):
            train(bpe_config(data_dir, tmp_path / "run", folder, *overrides), progress=False)
        assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=r"data\.tokenizer='x'.*video corpus"):
        bpe_config(data_dir, tmp_path / "run", "x", "data.corpus=sprites_small")


def test_resuming_with_another_tokenizer_is_refused(bpe, bpe_run, data_dir):
    folder, tok = bpe
    run, _ = bpe_run
    identity = tokenizer_identity(tok)
    config_yaml = (run / "config.yaml").read_text()
    with pytest.raises(ResumeError, match=f"the checkpoint's data.tokenizer is '{identity}' but "
                                          "the config says 'bytes'"):
        train(bpe_config(data_dir, run, folder, "data.tokenizer=", "train.steps=6"),
              resume=True, progress=False)
    assert (run / "config.yaml").read_text() == config_yaml
    config = bpe_config(data_dir, run, folder)
    checkpointer = Checkpointer(run / "checkpoints")
    check_resumable(checkpointer.data_state(), config, tokenizer_for_run(run))  # the same one
    checkpointer.close()
    # a checkpoint from before tokenizers were recorded holds bytes
    unrecorded = {k: v for k, v in data_identity(config, tok).items() if k != "tokenizer"}
    with pytest.raises(ResumeError, match=f"data.tokenizer is 'bytes' but the config says "
                                          f"'{identity}'"):
        check_resumable(unrecorded, config, tok)
    check_resumable(unrecorded, config, ByteTokenizer())

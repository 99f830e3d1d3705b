"""Tokenizers both ways: zoo-export writes zoo's byte tokenizer (and generation_config.json) so
transformers' pipeline completes a prompt as zoo-generate does; zoo-import keeps a Hugging Face
folder's own tokenizer (here a BPE trained on the code corpus, with a random Llama) and
zoo-generate then matches transformers' greedy output; tokenizers that do not fit are named."""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers

from launch.export import export_main, import_main
from launch.generate import main as generate_main
from zoo import config as config_lib
from zoo.checkpoint import Checkpointer
from zoo.data.hf_tokenizer import TOKENIZER_CONFIG, TOKENIZER_JSON, HFTokenizer
from zoo.data.tokenizer import ByteTokenizer
from zoo.decode import ar
from zoo.export import hf, llama
from zoo.models import build_model
from zoo.runs import load_run, tokenizer_for_run
from zoo.train.loop import check_resumable, data_tokenizer

from conftest import code_bpe, tiny_model_config, zoo_completion
from hf_reference import random_hf_model

PROMPT = "def fibonacci(n):\n    "


@pytest.fixture(scope="module")
def bpe_llama(tmp_path_factory):
    """(folder, run, model): a random LlamaForCausalLM over the BPE's 400 ids with the BPE's
    tokenizer, saved by transformers and imported by zoo-import."""
    folder, run = tmp_path_factory.mktemp("llama_hf"), tmp_path_factory.mktemp("llama") / "run"
    tok = code_bpe()
    config = transformers.LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, bos_token_id=0,
        eos_token_id=1, pad_token_id=2, tie_word_embeddings=False)
    model = random_hf_model(transformers.LlamaForCausalLM, config)
    model.save_pretrained(folder)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                         pad_token="<pad>").save_pretrained(folder)
    assert import_main(["--hf", str(folder), "--out", str(run)]) == 0
    return folder, run, model


def pipeline_completion(folder, prompt, n) -> str:
    pipe = transformers.pipeline("text-generation", model=str(folder), dtype=torch.float32)
    return pipe(prompt, do_sample=False, max_new_tokens=n, return_full_text=False)[0][
        "generated_text"]


def test_imported_llama_generates_like_transformers_and_exports_its_tokenizer(bpe_llama, capsys,
                                                                            tmp_path):
    folder, run, theirs = bpe_llama
    assert ((run / TOKENIZER_JSON).read_text() == (folder / TOKENIZER_JSON).read_text())
    tok = tokenizer_for_run(run)
    assert isinstance(tok, HFTokenizer) and (tok.vocab_size, tok.bos_id, tok.eos_id) == (400, 0, 1)
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    prompt = hf_tok(PROMPT, return_tensors="pt")
    assert prompt["input_ids"][0].tolist() == tok.encode(PROMPT, bos=True)
    with torch.no_grad():
        want = theirs.generate(**prompt, do_sample=False, max_new_tokens=20)[0, prompt[
            "input_ids"].shape[1]:].tolist()
    assert len(want) == 20  # no EOS among them: all 20 compared
    config, params = load_run(run)
    # Fine-tuning the run reads its own tokenizer, the one its checkpoint records.
    checkpointer = Checkpointer(run / "checkpoints", async_save=False)
    check_resumable(checkpointer.data_state(), config, data_tokenizer(config))
    checkpointer.close()
    got = ar.generate(build_model(config.model), params, [tok.encode(PROMPT, bos=True)],
                      max_new_tokens=20, eos_id=tok.eos_id, pad_id=tok.pad_id)
    assert got.tokens[0].tolist() == want
    text = zoo_completion(capsys, run, PROMPT, 20)
    assert text == hf_tok.decode(want, skip_special_tokens=True) == tok.decode(want)

    assert export_main(["--checkpoint", str(run), "--out", str(tmp_path / "back")]) == 0
    for name in (TOKENIZER_JSON, TOKENIZER_CONFIG):
        assert (tmp_path / "back" / name).read_text() == (folder / name).read_text()
    exported = json.loads((tmp_path / "back" / "config.json").read_text())
    assert [exported[f"{r}_token_id"] for r in ("bos", "eos", "pad")] == [0, 1, 2]
    assert pipeline_completion(tmp_path / "back", PROMPT, 20) == text


def test_exported_byte_run_completes_in_transformers_pipeline_as_in_zoo(capsys, tmp_path):
    """A zoo transformer (imported from a folder without a tokenizer: a bytes run) exports with
    zoo's byte tokenizer, which transformers reads with zoo's ids, and its pipeline's greedy
    completion is zoo-generate's."""
    config = tiny_model_config()
    model = build_model(config)
    params = jax.tree.map(lambda x: x + 0.3 * (x.ndim == 1), model.init(jax.random.key(3)))
    hf.write(tmp_path / "plain", llama.hf_config(config), llama.tensor_map(config), params)
    capsys.readouterr()
    assert import_main(["--hf", str(tmp_path / "plain"), "--out", str(tmp_path / "run")]) == 0
    assert f"text as zoo's bytes: {tmp_path / 'plain'} has no {TOKENIZER_JSON})" in (
        capsys.readouterr().out)
    assert not (tmp_path / "run" / TOKENIZER_JSON).exists()
    assert export_main(["--checkpoint", str(tmp_path / "run"), "--out",
                        str(tmp_path / "hf")]) == 0
    generation = json.loads((tmp_path / "hf" / hf.GENERATION_CONFIG).read_text())
    assert generation == {"bos_token_id": 256, "eos_token_id": 257, "pad_token_id": 258,
                          "do_sample": False, "max_new_tokens": 128}
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in ("héllo wörld 日本 🙂", "x <|eos|> y\n\t"):
        assert theirs(text)["input_ids"] == ByteTokenizer().encode(text, bos=True)
    prompt = "def greet(name):\n    return 'héllo ' + name"
    assert pipeline_completion(tmp_path / "hf", prompt, 16) == zoo_completion(
        capsys, tmp_path / "run", prompt, 16)
    # the exported byte tokenizer comes back as bytes
    assert import_main(["--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    assert isinstance(tokenizer_for_run(tmp_path / "back"), ByteTokenizer)


def test_tokenizers_that_do_not_fit_are_refused_before_import(bpe_llama, capsys, tmp_path):
    folder, run, _ = bpe_llama
    for vocab, tokenizer in ((300, True), (200, False)):
        config = tiny_model_config(vocab_size=vocab)
        zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), jax.eval_shape(
            build_model(config).init, jax.random.key(0)))
        hf.write(tmp_path / str(vocab), llama.hf_config(config), llama.tensor_map(config), zeros)
        if tokenizer:
            shutil.copy(folder / TOKENIZER_JSON, tmp_path / str(vocab))
        out = tmp_path / f"run{vocab}"
        assert import_main(["--hf", str(tmp_path / str(vocab)), "--out", str(out)]) == 2
        assert not out.exists()
    err = capsys.readouterr().err
    assert f"{TOKENIZER_JSON} has 400 token ids but the model's vocab_size is 300" in err
    assert (f"{tmp_path / '200'} has no {TOKENIZER_JSON}, and zoo's byte tokenizer (260 ids) "
            "does not fit the model's vocab_size 200") in err

    # zoo-generate checks the run's tokenizer before it loads params (here there are none)
    config = config_lib.load(run / "config.yaml")
    (tmp_path / "small").mkdir()
    config_lib.save(dataclasses.replace(config, model=dataclasses.replace(
        config.model, vocab_size=300)), tmp_path / "small" / "config.yaml")
    shutil.copy(run / TOKENIZER_JSON, tmp_path / "small")
    assert generate_main(["--checkpoint", str(tmp_path / "small"), "--prompt", "x"]) == 2
    assert "has 400 token ids but the model's vocab_size is 300" in capsys.readouterr().err

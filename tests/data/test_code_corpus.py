import json
import os

import pytest

from zoo.data import code_corpus as cc

CONFIG = "stdlib_small"


def _paths(builder, split):
    source = builder.as_data_source(split)
    return [r["path"].decode() for r in source.__getitems__(list(range(len(source))))]


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    dirs = [str(tmp_path_factory.mktemp(f"corpus{i}")) for i in range(2)]
    for d in dirs:
        cc.build_corpus(CONFIG, d)
    return dirs


def test_build_is_deterministic(data_dirs):
    a, b = data_dirs
    for split in ("train", "validation"):
        docs = cc.corpus_documents(CONFIG, a, split)
        assert docs and docs == cc.corpus_documents(CONFIG, b, split)
        paths = [_paths(cc.build_corpus(CONFIG, d), split) for d in data_dirs]
        assert paths[0] == paths[1]


def test_split_by_file(data_dirs):
    builder = cc.build_corpus(CONFIG, data_dirs[0])
    train, val = _paths(builder, "train"), _paths(builder, "validation")
    assert train and val and not set(train) & set(val)
    assert all(not cc.is_validation(p) for p in train) and all(map(cc.is_validation, val))
    # Records are in sorted order, and together they are the config's first files.
    assert train == sorted(train) and val == sorted(val)
    first = cc.list_source_files(cc.stdlib_root())[: cc.SMALL_NUM_FILES]
    assert sorted(train + val) == first
    for p in train + val:
        assert p.endswith(".py")
        assert not cc.EXCLUDED_DIRS & set(p.split("/")[:-1])


def test_documents_are_the_source_files(data_dirs):
    builder = cc.build_corpus(CONFIG, data_dirs[0])
    paths = _paths(builder, "validation")
    docs = cc.corpus_documents(CONFIG, data_dirs[0], "validation")
    for path, doc in zip(paths, docs, strict=True):
        with open(os.path.join(cc.stdlib_root(), path), encoding="utf-8", newline="") as f:
            assert doc == f.read()


def test_second_build_reuses_files(data_dirs):
    data_path = str(cc.build_corpus(CONFIG, data_dirs[0]).data_path)

    def snapshot():
        return {n: os.stat(os.path.join(data_path, n)).st_mtime_ns for n in os.listdir(data_path)}

    before = snapshot()
    assert any(n.endswith(".array_record-00000-of-00001") for n in before)
    cc.build_corpus(CONFIG, data_dirs[0])
    assert snapshot() == before


def test_other_python_version_is_refused(tmp_path):
    path = cc.build_corpus(CONFIG, str(tmp_path)).data_path / "metadata.json"
    path.write_text(json.dumps({"python_version": "2.7.18"}))
    with pytest.raises(ValueError, match="Python 2.7.18"):
        cc.build_corpus(CONFIG, str(tmp_path))


def test_file_selection_on_a_fake_library(tmp_path, monkeypatch):
    names = [f"m{i}.py" for i in range(100)]
    val_name = next(n for n in names if cc.is_validation(n))
    train_name = next(n for n in names if not cc.is_validation(n))
    files = {
        train_name: "x = 1\n",
        val_name: "y = 'é'\n",
        "pkg/mod.py": "z = 2\n",
        "pkg/latin1.py": b"s = '\xe9'\n",  # not UTF-8: skipped
        "pkg/data.txt": "not python",
        "pkg/tests/test_a.py": "",
        "test/test_b.py": "",
        "idlelib/idle_test/test_c.py": "",
        "site-packages/lib.py": "",
        "__pycache__/mod.py": "",
    }
    root = tmp_path / "lib"
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        mode = "wb" if isinstance(content, bytes) else "w"
        with open(root / name, mode) as f:
            f.write(content)
    listed = sorted([train_name, val_name, "pkg/mod.py", "pkg/latin1.py"])
    assert cc.list_source_files(str(root)) == listed

    monkeypatch.setattr(cc, "stdlib_root", lambda: str(root))
    builder = cc.build_corpus("stdlib", str(tmp_path / "data"))
    utf8 = sorted([train_name, val_name, "pkg/mod.py"])
    assert _paths(builder, "validation") == [p for p in utf8 if cc.is_validation(p)]
    assert _paths(builder, "train") == [p for p in utf8 if not cc.is_validation(p)]
    docs = cc.corpus_documents("stdlib", str(tmp_path / "data"), "validation")
    assert dict(zip(_paths(builder, "validation"), docs))[val_name] == "y = 'é'\n"


def test_opening_prompts_go_through_the_given_tokenizer(data_dirs):
    """Prompts for a run are encoded by its tokenizer (a BPE here), not always as bytes."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from zoo.data.hf_tokenizer import HFTokenizer
    from zoo.data.tokenizer import BOS_ID

    docs = cc.corpus_documents(CONFIG, data_dirs[0], "validation")
    bpe = tokenizers.Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(docs, trainers.BpeTrainer(
        vocab_size=500, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = HFTokenizer(bpe.to_str())
    ours = cc.opening_prompts(CONFIG, data_dirs[0], 2, 40)
    theirs = cc.opening_prompts(CONFIG, data_dirs[0], 2, 40, tok)
    for byte_ids, ids in zip(ours, theirs):
        assert byte_ids[0] == BOS_ID and len(byte_ids) == 41
        assert len(ids) < 40 and tok.decode(ids) == bytes(byte_ids[1:]).decode()

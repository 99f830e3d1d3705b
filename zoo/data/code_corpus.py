"""TFDS builder for a code corpus made of the running interpreter's standard library source.

The standard library is on every machine that runs the zoo, so the corpus needs no download and
no network, yet it is real, varied code. Its content depends on the Python version, which is
recorded in the dataset metadata; `build_corpus` refuses to reuse a corpus built by another
version rather than silently mixing them.

No TensorFlow is needed (verified with tfds 4.9.10 and TF not installed): with
`file_format="array_record"` TFDS serializes examples with its own numpy feature encoders and
protobuf, writes them with `ArrayRecordFileAdapter`, and `as_data_source` reads them back through
`ArrayRecordDataSource` + `deserialize_example_np`. The one TF-dependent path avoided here is
`as_dataset` (tf.data). `DatasetInfo` is built directly instead of via
`dataset_info_from_configs`, which expects metadata files in a TFDS package directory.

Records are written in sorted-path order (`disable_shuffling`, integer keys), so record i of a
split is the i-th file of that split in sorted order, on every machine and every build.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import sysconfig

import tensorflow_datasets as tfds

VALIDATION_PERCENT = 5
SMALL_NUM_FILES = 40
# Directory names whose files are not library code: test suites (and their data files, some of
# them deliberately not UTF-8 or not valid Python), installed third-party packages, bytecode.
EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})


def stdlib_root() -> str:
    """The directory of the running interpreter's pure-Python standard library."""
    return sysconfig.get_paths()["stdlib"]


def list_source_files(root: str) -> list[str]:
    """Sorted POSIX paths, relative to `root`, of the `.py` files outside `EXCLUDED_DIRS`."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in EXCLUDED_DIRS]  # prune, do not descend
        rel = os.path.relpath(dirpath, root)
        for name in filenames:
            if name.endswith(".py"):
                found.append(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
    return sorted(found)


def is_validation(rel_path: str) -> bool:
    """Split by file with a hash of the path: stable across builds, machines and versions."""
    digest = hashlib.sha1(rel_path.encode("utf-8")).digest()
    return int.from_bytes(digest, "big") % 100 < VALIDATION_PERCENT


class CodeCorpusConfig(tfds.core.BuilderConfig):
    """A corpus variant; `max_files` keeps only the first files in sorted order (None: all)."""

    def __init__(self, *, max_files: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.max_files = max_files


class CodeCorpus(tfds.core.GeneratorBasedBuilder):
    """Python standard library `.py` files as {path, text}, split into train/validation by file."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        CodeCorpusConfig(name="stdlib", description="All standard library source files."),
        CodeCorpusConfig(
            name="stdlib_small",
            max_files=SMALL_NUM_FILES,
            description=f"The first {SMALL_NUM_FILES} files in sorted order, for fast tests.",
        ),
    ]
    # `code_path` only locates a checksums.tsv of download URLs, and nothing is downloaded here.
    # Setting it also avoids TFDS's own lookup, which needs the undeclared `importlib_resources`
    # package on Python >= 3.9 (tensorflow/datasets#11212).
    code_path = None

    def __init__(self, *, file_format: str = "array_record", **kwargs):
        # array_record is the default: it is random access, and the data source is how the zoo
        # reads data (tfrecord would need tf.data, hence TensorFlow).
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        version = platform.python_version()
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Python {version} standard library source code. "
            + self.builder_config.description,
            features=tfds.features.FeaturesDict(
                {"path": tfds.features.Text(), "text": tfds.features.Text()}
            ),
            metadata=tfds.core.MetadataDict(python_version=version),
            disable_shuffling=True,  # keep records in sorted-path order
        )

    def _split_generators(self, dl_manager):
        """Assigns files to splits; `dl_manager` is unused since nothing is downloaded."""
        del dl_manager
        root = stdlib_root()
        files = list_source_files(root)[: self.builder_config.max_files]
        # The key is the file's index in sorted order: TFDS sorts records by key.
        indexed = list(enumerate(files))
        splits = {
            "train": [(i, f) for i, f in indexed if not is_validation(f)],
            "validation": [(i, f) for i, f in indexed if is_validation(f)],
        }
        for name, items in splits.items():
            if not items:
                raise ValueError(
                    f"split {name!r} of config {self.builder_config.name!r} is empty "
                    f"({len(files)} files under {root})"
                )
        return {name: self._generate_examples(root, items) for name, items in splits.items()}

    def _generate_examples(self, root: str, items: list[tuple[int, str]]):
        for key, rel in items:
            with open(os.path.join(root, rel), "rb") as f:
                data = f.read()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                continue  # a byte-level corpus of UTF-8 text; other encodings are rare here
            yield key, {"path": rel, "text": text}


@contextlib.contextmanager
def _no_progress_bars():
    """Hides TFDS's tqdm bars during a build (its log lines stay), then restores the setting."""
    was_active = getattr(tfds.core.utils.tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)
    try:
        yield
    finally:
        tfds.display_progress_bar(was_active)


def build_corpus(config_name: str, data_dir: str) -> CodeCorpus:
    """Returns the builder for `config_name` under `data_dir`, preparing it on first use only."""
    builder = CodeCorpus(config=config_name, data_dir=os.path.expanduser(os.fspath(data_dir)))
    if not builder.is_prepared():
        with _no_progress_bars():
            builder.download_and_prepare()
    built_with = builder.info.metadata.get("python_version")
    if built_with != platform.python_version():
        raise ValueError(
            f"corpus in {builder.data_dir} was built with Python {built_with}, this is Python "
            f"{platform.python_version()}; use another data_dir"
        )
    return builder


def corpus_documents(config_name: str, data_dir: str, split: str) -> list[str]:
    """The texts of `split`, read through the array_record data source in record order."""
    source = build_corpus(config_name, data_dir).as_data_source(split)
    records = source.__getitems__(list(range(len(source))))  # one batched read
    return [r["text"].decode("utf-8") for r in records]


def opening_prompts(config_name: str, data_dir: str, n: int, length: int = 96,
                    tok=None) -> list[list[int]]:
    """`n` prompts: the first `length` bytes of validation files (files shorter than that skipped
    while longer ones exist, cycled if there are fewer than `n`), encoded by `tok` (a run's
    tokenizer; default zoo's bytes) with its start of text."""
    from zoo.data.tokenizer import ByteTokenizer

    tok = tok or ByteTokenizer()
    docs = corpus_documents(config_name, data_dir, "validation")
    docs = [d for d in docs if len(d.encode()) >= length] or docs
    return [tok.encode(docs[i % len(docs)].encode()[:length].decode("utf-8", "ignore"), bos=True)
            for i in range(n)]

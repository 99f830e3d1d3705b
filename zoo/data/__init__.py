"""Data pipeline: byte tokenizer (`tokenizer`), TFDS code corpus (`code_corpus`), packing and
resumable batching (`packing`). Import the submodules; this package stays light so the tokenizer
does not pull in TFDS."""

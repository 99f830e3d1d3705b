"""Decoding: sampling, AR generation (speculative and other families build on the same protocol)."""

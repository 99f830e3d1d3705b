"""Backend names every op's `api.py` accepts. No jax import: configs validate these names before
anything heavy is imported."""

BACKENDS = ("auto", "reference", "xla", "pallas_tpu", "pallas_gpu")

"""zoo: a JAX-native model zoo for fast generation."""

__version__ = "0.1.0"

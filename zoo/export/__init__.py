"""Hugging Face / PyTorch checkpoints (safetensors in the layout transformers' classes load):
export zoo params and import them back. `hf.py` does the files; one module per architecture says
which tensor is which."""

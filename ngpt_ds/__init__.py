"""ngpt_ds: a DeepSpeed trainer for nGPT, the Normalized Transformer (arXiv 2410.01131)."""

__version__ = "0.1.0"

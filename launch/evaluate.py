"""Validation loss and perplexity of a trained model, at its training context and beyond.

    python launch/evaluate.py runs/ngpt_tiny

Prints a table with one row per context length (1x, 2x, 4x the training seq_len by default):
the paper's length-extrapolation test. At 1x with the default windows, the loss is the
trainer's eval loss on the same windows.

The command line lives in ngpt_ds.cli.evaluate (installed as `ngpt-evaluate`).
"""

import sys

from ngpt_ds.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())

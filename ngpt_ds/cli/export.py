"""`ngpt-export` (launch/export.py): export a trainer checkpoint as one portable model folder (no DeepSpeed needed to use it).

    ngpt-export runs/ngpt_tiny --out exports/ngpt_tiny

The folder holds model.safetensors (fp32, ZeRO shards consolidated by DeepSpeed's own
zero_to_fp32), config.json, the tokenizer.model and a README.
"""

from __future__ import annotations

import argparse

from ngpt_ds.cli import Parser, add_logging_arguments, run

EPILOG = """\
CHECKPOINT is a checkpoint directory (.../checkpoints/step_N, with its COMPLETE marker) or a training
run's --out directory (its newest complete checkpoint). Any ZeRO stage and world size.

examples:
  ngpt-export runs/ngpt_tiny --out exports/ngpt_tiny
  ngpt-export runs/ngpt_0.5b/checkpoints/step_00010000 --out exports/ngpt_0.5b_10k
  ngpt-export runs/ngpt_tiny --out exports/ngpt_tiny_hf --format hf
(from a checkout, `python launch/export.py` is ngpt-export)
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(
        description="Consolidate a DeepSpeed checkpoint into safetensors + config + tokenizer.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint directory or training run directory")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write (required; must not exist)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it holds an earlier export (never the checkpoint or a folder around it)",
    )
    parser.add_argument(
        "--tokenizer",
        metavar="FILE",
        help="the sentencepiece .model of the training data, when the run's data_dir is not on this "
        "machine (checked against the model's vocabulary and the tokenizer hash the checkpoint records)",
    )
    parser.add_argument(
        "--format",
        choices=("ngpt_ds", "hf"),
        default="ngpt_ds",
        help="ngpt_ds: the folder above (default); hf: Hugging Face transformers' layout (config.json with "
        "auto_map, model.safetensors, tokenizer.json, the modeling code; needs transformers)",
    )
    add_logging_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ngpt_ds.limits import EXPORT, limit_named

    # A thread that a low `ulimit -v` or a large `ulimit -s` leaves no room for: one line, not a traceback
    return run(limit_named(EXPORT)(lambda: _export(args)), args)


def _export(args: argparse.Namespace) -> int:
    from ngpt_ds.infer import export_model, load_export

    out = export_model(
        args.checkpoint, args.out, overwrite=args.overwrite, tokenizer=args.tokenizer, format=args.format
    )
    if args.format == "hf":
        print(
            f"exported {out} for Hugging Face transformers (AutoModelForCausalLM.from_pretrained, "
            "trust_remote_code=True without ngpt_ds; see its README.md)"
        )
        return 0
    loaded = load_export(out, device="cpu")
    print(f"exported {loaded.describe()}")
    print(f"  from: {loaded.info.get('checkpoint')} ({loaded.info.get('weights')})")
    if loaded.config.is_ngpt:
        from ngpt_ds.model import max_norm_deviation

        print(f"  sphere: every declared matrix unit norm (largest deviation {max_norm_deviation(loaded.model):.1e})")
    return 0


if __name__ == "__main__":  # python -m ngpt_ds.cli.export
    import sys

    sys.exit(main())

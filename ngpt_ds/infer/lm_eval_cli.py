"""lm-evaluation-harness's own command line with the `ngpt_ds` model registered.

    python -m ngpt_ds.infer.lm_eval_cli --model ngpt_ds --model_args path=EXPORT --tasks arc_easy
    ngpt-lm-eval ...   (the same, installed by setup.py)

lm-eval 0.4.x resolves --model only against its own registry, so plain `lm_eval --model ngpt_ds`
cannot see a model defined outside it; this wrapper imports the adapter first and then hands
every option to lm_eval unchanged.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line; bad input to the ngpt_ds model (a missing path, a refused checkpoint
    file) prints `error: ...` and exits 2, as the other entry scripts do."""
    from ngpt_ds.cli import print_error
    from ngpt_ds.errors import NgptConfigError, require_extra

    try:
        require_extra("lm_eval", "eval", "ngpt-lm-eval")
    except NgptConfigError as err:
        print_error(err)
        sys.exit(2)
    from lm_eval.__main__ import cli_evaluate

    import ngpt_ds.infer.lm_eval_adapter  # noqa: F401  registers "ngpt_ds"

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        cli_evaluate()
    except NgptConfigError as err:
        print_error(err)
        sys.exit(2)


if __name__ == "__main__":
    main()

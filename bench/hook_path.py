"""The hypersphere hook's renormalization alone, as it is and as it was before its views were cut once per piece
and its scaling became one `torch._foreach_mul_`.

    python bench/hook_path.py [--config ngpt_tiny] [--rounds 20] [--passes 20] [--threads N] [--clock wall|cpu]

Builds the preset's engine as the trainer does (bench/engines.py, with its hook), then times the hook's
`_renormalize` over every step unit, `--passes` times per form and round, the forms alternating and each
round starting with the other one. "before" clears each piece's cached views (`MasterPiece._parts`) before
every call and scales piece by piece (`MasterPiece.scale`), as the code did before (docs/benchmarks.md, "What
was changed, and what it gave"). Both forms compute the same products: the script checks that they leave the
same masters, bit for bit, starting from the same values moved off the sphere.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from report import add_timing_arguments, apply_timing_arguments, count  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="ngpt_tiny", help="nGPT preset or YAML (default ngpt_tiny)")
    parser.add_argument("--ds", default=str(REPO / "ds_configs/zero2.json"), help="DeepSpeed JSON")
    parser.add_argument("--rounds", type=count(1), default=20, help="interleaved rounds")
    parser.add_argument("--passes", type=count(1), default=20, help="renormalizations per form and round")
    add_timing_arguments(parser)
    args = parser.parse_args()
    if not apply_timing_arguments(args):
        return 2
    from engines import refuse_gpu

    if refuse_gpu("bench/hook_path.py", "its times have no CUDA synchronize"):
        return 2

    import torch
    from engines import preset_engine

    from ngpt_ds import distributed

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    bench = preset_engine(args.config, args.ds, distributed.discover({}))
    hook = bench.hook
    if hook is None:
        print(f"error: {args.config} has no hypersphere hook (an nGPT preset has one)", file=sys.stderr)
        return 2
    units = hook.units
    pieces = [p for unit in units for p in unit.pieces]

    from ngpt_ds.train import hypersphere

    current_scale_all = hypersphere.scale_all

    def scale_each(pieces, inv_norms) -> None:
        for piece in pieces:
            piece.scale(inv_norms)

    def renormalize(before: bool) -> None:
        hypersphere.scale_all = scale_each if before else current_scale_all
        try:
            for unit in units:
                if before:
                    for piece in unit.pieces:
                        piece._parts = None
                hook._renormalize(unit)
        finally:
            hypersphere.scale_all = current_scale_all

    # Same result: both forms from the same masters, moved off the sphere.
    start = [p.values.clone() for p in pieces]
    generator = torch.Generator().manual_seed(0)
    noise = [1 + 1e-3 * torch.randn(p.values.shape, generator=generator) for p in pieces]
    results = []
    for before in (False, True):
        for p, s, n in zip(pieces, start, noise):
            p.values.copy_(s * n)
        renormalize(before)
        results.append([p.values.clone() for p in pieces])
    identical = all(torch.equal(a, b) for a, b in zip(*results))
    for p, s in zip(pieces, start):
        p.values.copy_(s)

    forms = {"current": False, "before": True}
    times: dict[str, list[float]] = {name: [] for name in forms}
    for _ in range(3):
        for before in forms.values():
            renormalize(before)
    names = list(forms)
    for round_index in range(args.rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            began = clock()
            for _ in range(args.passes):
                renormalize(forms[name])
            times[name].append((clock() - began) / args.passes * 1e3)
    ratios = [a / b for a, b in zip(times["current"], times["before"])]
    print(
        f"{args.config}: {len(units)} step unit(s), {len(pieces)} pieces; {torch.get_num_threads()} threads, "
        f"{args.clock} clock; medians of {args.rounds} rounds of {args.passes} renormalizations per form"
    )
    for name in names:
        print(f"{name}: {statistics.median(times[name]):.3f} ms per renormalization of all units")
    print(
        f"current / before: {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}), "
        f"below 1.0 in {sum(r < 1 for r in ratios)} of {len(ratios)} rounds; masters bit-identical: {identical}"
    )
    import torch.distributed as dist

    dist.destroy_process_group()
    return 0 if identical else 1


if __name__ == "__main__":
    from ngpt_ds.distributed import exit_process

    sys.exit(exit_process(main()))

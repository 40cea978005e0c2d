"""nGPT's eq. 10-11 update (or the q/k Norm), forward plus backward, the form before against the current one.

    python bench/block_update.py [--part update|qk_norm|step] [--config ngpt_tiny] [--batch 8]
                                 [--dtype bfloat16|float32] [--rounds 10] [--passes 30] [--threads N]
                                 [--clock wall|cpu] [--malloc trainer|system]

One update h <- Norm(h + alpha (Norm(x) - h)) on random inputs of the preset's micro-batch shape ([B, T, d];
h on the sphere, x a block output, alpha = |param| as `ScaleVector` gives it): the plain form
(`sphere_step(h, l2_normalize(x), alpha)`, autograd through two `_L2Normalize` nodes and lerp, as
ngpt_ds.model.ngpt.NormalizedBlock ran it until 2026-12-04) and `ngpt_ds.model.ngpt.block_update`, which the
block runs now: in eager mode on the CPU, one autograd function whose backward runs the same operations with
its temporaries reused in place. Each round times `--passes` passes of each form, the forms' order alternating
by round; the script prints the medians, new / old per round (and in how many rounds it was below 1.0), and
whether values and the gradients of h, x and alpha's parameter are bit-identical (exit status 1 if not).

`--part qk_norm` times `l2_normalize` of q and k per head ([B, T, 2, H, head_dim], as attention runs it) against
`_L2Normalize` as it was before 2026-12-04 (a copy here: its backward allocated every temporary anew; the
current one reuses them in place through `tangent_rows`, the same values). Both parts run in eager mode.
They run with glibc's allocator set as the trainer sets it (`ngpt_ds.hostmem.keep_freed_memory`: freed buffers
kept for reuse) unless `--malloc system`: with glibc's defaults each fresh temporary of these sizes costs page
faults that the trainer does not pay, and the old forms, which allocate more, measured 10-20% slower there.
`--part step` times whole eager engine steps of the preset (bench/engines.py, ds_configs/zero2.json, one rank,
with the hypersphere hook; `--passes` steps per form and round) with both changes against neither (the model
module's `block_update` and `_L2Normalize` swapped for the old forms while the old form runs); `--batch` and
`--dtype` are ignored there (the engine's micro-batch, bf16), and "bit-identical" compares the two forms' first losses.
docs/benchmarks.md, "What was changed, and what it gave", has the runs.
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
    parser.add_argument("--part", choices=("update", "qk_norm", "step"), default="update", help="default update")
    parser.add_argument("--config", default="ngpt_tiny", help="preset or YAML (default ngpt_tiny)")
    parser.add_argument("--batch", type=count(1), default=8, help="micro-batch (default 8, ds_configs/zero2.json's)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="default bfloat16")
    parser.add_argument("--rounds", type=count(1), default=10)
    parser.add_argument("--passes", type=count(1), default=30, help="forward+backward passes per form and round")
    parser.add_argument(
        "--malloc",
        choices=("trainer", "system"),
        default="trainer",
        help="glibc's allocator as the trainer sets it (default), or left at its defaults",
    )
    add_timing_arguments(parser)
    args = parser.parse_args()
    if not apply_timing_arguments(args):
        return 2
    if args.malloc == "trainer":
        from ngpt_ds.hostmem import keep_freed_memory

        print(f"allocator: {keep_freed_memory()}")
    import torch

    from ngpt_ds.model.layers import _scale_rows, l2_normalize
    from ngpt_ds.model.ngpt import block_update
    from ngpt_ds.train.config import load_model_and_train

    class OldL2Normalize(torch.autograd.Function):
        """ngpt_ds.model.layers._L2Normalize before 2026-12-04."""

        @staticmethod
        def forward(ctx, x: torch.Tensor, dim: int) -> torch.Tensor:  # type: ignore[override]
            accumulate = torch.promote_types(x.dtype, torch.float32)
            inv_norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=accumulate).reciprocal_()
            y = _scale_rows(x, inv_norm.to(x.dtype))
            ctx.dim = dim
            ctx.save_for_backward(y, inv_norm)
            return y

        @staticmethod
        def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
            y, inv_norm = ctx.saved_tensors
            dot = (grad * y).sum(dim=ctx.dim, keepdim=True, dtype=inv_norm.dtype)
            return _scale_rows(grad - _scale_rows(y, dot.to(grad.dtype)), inv_norm.to(grad.dtype)), None

    def old_norm(x: torch.Tensor) -> torch.Tensor:
        return OldL2Normalize.apply(x, -1)

    def old_update(h: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """NormalizedBlock's update before 2026-12-04: sphere_step(h, l2_normalize(x), alpha) then."""
        dtype = torch.promote_types(h.dtype, x.dtype)
        return old_norm(torch.lerp(h.to(dtype), old_norm(x).to(dtype), alpha.to(dtype)))

    model_cfg = load_model_and_train(args.config)[0]
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    if args.part == "update":
        shape: tuple[int, ...] = (args.batch, model_cfg.seq_len, model_cfg.n_embd)
        h = l2_normalize(torch.randn(shape)).to(dtype).requires_grad_()
        x = torch.randn(shape, dtype=dtype).requires_grad_()
        param = torch.full(shape[-1:], 0.05, dtype=dtype).requires_grad_()
        forms = {"old": old_update, "new": block_update}
        what = "one eq. 10-11 update"

        def one_pass(form) -> tuple[torch.Tensor, ...]:
            out = form(h, x, (param * 1.0).abs())
            return (out, *torch.autograd.grad(out, (h, x, param), g))

    elif args.part == "step":
        return _engine_steps(args, clock, OldL2Normalize, old_update)
    else:
        shape = (args.batch, model_cfg.seq_len, 2, model_cfg.n_head, model_cfg.head_dim)
        x = torch.randn(shape, dtype=dtype).requires_grad_()
        forms = {"old": old_norm, "new": l2_normalize}
        what = "the q/k Norm"

        def one_pass(form) -> tuple[torch.Tensor, ...]:
            out = form(x)
            return (out, *torch.autograd.grad(out, (x,), g))

    g = torch.randn(shape, dtype=dtype)
    results = {name: one_pass(form) for name, form in forms.items()}
    identical = all(torch.equal(a, b) for a, b in zip(results["old"], results["new"]))

    def timed(form) -> float:
        start = clock()
        for _ in range(args.passes):
            one_pass(form)
        return (clock() - start) / args.passes

    seconds: dict[str, list[float]] = {name: [] for name in forms}
    for r in range(args.rounds + 1):
        for name in list(forms) if r % 2 else list(forms)[::-1]:
            t = timed(forms[name])
            if r:
                seconds[name].append(t)
    ratios = [n / o for n, o in zip(seconds["new"], seconds["old"])]
    print(
        f"{args.config}: {what} of {list(shape)} {args.dtype}, {torch.get_num_threads()} thread(s), "
        f"{args.clock} clock, {args.rounds} rounds of {args.passes} passes"
    )
    for name in forms:
        print(f"{name}: {1e3 * statistics.median(seconds[name]):.3f} ms per forward+backward")
    print(
        f"new / old: {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}), "
        f"below 1.0 in {sum(r < 1.0 for r in ratios)} of {len(ratios)} rounds; "
        f"values and gradients bit-identical: {identical}"
    )
    return 0 if identical else 1


def _engine_steps(args: argparse.Namespace, clock, old_norm_class, old_update) -> int:
    """`--part step`: whole eager engine steps, the old forms (swapped into the model's modules) against the new."""
    import torch
    from engines import preset_engine

    from ngpt_ds import distributed
    from ngpt_ds.model import layers, ngpt

    bench = preset_engine(args.config, "ds_configs/zero2.json", distributed.discover({}))
    engine, config, plan = bench.engine, bench.model, bench.plan
    new_forms = (ngpt.block_update, layers._L2Normalize)
    old_forms = (old_update, old_norm_class)

    def use(name: str) -> None:
        ngpt.block_update, layers._L2Normalize = new_forms if name == "new" else old_forms

    torch.manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (plan.micro_batch, config.seq_len + 1))

    def step() -> float:
        _, loss = engine(tokens[:, :-1], tokens[:, 1:])
        engine.backward(loss)
        engine.step()
        return loss.item()

    # Same weights, same batch: the two forms' first losses (forward only, with the graph built as in training).
    losses = {}
    for name in ("old", "new"):
        use(name)
        _, loss = engine(tokens[:, :-1], tokens[:, 1:])
        losses[name] = loss.detach().clone()
        del loss
    identical = torch.equal(losses["old"], losses["new"])
    for name in ("old", "new"):  # warm-up
        use(name)
        for _ in range(2):
            step()
    seconds: dict[str, list[float]] = {"old": [], "new": []}
    for r in range(args.rounds):
        for name in ("old", "new") if r % 2 else ("new", "old"):
            use(name)
            times = []
            for _ in range(args.passes):
                start = clock()
                step()
                times.append(clock() - start)
            seconds[name].append(statistics.median(times))
    use("new")
    ratios = [n / o for n, o in zip(seconds["new"], seconds["old"])]
    print(
        f"{args.config}: eager engine steps ({plan.micro_batch} x {config.seq_len} tokens, zero2.json, 1 rank, hook), "
        f"{torch.get_num_threads()} thread(s), {args.clock} clock, {args.rounds} rounds of {args.passes} steps"
    )
    for name in ("old", "new"):
        print(f"{name}: {1e3 * statistics.median(seconds[name]):.1f} ms per step")
    print(
        f"new / old: {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}), "
        f"below 1.0 in {sum(r < 1.0 for r in ratios)} of {len(ratios)} rounds; first loss bit-identical: {identical}"
    )
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())

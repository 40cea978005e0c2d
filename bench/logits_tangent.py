"""Compiled forward+backward with the logits returned beside the loss detached, against logits with grad.

    python bench/logits_tangent.py [--config ngpt_tiny] [--batch 8] [--part model|head] [--rounds 10]
                                   [--passes 4] [--threads N] [--clock wall|cpu]

`CausalLM.forward(tokens, targets)` returns (logits, loss). Under torch.compile each differentiable output
of the graph gets a gradient in the compiled backward: with the logits' graph kept (`with_grad`, the form
before 2026-12-04, here rebuilt as `logits = model(tokens)[0]; loss = model.cross_entropy(logits, targets)`)
autograd fills a zero [B, T, V] gradient for the unused logits every backward and Inductor's loss kernel adds
it in. The model now returns them detached (`detached`: `model(tokens, targets)`), so the graph has one
differentiable output.

The model of the preset in bf16 (as the engine trains it), both forms compiled. First one forward+backward
of each at the same weights: the script prints whether the losses and every parameter's gradient are
bit-identical, and how many [B, T, V] zero fills `torch.profiler` saw in each form's backward. Then rounds of
`--passes` forward+backward passes per form, the order alternating by round; it prints the medians and
detached / with_grad per round (median, range, rounds below 1.0).

`--part head` times the head and the loss alone, from final hidden states (a bf16 leaf of [B, T, d] with
grad) to the loss, the logits returned with grad or detached: the part of the step the change touches,
so its share is not lost in the noise of a whole forward+backward.
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
    parser.add_argument("--config", default="ngpt_tiny", help="preset or YAML (default ngpt_tiny)")
    parser.add_argument("--batch", type=count(1), default=8, help="micro-batch (default 8, ds_configs/zero2.json's)")
    parser.add_argument("--vocab", type=count(2), default=4096, help="vocabulary size (default 4096)")
    parser.add_argument("--part", choices=("model", "head"), default="model", help="what is timed (default model)")
    parser.add_argument("--rounds", type=count(1), default=10)
    parser.add_argument("--passes", type=count(1), default=4, help="forward+backward passes per form and round")
    add_timing_arguments(parser)
    args = parser.parse_args()
    if not apply_timing_arguments(args):
        return 2
    import torch
    from torch.profiler import ProfilerActivity, profile

    from ngpt_ds.model import build_model, load_model_config

    config = load_model_config(args.config, {"vocab_size": args.vocab})
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.manual_seed(0)
    model = build_model(config).to(torch.bfloat16)
    tokens = torch.randint(0, args.vocab, (args.batch, config.seq_len + 1))
    targets = tokens[:, 1:]
    if args.part == "head":
        inputs = torch.randn(args.batch, config.seq_len, config.n_embd, dtype=torch.bfloat16).requires_grad_()

        def with_grad(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = model.logits(inputs)
            return logits, model.cross_entropy(logits, targets)

        def detached(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            logits = model.logits(inputs)
            return logits.detach(), model.cross_entropy(logits, targets)
    else:
        inputs = tokens[:, :-1]

        def with_grad(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = model(inputs)[0]
            return logits, model.cross_entropy(logits, targets)

        def detached(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            return model(inputs, targets)

    forms = {"with_grad": torch.compile(with_grad), "detached": torch.compile(detached)}

    def step(name: str) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        inputs.grad = None
        logits, loss = forms[name](inputs, targets)
        assert loss is not None
        loss.backward()
        return loss.detach()

    logits_shape = [args.batch, config.seq_len, args.vocab]
    results = {}
    for name in forms:
        step(name)  # compiles forward and backward
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            loss = step(name)
        fills = sum(
            1
            for e in prof.events()
            if e.name in ("aten::fill_", "aten::zero_") and e.input_shapes and e.input_shapes[0] == logits_shape
        )
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        if inputs.grad is not None:
            grads["(hidden states)"] = inputs.grad.clone()
        results[name] = (loss, grads, fills)
    (loss_old, grads_old, fills_old), (loss_new, grads_new, fills_new) = results["with_grad"], results["detached"]
    identical = torch.equal(loss_old, loss_new) and grads_old.keys() == grads_new.keys()
    identical = identical and all(torch.equal(grads_old[n], grads_new[n]) for n in grads_old)

    seconds: dict[str, list[float]] = {name: [] for name in forms}
    for r in range(args.rounds + 1):
        for name in list(forms) if r % 2 else list(forms)[::-1]:
            start = clock()
            for _ in range(args.passes):
                step(name)
            if r:
                seconds[name].append((clock() - start) / args.passes)
    ratios = [n / o for n, o in zip(seconds["detached"], seconds["with_grad"])]
    print(
        f"{args.config}, {args.part}: {args.batch} x {config.seq_len} tokens, vocabulary {args.vocab}, bf16, compiled, "
        f"{torch.get_num_threads()} thread(s), {args.clock} clock, {args.rounds} rounds of {args.passes} passes"
    )
    print(f"zero fills of the logits' shape {logits_shape} per backward: with_grad {fills_old}, detached {fills_new}")
    for name in forms:
        print(f"{name}: {1e3 * statistics.median(seconds[name]):.2f} ms per forward+backward")
    print(
        f"detached / with_grad: {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}), "
        f"below 1.0 in {sum(r < 1.0 for r in ratios)} of {len(ratios)} rounds; "
        f"loss and gradients bit-identical: {identical}"
    )
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())

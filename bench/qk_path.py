"""Attention's q/k path, timed side by side with the form it replaced: projection output -> q, k, v.

    python bench/qk_path.py [--config ngpt_tiny] [--batch 8] [--rounds 5] [--reps 40] [--threads N]
                            [--json F] [--docs]

`CausalSelfAttention.project_qkv` takes the qkv projection's output to q, k and v: RoPE, and in nGPT
the per-head Norm and s_qk^2. This times it, forward plus backward, against the form it replaced:
RoPE per half of the head, `cat(x1 cos - x2 sin, x2 cos + x1 sin)`, with q, k and v taken by
indexing (whose backward zero-fills a full-size gradient per index). Both run on the same module
and inputs in bf16, alternating within every round. The script first checks that both forms give
the same q, k and v, bit for bit, and input gradients equal to rounding.

The part is about 1.5% of an `ngpt_tiny` step, below what whole-step benchmarks resolve on a
shared machine (docs/benchmarks.md, "MFU"); this times it alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402
from report import json_file  # noqa: E402
from torch import nn  # noqa: E402

from ngpt_ds.model.blocks import CausalSelfAttention  # noqa: E402
from ngpt_ds.model.layers import RotaryEmbedding, l2_normalize  # noqa: E402

#: the vocabulary of a preset that leaves model.vocab_size to the tokenizer (unused here)
DEFAULT_VOCAB = 4096


def previous_form(
    attn: CausalSelfAttention, qkv_out: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """project_qkv as it was: RoPE per half of the head and indexing. cos, sin: `RotaryEmbedding.tables`."""
    B, T, _ = qkv_out.shape
    half = attn.head_dim // 2
    cos_half, sin_half = cos[..., :half].unsqueeze(1), sin[..., half:].unsqueeze(1)
    qkv = qkv_out.view(B, T, 3, -1, attn.head_dim)
    x1, x2 = qkv[:, :, :2].chunk(2, dim=-1)
    qk = torch.cat((x1 * cos_half - x2 * sin_half, x2 * cos_half + x1 * sin_half), dim=-1)
    v = qkv[:, :, 2]
    if not attn.on_sphere:
        return qk[:, :, 0], qk[:, :, 1], v
    qk = l2_normalize(qk)
    s_qk = attn.s_qk().view(-1, attn.head_dim)
    return qk[:, :, 0] * s_qk.square().to(qk.dtype), qk[:, :, 1], v


def current_form(
    attn: CausalSelfAttention, qkv_out: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The module's own project_qkv, from the projection's output (its qkv is an identity here)."""
    return attn.project_qkv(qkv_out, cos, sin)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="ngpt_tiny", help="preset or YAML whose model shape is used")
    parser.add_argument("--batch", type=int, default=8, help="sequences (default 8, the JSONs' micro-batch)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, each timing both forms")
    parser.add_argument("--reps", type=int, default=40, help="forward+backward passes per form and round")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=json_file, help="also write the numbers here")
    parser.add_argument("--docs", action="store_true", help="also write the table into docs/benchmarks.md")
    args = parser.parse_args()
    if min(args.batch, args.rounds, args.reps) < 1:
        parser.error("--batch, --rounds and --reps must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    from ngpt_ds.model import load_model_config

    config = load_model_config(args.config)
    config.vocab_size = config.vocab_size or DEFAULT_VOCAB
    torch.manual_seed(0)
    attn = CausalSelfAttention(config, on_sphere=config.is_ngpt, qkv_std=0.02, out_std=0.02).to(torch.bfloat16)
    attn.qkv = nn.Identity()  # time the path from the projection's output on
    T, d = config.seq_len, config.n_embd
    cos, sin = RotaryEmbedding(config.head_dim, config.rope_base).tables(T, torch.device("cpu"), torch.bfloat16)
    qkv_out = torch.randn(args.batch, T, 3 * d, dtype=torch.bfloat16, requires_grad=True)
    grads = [torch.randn(args.batch, T, config.n_head, config.head_dim, dtype=torch.bfloat16) for _ in range(3)]
    forms = {"previous": previous_form, "current": current_form}

    def pass_of(form) -> torch.Tensor:
        qkv_out.grad = None
        outputs = form(attn, qkv_out, cos, sin)
        torch.autograd.backward(outputs, grads)
        return outputs

    results = {name: pass_of(form) for name, form in forms.items()}
    same_values = all(torch.equal(a, b) for a, b in zip(results["previous"], results["current"]))
    input_grads = {}
    for name, form in forms.items():
        pass_of(form)
        input_grads[name] = qkv_out.grad.float().clone()
    grad_diff = (input_grads["previous"] - input_grads["current"]).abs().max().item()
    grad_scale = input_grads["previous"].abs().max().item()

    per_round: dict[str, list[float]] = {name: [] for name in forms}
    for _ in range(args.rounds):
        for name, form in forms.items():
            times = []
            for _ in range(args.reps):
                start = time.perf_counter()
                pass_of(form)
                times.append(time.perf_counter() - start)
            per_round[name].append(statistics.median(times) * 1e3)
    ratios = [cur / prev for cur, prev in zip(per_round["current"], per_round["previous"])]
    result = {
        "config": args.config,
        "arch": config.arch,
        "shape": {"batch": args.batch, "seq_len": T, "n_head": config.n_head, "head_dim": config.head_dim},
        "threads": torch.get_num_threads(),
        "same_values": same_values,
        "input_grad_max_diff": grad_diff,
        "input_grad_max_abs": grad_scale,
        "ms_per_round": per_round,
        "median_ms": {name: statistics.median(ms) for name, ms in per_round.items()},
        "current_over_previous": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }
    line = (
        f"q/k path, {args.config} ({config.arch}), {args.batch} x {T} tokens, {config.n_head} heads of "
        f"{config.head_dim}, bf16, {result['threads']} threads: previous {result['median_ms']['previous']:.2f} ms, "
        f"current {result['median_ms']['current']:.2f} ms per forward+backward; current/previous "
        f"{result['current_over_previous']:.2f} ({min(ratios):.2f}-{max(ratios):.2f} over {args.rounds} rounds); "
        f"q, k, v bit-identical: {same_values}; input gradients differ by {grad_diff:.1e} at most "
        f"(largest {grad_scale:.1e})"
    )
    print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.docs:
        from report import command_line, machine, update_section

        rows = [
            "| form | ms per forward+backward, median of rounds | per round |",
            "|---|---|---|",
        ]
        for name in forms:
            rows.append(
                f"| {name} | {result['median_ms'][name]:.2f} | {', '.join(f'{ms:.2f}' for ms in per_round[name])} |"
            )
        update_section(
            "qk_path",
            f"Command: `{command_line()}`  \nMachine: {machine()}, {result['threads']} threads; {args.config}, "
            f"{args.batch} x {T} tokens, medians of {args.reps} passes per form and round.\n\n"
            + "\n".join(rows)
            + f"\n\ncurrent / previous: **{result['current_over_previous']:.2f}** ({min(ratios):.2f}-{max(ratios):.2f}); "
            f"q, k, v bit-identical: {same_values}; input gradients differ by {grad_diff:.1e} at most "
            f"(largest magnitude {grad_scale:.1e}).",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The attention core on the CPU (SDPA's flash kernel), timed side by side with the alternatives tried for it.

    python bench/attn_path.py [--batch 8] [--seq-len 256] [--heads 4] [--head-dims 48,64] [--rounds 5]
                              [--reps 20] [--threads N] [--clock wall|cpu] [--forms NAME,...] [--compile] [--json F] [--docs]
    python bench/attn_path.py --compile --forms current,written --seq-lens 128,256,512,1024 [--tokens 2048] ...

`CausalSelfAttention.attend` gives SDPA q, k, v as [B, H, T, head_dim] views of [B, T, H, head_dim]
tensors, in bf16, causal, with nGPT's softmax scale sqrt(head_dim); on the CPU that runs
`_scaled_dot_product_flash_attention_for_cpu` and its backward. At `ngpt_tiny` (8 x 256 tokens, 4 heads of
48) the backward is the largest operator after the matmuls (docs/benchmarks.md, "Where the time goes").
This times forward plus backward, in one process, the forms alternating within every round:

- `current`: the code's form;
- `fp32`: the same kernel on fp32 copies of q, k, v, the output cast back to bf16 (values differ by rounding);
- `padded`: head_dim zero-padded to a multiple of 32 (bit-identical: the zero columns add nothing);
- `contiguous`: q, k, v copied to contiguous [B, H, T, head_dim] first (bit-identical);
- `hand_backward`: the flash kernel's forward, and a backward written as bf16 matmuls over the full
  [B, H, T, T] probabilities rebuilt from the kernel's saved logsumexp (values differ by rounding);
- `math`: SDPA with its math backend forced (`sdpa_kernel(SDPBackend.MATH)`; values differ by rounding);
- `written`: attention written out, bf16 matmuls around an fp32 masked softmax, autograd's backward: what
  Inductor can fuse (scale, mask, softmax, casts) when compiled (values differ by rounding). It is the model's
  own `written_attention` (ngpt_ds/model/blocks.py), which compiled CPU steps run up to
  `WRITTEN_ATTENTION_MAX_POSITIONS` positions.

`--compile` runs every form through torch.compile (the forms `current`, `math`, `written` and `fp32` by
default then): whether, inside a compiled step, another path beats the flash kernel. `--forms` picks forms
(`current` always first, the reference). `--seq-lens` repeats it all at each context, the batch set to
`--tokens` / context (the same tokens at every context, as a training step at a fixed batch of tokens):
where the written form stops paying, the threshold `WRITTEN_ATTENTION_MAX_POSITIONS`.

It prints each form's median time, its ratio to `current` per round, and the largest difference of its
output and input gradients from `current`'s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from report import json_file  # noqa: E402

sys.path.insert(0, str(REPO))
from ngpt_ds.model.blocks import written_attention  # noqa: E402


def make_forms(T: int, head_dim: int) -> dict[str, Any]:
    scale = head_dim**0.5
    allowed = torch.ones(T, T, dtype=torch.bool).tril()

    def current(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, scale=scale
        ).transpose(1, 2)

    def fp32(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return current(q.float(), k.float(), v.float()).to(q.dtype)

    def padded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        pad = -head_dim % 32
        if not pad:
            return current(q, k, v)
        return current(*(F.pad(x, (0, pad)) for x in (q, k, v)))[..., :head_dim]

    def contiguous(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = (x.transpose(1, 2).contiguous() for x in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale).transpose(1, 2)

    class HandBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qt, kt, vt, 0.0, True, scale=scale)[
                :2
            ]
            ctx.save_for_backward(qt, kt, vt, out, lse)
            return out.transpose(1, 2)

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
            qt, kt, vt, out, lse = ctx.saved_tensors
            go = grad.transpose(1, 2)
            p = torch.matmul(qt, kt.transpose(-1, -2)).float().mul_(scale).sub_(lse.unsqueeze(-1)).exp_()
            p.masked_fill_(~allowed, 0)
            dv = torch.matmul(p.to(go.dtype).transpose(-1, -2), go)
            dp = torch.matmul(go, vt.transpose(-1, -2)).float()
            rowdot = (go.float() * out.float()).sum(-1, keepdim=True)
            ds = p.mul_(dp.sub_(rowdot)).mul_(scale).to(go.dtype)
            dq, dk = torch.matmul(ds, kt), torch.matmul(ds.transpose(-1, -2), qt)
            return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)

    def math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            return current(q, k, v)

    def written(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return written_attention(q, k, v, scale)

    return {
        "current": current,
        "fp32": fp32,
        "padded": padded,
        "contiguous": contiguous,
        "hand_backward": HandBackward.apply,
        "math": math,
        "written": written,
    }


DEFAULT_FORMS = ("current", "fp32", "padded", "contiguous", "hand_backward")
COMPILED_FORMS = ("current", "math", "written", "fp32")


def measure(args: argparse.Namespace, head_dim: int, T: int) -> dict[str, Any]:
    B, H = (args.tokens // T if args.seq_lens else args.batch), args.heads
    torch.manual_seed(0)
    q, k, v = ((torch.randn(B, T, H, head_dim) / head_dim**0.5).to(torch.bfloat16).requires_grad_() for _ in range(3))
    grad = torch.randn(B, T, H, head_dim, dtype=torch.bfloat16)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    every = make_forms(T, head_dim)
    names = ["current"] + [n for n in args.forms if n != "current"]
    forms = {n: torch.compile(every[n]) if args.compile else every[n] for n in names}

    def run(form: Any) -> torch.Tensor:
        for x in (q, k, v):
            x.grad = None
        y = form(q, k, v)
        y.backward(grad)
        return y

    reference: list[torch.Tensor] = []
    diffs: dict[str, float] = {}
    for name, form in forms.items():
        got = [run(form).detach().float()] + [x.grad.float() for x in (q, k, v)]
        if not reference:
            reference = got
        diffs[name] = max((a - b).abs().max().item() for a, b in zip(got, reference))
    ms: dict[str, list[float]] = {name: [] for name in forms}
    for r in range(args.rounds):
        names = list(forms) if r % 2 == 0 else list(reversed(forms))
        for name in names:
            times = []
            for _ in range(args.reps):
                start = clock()
                run(forms[name])
                times.append(clock() - start)
            ms[name].append(statistics.median(times) * 1e3)
    out: dict[str, Any] = {"head_dim": head_dim, "seq_len": T, "batch": B, "forms": {}}
    for name in forms:
        ratios = [a / b for a, b in zip(ms[name], ms["current"])]
        out["forms"][name] = {
            "median_ms": statistics.median(ms[name]),
            "ms_per_round": ms[name],
            "ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "max_diff": diffs[name],
        }
    out["largest_reference_value"] = max(t.abs().max().item() for t in reference)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq-lens", help="comma-separated contexts, each at --tokens / context sequences")
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per pass with --seq-lens (default 2048)")
    parser.add_argument("--head-dims", default="48,64", help="comma-separated head sizes (default 48,64)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, each timing every form")
    parser.add_argument("--reps", type=int, default=20, help="forward+backward passes per form and round")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--forms", help="comma-separated forms (default: all but math and written; with --compile "
                        + ",".join(COMPILED_FORMS) + ")")  # fmt: skip
    parser.add_argument("--compile", action="store_true", help="time each form through torch.compile")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="cpu: this process's CPU time (--threads 1)"
    )
    parser.add_argument("--json", type=json_file, help="also write the numbers here")
    parser.add_argument("--docs", action="store_true", help="also write the table into docs/benchmarks.md")
    args = parser.parse_args()
    head_dims = [int(h) for h in args.head_dims.split(",")]
    known = ("current", "fp32", "padded", "contiguous", "hand_backward", "math", "written")
    args.forms = args.forms.split(",") if args.forms else list(COMPILED_FORMS if args.compile else DEFAULT_FORMS)
    if any(f not in known for f in args.forms):
        parser.error(f"--forms: each of {', '.join(known)}")
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu needs --threads 1 (CPU time sums all threads)")
    if args.docs and (args.compile or args.forms != list(DEFAULT_FORMS) or args.seq_lens):
        parser.error("--docs writes the eager table of the default forms: drop --compile, --forms and --seq-lens")
    seq_lens = [int(t) for t in args.seq_lens.split(",")] if args.seq_lens else [args.seq_len]
    if min(args.batch, args.heads, args.rounds, args.reps, *head_dims, *seq_lens) < 1:
        parser.error("sizes, --rounds and --reps must be at least 1")
    if args.seq_lens and any(args.tokens % t for t in seq_lens):
        parser.error("--tokens must be a multiple of every context in --seq-lens")
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [measure(args, h, t) for t in seq_lens for h in head_dims]
    load = os.getloadavg()
    sweep = "| batch x context " if args.seq_lens else ""
    rows = [
        f"{sweep}| head_dim | form | ms per forward+backward | form / current, median (range) "
        "| largest difference from current |",
        "|---" * (6 if args.seq_lens else 5) + "|",
    ]
    for res in results:
        for name, f in res["forms"].items():
            rows.append(
                (f"| {res['batch']} x {res['seq_len']} " if args.seq_lens else "")
                + f"| {res['head_dim']} | {name} | {f['median_ms']:.2f} | **{f['ratio']:.3f}** "
                f"({f['ratio_min']:.3f}-{f['ratio_max']:.3f}) | {f['max_diff']:.1e} |"
            )
    shape = f"{args.tokens} tokens per pass" if args.seq_lens else f"{args.batch} x {args.seq_len} tokens"
    head = (
        f"{shape}, {args.heads} heads, bf16, causal, {torch.get_num_threads()} threads"
        f"{', compiled' if args.compile else ''}, {args.clock} clock; "
        f"medians of {args.reps} passes per form and round, {args.rounds} rounds; load average after the run "
        f"{load[0]:.2f} (1 min), {load[1]:.2f} (5 min)"
    )
    print(head)
    print("\n".join(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"setup": head, "results": results}, indent=2) + "\n")
    if args.docs:
        from report import command_line, machine, update_section

        update_section(
            "attn_path", f"Command: `{command_line()}`  \nMachine: {machine()}; {head}.\n\n" + "\n".join(rows)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The paper's headline claim at small scale: tokens nGPT needs to reach GPT's final validation loss.

    python bench/convergence.py                        # default: ~30 min on a 2-core CPU
    python bench/convergence.py --context 256,1024     # the context trend (PAPER §3.1: 4x at 1k ... 20x at 8k)
    python bench/convergence.py --shape ngpt_0.5b --steps 20000 --ds ds_configs/zero1.json --data DIR  # GPUs

Both models train through the real trainer (launch/train.py, DeepSpeed engine) on the same
prepared data with the same shape, batch, context and token budget, each at a small LR
sweep. For each model the run with the lowest final validation loss is its best. The
speedup is the paper's measure (PAPER §3.1, Fig. 1): GPT's tokens to its final validation
loss divided by the tokens nGPT needs to reach that loss (evaluations interpolated
linearly).

The wall-time speedup is the token speedup divided by nGPT's step-time ratio. That ratio is
not taken from the runs' own step times: those come from separate, sequential runs, and on a
shared machine one loaded run flips the answer. It is measured in this process with the
steps of both engines interleaved (bench/step_time.py); the runs' times stay in the table
as information.

`--context` trains every listed context at the same tokens per step (micro-batch x context
equals that of the shape's own context and the DeepSpeed JSON's micro-batch) and the same
token budget, and reports one speedup per context.
Writes <out>/convergence.json, convergence.md and convergence.png (validation loss and
speedup vs tokens, a line per context).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import children  # noqa: E402
from report import count  # noqa: E402

DEFAULT_LRS = {"ngpt": "3e-3,6e-3,1.2e-2,2.4e-2", "gpt": "1e-3,3e-3,6e-3,1.2e-2"}
SHAPE_KEYS = ("n_layer", "n_embd", "n_head", "seq_len", "mlp_hidden", "vocab_size", "rope_base")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--shape",
        default="ngpt_tiny",
        help="preset whose model shape both models use (arch is set per run); default ngpt_tiny",
    )
    parser.add_argument("--steps", type=count(1), default=300, help="optimizer steps per run (same for both models)")
    parser.add_argument("--lrs-ngpt", default=DEFAULT_LRS["ngpt"], help="comma-separated nGPT learning rates")
    parser.add_argument("--lrs-gpt", default=DEFAULT_LRS["gpt"], help="comma-separated GPT learning rates")
    parser.add_argument("--gpt-warmup", type=count(0), default=None, help="GPT warmup steps (default: steps // 10)")
    parser.add_argument("--eval-interval", type=count(1), default=25, help="evaluate every N steps")
    parser.add_argument("--eval-batches", type=count(1), default=8, help="validation micro-batches per rank")
    parser.add_argument("--ds", default=str(REPO / "ds_configs/zero2.json"), help="DeepSpeed JSON (batch, precision)")
    parser.add_argument("--data", help="prepared dataset (default: the default corpus)")
    parser.add_argument("--ranks", type=count(1), default=1, help="ranks per run (through torchrun when more than 1)")
    parser.add_argument(
        "--context",
        help="comma-separated contexts, e.g. 256,1024 (default: the shape's). Each gets micro-batch = "
        "JSON micro-batch x shape context / context, so tokens per step and the token budget stay equal",
    )
    parser.add_argument(
        "--step-rounds", type=count(1), default=10, help="interleaved nGPT/GPT step pairs timed per context"
    )
    parser.add_argument("--step-warmup", type=count(0), default=2, help="untimed step pairs before those")
    parser.add_argument("--out", default=str(REPO / "bench/results/convergence"), help="output directory")
    parser.add_argument("--docs", action="store_true", help="also write the results into docs/benchmarks.md")
    args = parser.parse_args(argv)
    try:
        args.contexts = [int(c) for c in args.context.split(",")] if args.context else None
    except ValueError:
        parser.error(f"--context {args.context!r}: expected comma-separated integers, e.g. 256,1024")
    if args.contexts is not None and (min(args.contexts) < 1 or len(set(args.contexts)) != len(args.contexts)):
        parser.error(f"--context {args.context!r}: contexts must be positive and distinct")
    return args


def micro_batches(ref_context: int, ref_micro: int, contexts: list[int]) -> list[tuple[int, int]]:
    """(context, micro-batch) pairs with micro-batch x context = ref_micro x ref_context for every context."""
    tokens = ref_context * ref_micro
    bad = [c for c in contexts if tokens % c or c > tokens]
    if bad:
        raise ValueError(
            f"context {', '.join(map(str, bad))} does not divide the {tokens} tokens per micro-batch "
            f"({ref_micro} x {ref_context}); pick contexts that divide it"
        )
    return [(c, tokens // c) for c in contexts]


def write_ds_config(src: str, micro: int, path: Path) -> str:
    """The DeepSpeed JSON with the micro-batch of this context (train_batch_size dropped: it follows)."""
    from ngpt_ds.train.ds_config import load_ds_config

    ds = load_ds_config(src)
    ds["train_micro_batch_size_per_gpu"] = micro
    ds.pop("train_batch_size", None)
    path.write_text(json.dumps(ds, indent=2) + "\n")
    return str(path)


def run_key(config: Path, ds_path: str, data_dir: str, ranks: int) -> dict:
    """What decides a run's numbers: its YAML (shape, arch, LR, steps, evaluation), the DeepSpeed JSON's
    contents, the dataset (folder and meta.json) and the rank count."""
    from ngpt_ds.train.ds_config import load_ds_config

    data = Path(data_dir).resolve()
    meta = data / "meta.json"
    return {
        "config": config.read_text(),
        "deepspeed": load_ds_config(ds_path),
        "data": str(data),
        "data_meta": meta.read_text() if meta.is_file() else None,
        "ranks": ranks,
    }


def _read_key(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_one(args, arch: str, lr: float, shape: dict, batch: int, ds_path: str, data_dir: str, run_dir: Path) -> dict:
    train = {
        "max_steps": args.steps,
        "lr": lr,
        "eval_interval": args.eval_interval,
        "eval_batches": args.eval_batches,
        "log_interval": max(1, args.eval_interval),
        "checkpoint_interval": 0,
        "keep_checkpoints": 1,
    }
    if arch == "gpt" and args.gpt_warmup is not None:
        train["warmup_steps"] = args.gpt_warmup
    config = run_dir / "config.yaml"
    run_dir.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump({"model": {**shape, "arch": arch}, "train": train}))
    # One rank runs as a plain process (the trainer starts its own one-rank group): torchrun's launcher would be
    # one more interpreter importing torch per run.
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(args.ranks)]
    launcher += ["--master_port", str(29500 + os.getpid() % 1000)]
    cmd = [
        sys.executable,
        *(launcher if args.ranks > 1 else []),
        str(REPO / "launch/train.py"),
        "--config",
        str(config),
        "--deepspeed_config",
        ds_path,
        "--data",
        data_dir,
        "--out",
        str(run_dir / "out"),
        "--resume",
        "none",
        "--no-progress",
    ]
    key = run_key(config, ds_path, data_dir, args.ranks)
    key_file = run_dir / "out" / "bench_run_key.json"
    # A run finished earlier is reused only if it trained what this one would (delete the dir to rerun
    # anyway): its folder is named by arch, LR and context alone, so another --steps, --shape, --ds,
    # --data, --ranks or --eval-interval in the same --out would otherwise report the old run's numbers.
    if (run_dir / "out" / "summary.json").exists() and _read_key(key_file) == key:
        summary = json.loads((run_dir / "out" / "summary.json").read_text())
    else:
        children.remove_run_folder(run_dir / "out")  # refused while a trainer (a killed bench's) holds it
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        if args.ranks > 1 and "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.ranks))
        start = time.perf_counter()
        proc = children.run(cmd, env=env)  # stopped with this script
        if proc.returncode:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
            raise SystemExit(f"run {arch} lr {lr:g} failed ({proc.returncode}); command: {' '.join(cmd)}")
        summary = json.loads((run_dir / "out" / "summary.json").read_text())
        summary["wall_s"] = time.perf_counter() - start
        (run_dir / "out" / "summary.json").write_text(json.dumps(summary, indent=2))
        key_file.write_text(json.dumps(key, indent=2) + "\n")  # last: a run cut short has none
    metrics = [json.loads(line) for line in (run_dir / "out" / "metrics.jsonl").read_text().splitlines()]
    tokens_per_step = summary["tokens"] / summary["step"]
    evals = [(m["step"] * tokens_per_step, m["eval/loss"]) for m in metrics if "eval/loss" in m]
    step_times = [m["throughput/step_time_s"] for m in metrics if "throughput/step_time_s" in m]
    return {
        "arch": arch,
        "lr": lr,
        "context": shape["seq_len"],
        "batch": batch,
        "final_val_loss": summary["val_loss"],
        "tokens": summary["tokens"],
        "train_seconds": summary["seconds"],
        "mean_step_s": sum(step_times) / len(step_times),
        "eval_curve": evals,
    }


def tokens_to_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """First token count at which the validation curve reaches `target` (linear between evaluations)."""
    previous = (0.0, float("inf"))
    for tokens, loss in curve:
        if loss <= target:
            t0, l0 = previous
            if l0 == float("inf"):
                return tokens
            return t0 + (tokens - t0) * (l0 - target) / (l0 - loss)
        previous = (tokens, loss)
    return None


def speedup_curve(gpt_curve: list[tuple[float, float]], ngpt_curve: list[tuple[float, float]]) -> list:
    """[(GPT tokens, GPT tokens / nGPT tokens to the same loss)] at each GPT evaluation nGPT reaches."""
    points = []
    for tokens, loss in gpt_curve:
        reach = tokens_to_reach(ngpt_curve, loss)
        if reach:
            points.append((tokens, tokens / reach))
    return points


def summarize(runs: list[dict], step_times: dict[str, list[float]]) -> dict:
    """Best run per model, the token speedup, and the wall-time speedup from interleaved step times."""
    best = {
        arch: min((r for r in runs if r["arch"] == arch), key=lambda r: r["final_val_loss"]) for arch in ("ngpt", "gpt")
    }
    target = best["gpt"]["final_val_loss"]
    reach = tokens_to_reach(best["ngpt"]["eval_curve"], target)
    per_round = [n / g for n, g in zip(step_times["ngpt"], step_times["gpt"])]
    ratio = statistics.median(step_times["ngpt"]) / statistics.median(step_times["gpt"])
    result = {
        "context": best["gpt"]["context"],
        "batch": best["gpt"]["batch"],
        "target_val_loss": target,
        "best_lr": {a: best[a]["lr"] for a in best},
        "best_final_val_loss": {a: best[a]["final_val_loss"] for a in best},
        "ngpt_tokens_to_target": reach,
        "gpt_tokens": best["gpt"]["tokens"],
        "token_speedup": best["gpt"]["tokens"] / reach if reach else None,
        "step_time_ratio_ngpt_over_gpt": ratio,
        "step_time_ratio_range": [min(per_round), max(per_round)],
        "step_ms_interleaved": {a: 1e3 * statistics.median(t) for a, t in step_times.items()},
        "sequential_step_time_ratio": best["ngpt"]["mean_step_s"] / best["gpt"]["mean_step_s"],
        "speedup_curve": speedup_curve(best["gpt"]["eval_curve"], best["ngpt"]["eval_curve"]),
    }
    result["wall_time_speedup"] = result["token_speedup"] / ratio if reach else None
    return result


def name(arch: str) -> str:
    return "nGPT" if arch == "ngpt" else "GPT"


def markdown(contexts: list[dict]) -> str:
    """The speedup table (one row per context), then each context's runs."""
    lines = [
        "| context | batch | GPT target val loss | GPT tokens | nGPT tokens to it | token speedup | "
        "nGPT/GPT step, interleaved (range) | wall-time speedup |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in contexts:
        s = c["summary"]
        reach = s["ngpt_tokens_to_target"]
        lo, hi = s["step_time_ratio_range"]
        lines.append(
            f"| {s['context']} | {s['batch']} | {s['target_val_loss']:.4f} | {s['gpt_tokens'] / 1e6:.3f}M | "
            + (f"{reach / 1e6:.3f}M | **{s['token_speedup']:.2f}x** | " if reach else "not reached | - | ")
            + f"{s['step_time_ratio_ngpt_over_gpt']:.2f} ({lo:.2f}-{hi:.2f}) | "
            + (f"**{s['wall_time_speedup']:.2f}x** |" if reach else "- |")
        )
    lines += [
        "",
        "Step ratio: median nGPT step / median GPT step over interleaved steps of both engines in one process "
        "(range: the per-round ratios). Wall-time speedup = token speedup / that ratio. The runs' own mean "
        "steps below come from separate sequential runs and are information only.",
    ]
    for c in contexts:
        s = c["summary"]
        lines += [
            "",
            f"Context {s['context']}, batch {s['batch']}:",
            "",
            "| model | LR | final val loss | mean step (s), own run | train time (s) |",
            "|---|---|---|---|---|",
        ]
        for r in sorted(c["runs"], key=lambda r: (r["arch"], r["lr"])):
            mark = " **best**" if r["lr"] == s["best_lr"][r["arch"]] else ""
            lines.append(
                f"| {name(r['arch'])} | {r['lr']:g}{mark} | {r['final_val_loss']:.4f} | "
                f"{r['mean_step_s']:.3f} | {r['train_seconds']:.0f} |"
            )
        lines.append(
            f"\nInterleaved steps: nGPT {s['step_ms_interleaved']['ngpt']:.0f} ms, GPT "
            f"{s['step_ms_interleaved']['gpt']:.0f} ms; the best runs' own means give "
            f"{s['sequential_step_time_ratio']:.2f}."
        )
    return "\n".join(lines) + "\n"


def plot(path: Path, contexts: list[dict], title: str) -> None:
    """Left: the best runs' validation loss vs tokens; right: the token speedup vs GPT's tokens. A colour per context."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, speed_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, c in enumerate(contexts):
        s, color = c["summary"], f"C{i}"
        for r in c["runs"]:
            best = r["lr"] == s["best_lr"][r["arch"]]
            tokens, losses = zip(*r["eval_curve"])
            loss_ax.plot(
                [t / 1e6 for t in tokens],
                losses,
                color=color,
                linestyle="-" if r["arch"] == "ngpt" else "--",
                alpha=1.0 if best else 0.2,
                linewidth=2 if best else 1,
                label=f"ctx {s['context']} {name(r['arch'])} lr {r['lr']:g}" if best else None,
            )
        if s["speedup_curve"]:
            tokens, speed = zip(*s["speedup_curve"])
            speed_ax.plot([t / 1e6 for t in tokens], speed, color=color, marker="o", label=f"context {s['context']}")
    loss_ax.set_xlabel("tokens (millions)")
    loss_ax.set_ylabel("validation loss")
    loss_ax.set_title("validation loss (nGPT solid, GPT dashed; faint: other LRs)", fontsize=9)
    low, high = loss_ax.get_ylim()
    if low < 7.0 < 8.0 < high:  # the first evaluations sit far above the rest
        loss_ax.set_ylim(top=8.0)
    loss_ax.legend(fontsize=7)
    speed_ax.axhline(1.0, color="gray", linestyle=":", linewidth=1)
    speed_ax.set_xlabel("GPT tokens (millions)")
    speed_ax.set_ylabel("GPT tokens / nGPT tokens to the same loss")
    speed_ax.set_title("token speedup (best runs)", fontsize=9)
    speed_ax.legend(fontsize=7)
    fig.suptitle(f"nGPT vs GPT, {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def measure_step_times(args, shape: dict, batch: int) -> dict[str, list[float]]:
    """Interleaved nGPT and GPT engine steps at this shape and micro-batch, in this process."""
    import step_time

    from ngpt_ds import distributed

    if not step_time.torch.distributed.is_initialized():
        step_time.init_process_group(distributed.discover({}), timeout_s=600)
    return step_time.interleaved_step_times(shape, batch, args.ds, args.step_rounds, args.step_warmup, False)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from ngpt_ds.data.default_corpus import ensure_default_dataset
    from ngpt_ds.data.shards import load_dataset_meta
    from ngpt_ds.model.config import load_model_config
    from ngpt_ds.train.ds_config import load_ds_config

    shape_cfg = load_model_config(args.shape)
    shape = {k: getattr(shape_cfg, k) for k in SHAPE_KEYS}
    data_dir = args.data or str(ensure_default_dataset(vocab_size=shape["vocab_size"] or 4096))
    shape["vocab_size"] = shape["vocab_size"] or load_dataset_meta(data_dir).vocab_size
    ref_micro = load_ds_config(args.ds)["train_micro_batch_size_per_gpu"]
    try:
        plan = micro_batches(shape["seq_len"], ref_micro, args.contexts or [shape["seq_len"]])
    except ValueError as e:
        print(f"error: --context: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trained = []
    for context, batch in plan:
        ctx_shape = {**shape, "seq_len": context}
        ds_path = write_ds_config(args.ds, batch, out / f"ds_ctx{context}.json") if args.contexts else args.ds
        runs = []
        for arch, lrs in (("gpt", args.lrs_gpt), ("ngpt", args.lrs_ngpt)):
            for lr in (float(x) for x in lrs.split(",")):
                print(
                    f"context {context} (batch {batch}): training {arch} lr {lr:g} for {args.steps} steps", flush=True
                )
                run_dir = out / "runs" / (f"ctx{context}" if args.contexts else "") / f"{arch}_lr{lr:g}"
                runs.append(run_one(args, arch, lr, ctx_shape, batch, ds_path, data_dir, run_dir))
                print(f"  final validation loss {runs[-1]['final_val_loss']:.4f}", flush=True)
        trained.append((ctx_shape, batch, runs))
    # After all training: the process group this starts (and its environment) must not reach the runs.
    contexts = []
    for ctx_shape, batch, runs in trained:
        print(f"context {ctx_shape['seq_len']}: {args.step_rounds} interleaved nGPT/GPT step pairs ...", flush=True)
        times = measure_step_times(args, ctx_shape, batch)
        contexts.append({"summary": summarize(runs, times), "step_times": times, "runs": runs})
    ctx_desc = ", ".join(f"ctx {c} x batch {b}" for c, b in plan)
    meta = {
        "shape": args.shape,
        "steps": args.steps,
        "deepspeed": os.path.basename(args.ds),
        "ranks": args.ranks,
        "data": os.path.basename(data_dir.rstrip("/")),
        "tokens_per_step": plan[0][0] * plan[0][1] * args.ranks,
        "step_rounds": args.step_rounds,
        "step_threads": torch.get_num_threads(),
        "shape_desc": f"{shape['n_layer']} layers, d {shape['n_embd']}, {ctx_desc}, {args.steps} steps",
        **{k: v for k, v in shape.items() if k != "seq_len"},
    }
    (out / "convergence.json").write_text(json.dumps({"settings": meta, "contexts": contexts}, indent=2) + "\n")
    (out / "convergence.md").write_text(markdown(contexts))
    plot(out / "convergence.png", contexts, meta["shape_desc"])
    print((out / "convergence.md").read_text())
    if args.docs:
        from report import DOC, command_line, machine, update_section

        image = os.path.relpath(out / "convergence.png", DOC.parent)
        update_section(
            "convergence_context" if args.contexts and len(args.contexts) > 1 else "convergence",
            f"Command: `{command_line()}`  \nMachine: {machine()}  \n"
            f"Setting: {meta['shape_desc']} per run, {meta['tokens_per_step']} tokens per step, "
            f"{meta['deepspeed']} (bf16 working copy with fp32 master weights for both models), "
            f"{args.ranks} rank(s), data {meta['data']}; step ratio from {args.step_rounds} interleaved rounds "
            f"at {meta['step_threads']} thread(s).\n\n"
            f"{(out / 'convergence.md').read_text()}\n"
            f"![validation loss and token speedup vs tokens]({image})",
        )
    return 0


if __name__ == "__main__":
    from ngpt_ds.distributed import exit_process

    sys.exit(exit_process(main()))  # no interpreter teardown after a process group (see there)

"""Each benchmark runs on a tiny setting and writes well-formed output (no timing is asserted)."""

import json
import statistics
import sys

import pytest

from conftest import REPO, cpu_env, run, write_ds_config


def test_convergence_context_sweep_writes_table_json_and_plot(tmp_path, tiny_dataset):
    """--context 16,64 at 8 x 32 tokens per micro-batch: batches 16 and 4, equal tokens per step and budget."""
    shape = tmp_path / "shape.yaml"
    shape.write_text("model: {arch: ngpt, n_layer: 2, n_embd: 32, n_head: 2, seq_len: 32}\n")
    out = tmp_path / "conv"
    args = ["--shape", shape, "--steps", 4, "--eval-interval", 2, "--eval-batches", 2, "--lrs-ngpt", "2e-2"]
    args += ["--lrs-gpt", "3e-3", "--context", "16,64", "--step-rounds", 3, "--step-warmup", 1]
    run([sys.executable, REPO / "bench/convergence.py", *args, "--data", tiny_dataset, "--out", out], timeout=900)
    result = json.loads((out / "convergence.json").read_text())
    assert result["settings"]["tokens_per_step"] == 256
    contexts = result["contexts"]
    assert [c["summary"]["context"] for c in contexts] == [16, 64]
    assert [c["summary"]["batch"] for c in contexts] == [16, 4]
    for context, batch in ((16, 16), (64, 4)):
        assert json.loads((out / f"ds_ctx{context}.json").read_text())["train_micro_batch_size_per_gpu"] == batch
    for c in contexts:
        s, times = c["summary"], c["step_times"]
        assert sorted((r["arch"], r["context"] * r["batch"]) for r in c["runs"]) == [("gpt", 256), ("ngpt", 256)]
        for r in c["runs"]:
            assert [t for t, _ in r["eval_curve"]] == [2 * 256, 4 * 256]  # same token budget at every context
            assert r["final_val_loss"] == pytest.approx(r["eval_curve"][-1][1])
        # the step ratio comes from the interleaved steps, not from the runs' own step times
        assert len(times["ngpt"]) == len(times["gpt"]) == 3
        ratio = statistics.median(times["ngpt"]) / statistics.median(times["gpt"])
        assert s["step_time_ratio_ngpt_over_gpt"] == pytest.approx(ratio)
        per_round = [n / g for n, g in zip(times["ngpt"], times["gpt"])]
        assert s["step_time_ratio_range"] == pytest.approx([min(per_round), max(per_round)])
        by_arch = {r["arch"]: r for r in c["runs"]}
        sequential = by_arch["ngpt"]["mean_step_s"] / by_arch["gpt"]["mean_step_s"]
        assert s["sequential_step_time_ratio"] == pytest.approx(sequential)
        if s["token_speedup"] is not None:
            assert s["wall_time_speedup"] == pytest.approx(s["token_speedup"] / ratio)
        else:
            assert s["wall_time_speedup"] is None
    table = (out / "convergence.md").read_text()
    assert "| 16 | 16 |" in table and "| 64 | 4 |" in table and table.count("| nGPT | 0.02 **best** |") == 2
    assert (out / "convergence.png").read_bytes()[:4] == b"\x89PNG"


def test_convergence_speedup_arithmetic():
    """Synthetic curves: best LR per model, tokens to GPT's final loss, and the wall-time speedup."""
    sys.path.insert(0, str(REPO / "bench"))
    from convergence import summarize

    def r(arch, lr, curve):
        return {"arch": arch, "lr": lr, "context": 256, "batch": 8, "final_val_loss": curve[-1][1]}, curve

    runs = []
    for arch, lr, curve, step_s in (
        ("gpt", 1e-3, [(100.0, 6.0), (200.0, 5.0), (300.0, 4.5)], 0.2),
        ("gpt", 3e-3, [(100.0, 5.5), (200.0, 4.5), (300.0, 4.0)], 0.1),  # best GPT: target 4.0 at 300 tokens
        ("ngpt", 1e-2, [(100.0, 5.0), (200.0, 4.2), (300.0, 3.8)], 0.4),
        ("ngpt", 2e-2, [(100.0, 5.0), (200.0, 3.6), (300.0, 3.5)], 0.1),  # best nGPT: reaches 4.0 at ~171.4
    ):
        run_, curve = r(arch, lr, curve)
        runs.append({**run_, "eval_curve": curve, "tokens": 300.0, "mean_step_s": step_s})
    times = {"ngpt": [1.2, 1.0, 3.0], "gpt": [1.0, 1.0, 1.0]}  # medians 1.2 / 1.0; per round 1.2, 1.0, 3.0
    s = summarize(runs, times)
    assert s["best_lr"] == {"gpt": 3e-3, "ngpt": 2e-2} and s["target_val_loss"] == 4.0
    reach = 100.0 + 100.0 * (5.0 - 4.0) / (5.0 - 3.6)
    assert s["ngpt_tokens_to_target"] == pytest.approx(reach)
    assert s["token_speedup"] == pytest.approx(300.0 / reach)  # 1.75x
    assert s["step_time_ratio_ngpt_over_gpt"] == pytest.approx(1.2)
    assert s["step_time_ratio_range"] == pytest.approx([1.0, 3.0])
    assert s["wall_time_speedup"] == pytest.approx(300.0 / reach / 1.2)
    assert s["sequential_step_time_ratio"] == pytest.approx(1.0)  # 0.1 / 0.1: information only
    # GPT's losses 5.5, 4.5, 4.0 are reached by nGPT at its first eval (100), at ~164.3 and ~171.4 tokens
    assert s["speedup_curve"] == pytest.approx(
        [(100.0, 1.0), (200.0, 200.0 / (100.0 + 100.0 * 0.5 / 1.4)), (300.0, 300.0 / reach)]
    )


def test_convergence_context_batches():
    sys.path.insert(0, str(REPO / "bench"))
    from convergence import micro_batches

    assert micro_batches(256, 8, [256, 1024, 64]) == [(256, 8), (1024, 2), (64, 32)]
    with pytest.raises(ValueError, match="context 300 does not divide the 2048 tokens"):
        micro_batches(256, 8, [256, 300])
    with pytest.raises(ValueError, match="context 4096"):
        micro_batches(256, 8, [4096])


def test_convergence_bad_context_is_refused(tmp_path, tiny_dataset):
    bench = [sys.executable, REPO / "bench/convergence.py", "--data", tiny_dataset, "--out", tmp_path]
    proc = run([*bench, "--context", "256,300"], check=False, timeout=300)
    assert proc.returncode == 2 and "error: --context: context 300 does not divide" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run([*bench, "--context", "1k"], check=False, timeout=300)
    assert proc.returncode == 2 and "expected comma-separated integers" in proc.stderr


def test_tokens_to_reach_interpolates():
    sys.path.insert(0, str(REPO / "bench"))
    from convergence import tokens_to_reach

    curve = [(100.0, 5.0), (200.0, 4.0), (300.0, 3.0)]
    assert tokens_to_reach(curve, 3.5) == pytest.approx(250.0)
    assert tokens_to_reach(curve, 6.0) == 100.0
    assert tokens_to_reach(curve, 2.0) is None


def test_step_time_reports_a_ratio(tmp_path):
    out = tmp_path / "st.json"
    run(
        [sys.executable, REPO / "bench/step_time.py", "--shapes", "micro", "--rounds", 2, "--warmup", 1, "--json", out],
        timeout=600,
    )
    r = json.loads(out.read_text())["results"][0]
    assert r["shape"] == "micro" and r["ngpt_ms"] > 0 and r["gpt_ms"] > 0
    assert r["ratio"] == pytest.approx(r["ngpt_ms"] / r["gpt_ms"])


def test_renorm_cost_reports_share_and_memory(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("model: {arch: ngpt, n_layer: 2, n_embd: 32, n_head: 2, seq_len: 32, vocab_size: 64}\n")
    out = tmp_path / "rc.json"
    run([sys.executable, REPO / "bench/renorm_cost.py", "--config", config, "--steps", 3, "--json", out], timeout=600)
    r = json.loads(out.read_text())
    assert r["ranks"] == 2 and r["all_reduces_per_step"] == 1
    assert 0 < r["hook_ms"] < r["step_ms"]
    assert r["hook_share_of_step"] == pytest.approx(r["hook_ms"] / r["step_ms"])
    # one fp32 per norm vector: embed + head rows (2 x 64) + per layer qkv rows, W_o columns,
    # up_gate rows and W_2 columns (3*32 + 32 + 2*128 + 128)
    assert r["hook_buffer_bytes"] == 4 * (2 * 64 + 2 * (96 + 32 + 256 + 128))
    assert r["max_norm_deviation_after"] < 1e-5


def test_mfu_reports_a_ratio_against_the_measured_peak(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("model: {arch: ngpt, n_layer: 2, n_embd: 32, n_head: 2, seq_len: 32, vocab_size: 64}\n")
    out = tmp_path / "mfu.json"
    run([sys.executable, REPO / "bench/mfu.py", "--config", config, "--steps", 3, "--json", out], timeout=600)
    r = json.loads(out.read_text())
    assert r["flops_per_token"] == 6 * (2 * (4 * 32 * 32 + 3 * 32 * 128) + 64 * 32) + 12 * 2 * 32 * 32
    assert r["achieved_tflops"] == pytest.approx(r["flops_per_token"] * r["tokens_per_s"] / 1e12)
    # No upper bound: the peak and the steps are timed at different moments, so on a loaded machine (CI beside
    # other jobs) the ratio passed 1 (2.11 once); a timing is no test's threshold.
    assert r["mfu"] == pytest.approx(r["achieved_tflops"] / r["peak_tflops"]) and r["mfu"] > 0


def test_activation_memory_reports_each_mode(tmp_path):
    out = tmp_path / "am.json"
    run(
        [
            sys.executable,
            REPO / "bench/activation_memory.py",
            "--seq-len",
            512,
            "--layers",
            4,
            "--embd",
            32,
            "--heads",
            2,
            "--vocab",
            256,
            "--rounds",
            1,
            "--json",
            out,
        ],
        timeout=600,
    )
    r = json.loads(out.read_text())
    assert r["same_losses"] is True
    rows = {row["mode"]: row for row in r["results"]}
    assert list(rows) == ["none", "blocks", "every_k: 2"]
    # what the forward keeps for the backward: ~32 MiB of stored activations against ~5 MiB of block inputs
    assert rows["blocks"]["held_mib"] < 0.5 * rows["none"]["held_mib"]
    assert rows["blocks"]["held_mib"] < rows["every_k: 2"]["held_mib"] < rows["none"]["held_mib"]
    assert all(
        row["step_s"] > 0 and row["step_ratio"] == pytest.approx(row["step_s"] / rows["none"]["step_s"])
        for row in rows.values()
    )


#: A stand-in for the official nGPT model.py with its interface (GPTConfig, GPT with
#: transformer.wte / transformer.h[i].{query,key,value,att_c_proj,c_fc,mlp_c_proj} / lm_head,
#: configure_optimizers, forward(idx, targets) -> (logits, loss)) and its flash-attn import.
OFFICIAL_STAND_IN = """
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F
from flash_attn import flash_attn_func


@dataclass
class GPTConfig:
    block_size: int = 32
    vocab_size: int = 64
    n_layer: int = 1
    n_head: int = 2
    n_embd: int = 32
    base_scale: float = 0.02
    use_nGPT: int = 0
    dropout: float = 0.0
    bias: bool = False


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        d, self.n_head = config.n_embd, config.n_head
        for name in ("query", "key", "value", "att_c_proj"):
            setattr(self, name, nn.Linear(d, d, bias=False, dtype=torch.bfloat16))
        self.c_fc = nn.Linear(d, 8 * d, bias=False, dtype=torch.bfloat16)
        self.mlp_c_proj = nn.Linear(4 * d, d, bias=False, dtype=torch.bfloat16)

    def forward(self, h):
        B, T, C = h.shape
        q, k, v = (m(h).view(B, T, self.n_head, C // self.n_head) for m in (self.query, self.key, self.value))
        y = flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=True, window_size=(-1, -1))
        h = h + self.att_c_proj(y.reshape(B, T, C))
        u, v = self.c_fc(h).chunk(2, dim=-1)
        return h + self.mlp_c_proj(u * F.silu(v))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(wte=nn.Embedding(config.vocab_size, config.n_embd), h=nn.ModuleList(Block(config) for _ in range(config.n_layer)))
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def forward(self, idx, targets=None):
        x = self.transformer.wte(idx)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(x)
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        print("using fused AdamW: False")
        return torch.optim.AdamW(self.parameters(), lr=learning_rate, betas=betas, weight_decay=weight_decay)
"""


def test_peer_step_loads_the_official_code_with_sdpa_for_flash_attn(tmp_path):
    (tmp_path / "model.py").write_text(OFFICIAL_STAND_IN)
    sys.path.insert(0, str(REPO / "bench"))
    import torch
    from peer_step import flash_attn_stand_in, load_official, official_normalize_matrices

    official = load_official(str(tmp_path))
    assert "flash_attn" not in sys.modules  # the stand-in is only seen by the official module
    # flash-attn's layout [B, T, H, head_dim] and causal mask, against attention written out
    q, k, v = torch.randn(3, 2, 5, 2, 4, dtype=torch.float64).unbind(0)
    y = flash_attn_stand_in().flash_attn_func(q, k, v, softmax_scale=0.7, causal=True)
    scores = torch.einsum("bthd,bshd->bhts", q, k) * 0.7
    scores = scores.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    expected = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v)
    assert torch.allclose(y, expected, atol=1e-12)
    # train.py's normalize_matrices: rows of the tables and input projections, columns of the outputs
    model = official.GPT(official.GPTConfig())
    official_normalize_matrices(model)
    block = model.transformer.h[0]
    for weight, dim in ((model.lm_head.weight, 1), (block.c_fc.weight, 1), (block.mlp_c_proj.weight, 0)):
        norms = weight.float().norm(dim=dim)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-2 if weight.dtype == torch.bfloat16 else 1e-6)


def test_peer_step_interleaves_official_and_engine_steps(tmp_path):
    (tmp_path / "model.py").write_text(OFFICIAL_STAND_IN)
    out = tmp_path / "peer.json"
    shape = "n_layer=1,n_embd=32,n_head=2,seq_len=32,vocab_size=64,batch=2"
    command = [sys.executable, REPO / "bench/peer_step.py", "--shape", shape, "--rounds", 2, "--warmup", 1]
    env = cpu_env()
    del env["NGPT_DS_CPU_BF16"]  # as a user's shell: the official side's bf16 is kept on ngpt_ds's side anyway
    proc = run([*command, "--official", tmp_path, "--json", out], timeout=600, env=env)
    r = json.loads(out.read_text())
    assert r["precision"] == "bf16"
    assert proc.stdout.startswith("ngpt_ds in bf16, the official code in bf16 autocast\n")
    assert list(r["steps"]) == ["official nGPT", "official GPT", "ngpt_ds nGPT", "ngpt_ds GPT"]
    for s in r["steps"].values():
        assert s["tokens_per_s"] == pytest.approx(2 * 32 / (s["ms"] / 1e3))
    assert len(r["ratios"]) == 5
    assert all(0 < x["min"] <= x["median"] <= x["max"] for x in r["ratios"].values())
    missing = run([*command, "--official", tmp_path / "absent"], check=False)
    assert missing.returncode == 2 and "error: --official" in missing.stderr and "Traceback" not in missing.stderr
    # Fault: an fp32 JSON was timed against the official bf16 with the warning that both sides ran bf16.
    fp32 = write_ds_config(tmp_path / "fp32.json", stage=2, bf16=False, micro=2, accum=1)
    proc = run([*command[:-4], "--rounds", 1, "--warmup", 0, "--official", tmp_path, "--ds", fp32], env=env)
    assert proc.stdout.startswith("ngpt_ds in fp32, the official code in bf16 autocast\n")
    assert "both sides run torch's reference bf16 kernel" not in proc.stderr
    assert (
        f"warning: {fp32} trains ngpt_ds in fp32 while the official side runs bf16 autocast: the ratios compare "
        "two precisions, not two implementations"
    ) in proc.stderr


def test_mfu_on_the_process_clock_needs_one_thread(tmp_path):
    """--clock cpu: steps and the matmul peak timed by this process's CPU time, which other
    processes on the machine do not stretch; with two threads CPU time is no step time, so refused.
    Without NGPT_DS_CPU_BF16, the default bf16 JSON is timed in the precision the trainer trains it in."""
    from ngpt_ds.train.ds_config import cpu_has_native_bf16

    config = tmp_path / "tiny.yaml"
    config.write_text("model: {arch: gpt, n_layer: 1, n_embd: 32, n_head: 2, seq_len: 32, vocab_size: 64}\n")
    out = tmp_path / "mfu.json"
    command = [sys.executable, REPO / "bench/mfu.py", "--config", config, "--steps", 3, "--clock", "cpu"]
    env = cpu_env()
    del env["OMP_NUM_THREADS"]  # --threads alone sets the threads (the trainer's start otherwise picks all cores)
    del env["NGPT_DS_CPU_BF16"]  # as a user's shell
    proc = run([*command, "--threads", 1, "--json", out], timeout=600, env=env)
    r = json.loads(out.read_text())
    assert r["clock"] == "cpu" and r["threads"] == 1
    assert r["dtype"] == ("bfloat16" if cpu_has_native_bf16() else "float32")
    assert ("this CPU has no native bf16 matmul" in proc.stderr) != cpu_has_native_bf16()
    assert r["mfu"] == pytest.approx(r["achieved_tflops"] / r["peak_tflops"]) and r["mfu"] > 0  # no timing bound
    refused = run([*command, "--threads", 2], check=False)
    assert refused.returncode == 2 and "error: --clock cpu needs --threads 1" in refused.stderr


def test_compile_cost_arithmetic():
    """Synthetic rounds: startup extra = non-steady wall time beyond the eager run's; break-even = extra / saving."""
    sys.path.insert(0, str(REPO / "bench"))
    from compile_cost import summarize

    def r(wall, first, step):
        return {"wall_s": wall, "first_step_s": first, "step_s": step}

    rounds = [
        {"eager": r(100.0, 1.0, 0.5), "cold": r(200.0, 60.0, 0.4), "warm": r(130.0, 20.0, 0.45)},
        {"eager": r(110.0, 1.0, 0.6), "cold": r(220.0, 70.0, 0.5), "warm": r(140.0, 22.0, 0.55)},
    ]
    s = summarize(rounds, steps=60)
    # round 1: eager 100 - 60 x 0.5 = 70 s not in steady steps; cold 200 - 24 = 176; warm 130 - 27 = 103
    # round 2: eager 110 - 36 = 74; cold 220 - 30 = 190; warm 140 - 33 = 107
    assert s["cold"]["startup_extra_range"] == pytest.approx([106.0, 116.0])
    assert s["cold"]["startup_extra_s"] == pytest.approx(111.0)
    assert s["cold"]["break_even_steps"] == pytest.approx(111.0 / 0.1)
    assert s["cold"]["step_ratio_range"] == pytest.approx([0.8, 0.5 / 0.6])
    assert s["warm"]["startup_extra_s"] == pytest.approx(33.0)
    assert s["warm"]["break_even_steps"] == pytest.approx(33.0 / 0.05)
    assert s["warm"]["step_ms"] == pytest.approx(500.0) and s["warm"]["first_step_s"] == pytest.approx(21.0)
    assert s["eager"]["startup_extra_s"] == 0.0 and s["eager"]["break_even_steps"] is None
    slower = [{**x, "warm": r(140.0, 20.0, 0.7)} for x in rounds]  # compiled steps slower: never pays
    assert summarize(slower, steps=60)["warm"]["break_even_steps"] is None
    quick = [{**x, "warm": r(80.0, 20.0, 0.45)} for x in rounds]  # starts no slower than eager: pays at once
    assert summarize(quick, steps=60)["warm"]["break_even_steps"] == 0.0


def test_parallel_modes_reports_each_mode_with_the_same_losses(tmp_path, tiny_dataset):
    out = tmp_path / "modes.json"
    run(
        [sys.executable, REPO / "bench/parallel_modes.py", "--modes", "plain,pp2", "--steps", 3]
        + ["--data", tiny_dataset, "--json", out],
        timeout=600,
    )
    plain, pp2 = json.loads(out.read_text())
    assert (plain["mode"], plain["ranks"], pp2["mode"], pp2["ranks"]) == ("plain", 1, "pp2", 2)
    assert len(plain["losses"]) == len(pp2["losses"]) == 3
    assert pp2["losses"] == pytest.approx(plain["losses"], abs=1e-6)  # 2 pipeline stages, same training
    assert plain["step_s"] > 0 and pp2["peak_rss_mib"] > 0


def test_profile_step_lists_the_top_operators(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("model: {arch: ngpt, n_layer: 1, n_embd: 32, n_head: 2, seq_len: 32, vocab_size: 64}\n")
    # Every operator of the step is listed (a top-4 cut depends on timing: on a loaded machine
    # allocation and the all-reduce can outrank the matmuls of so tiny a model).
    proc = run([sys.executable, REPO / "bench/profile_step.py", "--config", config, "--steps", 1, "--top", 200])
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| `")]
    assert 4 <= len(rows) < 200 and any("`aten::mm`" in row for row in rows)
    shares = [float(row.rsplit("|", 2)[1].strip().rstrip("%")) for row in rows]
    # Each share is printed to 0.1 %, so the printed shares' sum may pass 100 by up to 0.05 a row (CI run 91: 100.1
    # over some 150 rows).
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100 + 0.05 * len(rows)
    assert "| all operators |" in proc.stdout


def test_profile_step_compiled_lists_inductor_kernels_by_name(tmp_path):
    """--compile: each fused C++ kernel is a row named after what it fused, and no kernel computes RoPE's
    cos (the table is one operator, ngpt_ds/model/layers.py)."""
    config = tmp_path / "tiny.yaml"
    config.write_text("model: {arch: ngpt, n_layer: 1, n_embd: 32, n_head: 2, seq_len: 32, vocab_size: 64}\n")
    cmd = [sys.executable, REPO / "bench/profile_step.py", "--config", config, "--steps", 1, "--top", 500, "--compile"]
    proc = run(cmd)
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| `")]
    kernels = [row for row in rows if row.startswith("| `graph_0_cpp_fused_")]
    assert kernels and any("silu" in row for row in kernels) and any("_log_softmax" in row for row in kernels)
    assert not any("_cos_" in row for row in kernels)
    assert any("rope_tables" in row for row in rows) and any("`aten::mm`" in row for row in rows)


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_qk_path_times_both_forms_which_compute_the_same(tmp_path, arch):
    config = tmp_path / "tiny.yaml"
    config.write_text(f"model: {{arch: {arch}, n_layer: 1, n_embd: 48, n_head: 2, seq_len: 16, vocab_size: 64}}\n")
    out = tmp_path / "qk.json"
    run([sys.executable, REPO / "bench/qk_path.py", "--config", config, "--batch", 2, "--rounds", 3, "--reps", 2,
         "--json", out])  # fmt: skip
    result = json.loads(out.read_text())
    # the previous form (per-half RoPE, indexing) and project_qkv give the same q, k, v and input gradient
    assert result["same_values"] is True
    assert result["input_grad_max_diff"] <= 1e-2 * result["input_grad_max_abs"]
    assert result["shape"] == {"batch": 2, "seq_len": 16, "n_head": 2, "head_dim": 24}
    rounds = result["ms_per_round"]
    assert [len(rounds["previous"]), len(rounds["current"])] == [3, 3]
    ratios = sorted(c / p for c, p in zip(rounds["current"], rounds["previous"]))
    assert result["current_over_previous"] == pytest.approx(ratios[1], rel=1e-9)
    assert (result["ratio_min"], result["ratio_max"]) == pytest.approx((ratios[0], ratios[2]), rel=1e-9)


def test_checkpoint_verify_hashes_every_file_and_projects_the_presets(tmp_path):
    """A 10 MiB synthetic checkpoint with 3 optimizer shards: the bytes verified are the files' sizes, in the
    2 : 12 split of bf16 ZeRO-1/2; the rates and the preset projection follow from the measured seconds."""
    sys.path.insert(0, str(REPO / "bench"))
    import argparse

    from checkpoint_verify import docs_section, layout

    from ngpt_ds.model import build_model, load_model_config
    from ngpt_ds.train import manifest

    out = tmp_path / "cv.json"
    command = [sys.executable, REPO / "bench/checkpoint_verify.py", "--size-gib", 10 / 1024, "--ranks", 3]
    command += ["--rounds", 2, "--cold", "--presets", "ngpt_tiny", "--world", "2,8", "--vocab", 64]
    run([*command, "--dir", tmp_path, "--json", out])
    r = json.loads(out.read_text())
    files = r["files"]
    shards = [f"bf16_zero_pp_rank_{i}_mp_rank_00_optim_states.pt" for i in range(3)]
    assert sorted(files) == sorted([*shards, "mp_rank_00_model_states.pt", "config.yaml"])
    assert r["bytes_hashed"] == sum(files.values()) == 10 * 2**20 + 2048
    assert files[shards[0]] == files[shards[1]] == files[shards[2]] == (10 * 2**20 * 12 // 14) // 3
    assert files["mp_rank_00_model_states.pt"] == 10 * 2**20 - 3 * files[shards[0]]
    assert list(tmp_path.iterdir()) == [out]  # the temporary checkpoint is gone
    for mode, rounds in (("manifest", 1), ("verify_warm", 2), ("one_thread", 2), ("verify_cold", 2)):
        t = r[mode]
        assert len(t["seconds"]) == len(t["cpu_seconds"]) == rounds and t["min_s"] <= t["median_s"] <= t["max_s"]
        assert t["gbps"] == pytest.approx(r["bytes_hashed"] / t["median_s"] / 1e9)
        assert t["gb_per_cpu_s"] == pytest.approx(r["bytes_hashed"] / t["median_cpu_s"] / 1e9)
    assert r["verify_threads"] == 5
    # The rank with the most bytes under digest_share at 3 ranks, and its verify timed on that share alone.
    share = r["largest_share"]
    shares = [manifest.digest_share(files, rank, 3) for rank in range(3)]
    loads = [sum(files[n] for n in part) for part in shares]
    assert (share["rank"], share["bytes"], share["ranks"]) == (loads.index(max(loads)), max(loads), 3)
    assert sum(loads) == r["bytes_hashed"] and len(r["verify_share"]["seconds"]) == 2
    assert r["verify_share"]["gbps"] == pytest.approx(share["bytes"] / r["verify_share"]["median_s"] / 1e9)
    (preset,) = r["presets"]
    n = sum(p.numel() for p in build_model(load_model_config("ngpt_tiny", {"vocab_size": 64})).parameters())
    assert (preset["preset"], preset["parameters"], preset["checkpoint_bytes"]) == ("ngpt_tiny", n, 14 * n)
    cpu_s = 14 * n / 1e9 / r["verify_warm"]["gb_per_cpu_s"]
    for world, row in zip((2, 8), preset["worlds"]):
        projected = layout(14 * n, world)
        most = max(sum(projected[f] for f in manifest.digest_share(projected, rank, world)) for rank in range(world))
        assert row["world"] == world and row["hashed_most_per_rank"] == most
        assert 14 * n / world <= most <= 14 * n / world + max(projected.values())  # the greedy split's bound
        assert (row["hashed_per_rank_before"], row["hashed_all_ranks"]) == (14 * n, 14 * n)
        assert row["hashed_all_ranks_before"] == world * 14 * n
        assert row["loaded_per_rank"] == 2 * n + 12 * n // world
        assert row["verify_s_slowest_rank"] == pytest.approx(
            row["hashed_most_per_rank"] / 1e9 / r["verify_warm"]["gbps"]
        )
        assert row["verify_s_per_rank_before"] == pytest.approx(14 * n / 1e9 / r["verify_warm"]["gbps"])
        assert row["cpu_s_all_ranks"] == pytest.approx(cpu_s)
        assert row["cpu_s_all_ranks_before"] == pytest.approx(world * cpu_s)
    args = argparse.Namespace(ranks=3, rounds=2, vocab=64)
    table = docs_section(args, r, (0.5, 0.7))
    assert f"| ngpt_tiny | {n / 1e6:.0f}M | {14 * n / 1e9:.1f} GB | 8 | " in table
    assert f"| {row['hashed_most_per_rank'] / 1e9:.2f} GB ({14 * n / 1e9:.1f} GB) |" in table
    assert "load average 0.50 before, 0.70 after" in table
    refused = run([*command[:2], "--presets", "no_such_preset", "--size-gib", 1 / 1024], check=False)
    assert refused.returncode == 2 and "error: --presets" in refused.stderr and "Traceback" not in refused.stderr

"""Each benchmark runs on a tiny setting and writes well-formed output (no timing is asserted)."""

import json
import sys

import pytest

from conftest import REPO, run


def test_convergence_writes_table_json_and_plot(tmp_path, tiny_dataset):
    shape = tmp_path / "shape.yaml"
    shape.write_text("model: {arch: ngpt, n_layer: 2, n_embd: 32, n_head: 2, seq_len: 32}\n")
    out = tmp_path / "conv"
    run(
        [
            sys.executable,
            REPO / "bench/convergence.py",
            "--shape",
            shape,
            "--steps",
            8,
            "--eval-interval",
            4,
            "--eval-batches",
            2,
            "--lrs-ngpt",
            "2e-2,4e-2",
            "--lrs-gpt",
            "3e-3",
            "--data",
            tiny_dataset,
            "--out",
            out,
        ],
        timeout=900,
    )
    result = json.loads((out / "convergence.json").read_text())
    assert len(result["runs"]) == 3
    for r in result["runs"]:
        assert [t for t, _ in r["eval_curve"]] == [4 * 8 * 32, 8 * 8 * 32]  # evals at steps 4 and 8
        assert r["final_val_loss"] == pytest.approx(r["eval_curve"][-1][1])
    summary = result["summary"]
    assert summary["target_val_loss"] == min(r["final_val_loss"] for r in result["runs"] if r["arch"] == "gpt")
    assert summary["best_lr"]["ngpt"] in (2e-2, 4e-2)
    assert "| nGPT |" in (out / "convergence.md").read_text()
    assert (out / "convergence.png").read_bytes()[:4] == b"\x89PNG"


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
    assert r["mfu"] == pytest.approx(r["achieved_tflops"] / r["peak_tflops"]) and 0 < r["mfu"] < 1


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

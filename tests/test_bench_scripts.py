"""bench/*.py as an operator runs them again: reused results, the docs file, a wrong --official, counts and
--json paths argparse refuses."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))


def fake_trainer(calls: list):
    """Stands in for subprocess.run in bench/convergence.py: a 'run' of N steps writes the summary.json
    and metrics.jsonl the trainer would, with 1000 tokens per step and a validation loss of 10 - N."""
    real_run = subprocess.run

    def run(cmd, **kwargs):
        if cmd[0] == "rm":
            return real_run(cmd, **kwargs)
        import yaml

        calls.append(cmd)
        steps = yaml.safe_load(open(cmd[cmd.index("--config") + 1]))["train"]["max_steps"]
        out = Path(cmd[cmd.index("--out") + 1])
        out.mkdir(parents=True)
        summary = {"status": "finished", "step": steps, "tokens": 1000 * steps, "val_loss": 10.0 - steps}
        (out / "summary.json").write_text(json.dumps({**summary, "seconds": 1.0}))
        records = [{"step": s, "throughput/step_time_s": 0.5, "eval/loss": 10.0 - s} for s in range(1, steps + 1)]
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return run


def test_convergence_reruns_a_run_trained_with_other_settings(tmp_path, monkeypatch):
    """Fault: bench/convergence.py reused any finished run in --out/runs/<arch>_lr<LR> (named by arch, LR and
    context alone): run again with another --steps (or --shape, --ds, --data, --ranks) in the same --out,
    it reported, and wrote into docs/benchmarks.md under the new settings, the earlier run's losses and
    tokens."""
    import convergence

    calls: list = []
    monkeypatch.setattr(convergence.children, "run", fake_trainer(calls))
    data = tmp_path / "data"
    data.mkdir()
    (data / "meta.json").write_text('{"vocab_size": 512}\n')
    shape = {"n_layer": 2, "n_embd": 32, "n_head": 2, "seq_len": 32, "vocab_size": 512}
    ds = str(REPO / "ds_configs/zero2.json")

    def one(steps: int, ranks: int = 1) -> dict:
        args = argparse.Namespace(steps=steps, gpt_warmup=None, eval_interval=1, eval_batches=1, ranks=ranks)
        return convergence.run_one(args, "ngpt", 3e-3, shape, 4, ds, str(data), tmp_path / "runs" / "ngpt_lr0.003")

    first = one(2)
    assert (first["tokens"], first["final_val_loss"], len(calls)) == (2000, 8.0, 1)
    again = one(2)  # the same settings: reused, not trained again
    assert (again["tokens"], again["final_val_loss"], len(calls)) == (2000, 8.0, 1)
    longer = one(3)
    assert (longer["tokens"], longer["final_val_loss"], len(calls)) == (3000, 7.0, 2)
    assert longer["eval_curve"] == [(1000.0, 9.0), (2000.0, 8.0), (3000.0, 7.0)]
    one(3, ranks=2)  # another rank count: trained again
    assert len(calls) == 3
    (tmp_path / "runs" / "ngpt_lr0.003" / "out" / "bench_run_key.json").unlink()  # a run cut short: no key
    one(3, ranks=2)
    assert len(calls) == 4


DOC_TEXT = "# Benchmarks\n\nintro " + "x" * 3000 + "\n<!-- mfu:start -->\nold\n<!-- mfu:end -->\ntail\n"


def update_docs_with_a_size_limit(doc, limit: int) -> subprocess.CompletedProcess:
    """bench/report.update_section on `doc` in a child whose files may not grow past `limit` bytes (RLIMIT_FSIZE,
    SIGXFSZ ignored: a write past it fails with EFBIG, as a full disk fails one with ENOSPC)."""
    code = (
        "import resource, signal, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import report; "
        "report.DOC = Path(sys.argv[2]); signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), resource.RLIM_INFINITY)); "
        "report.update_section('mfu', 'new numbers')"
    )
    args = [sys.executable, "-c", code, str(REPO / "bench"), str(doc), str(limit)]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def test_docs_file_stays_whole_when_the_disk_is_full(tmp_path):
    """Fault: bench/report.update_section (every bench script's --docs) rewrote docs/benchmarks.md in place:
    a write that failed for a full disk left it cut where the disk filled (here at 2048 bytes of 3066: the
    section and everything after it gone)."""
    doc = tmp_path / "benchmarks.md"
    doc.write_text(DOC_TEXT)
    proc = update_docs_with_a_size_limit(doc, 2048)
    assert "OSError: [Errno 27] File too large" in proc.stderr
    assert doc.read_text() == DOC_TEXT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["benchmarks.md"]
    assert update_docs_with_a_size_limit(doc, 1 << 20).returncode == 0
    assert doc.read_text() == DOC_TEXT.replace("\nold\n", "\nnew numbers\n")


def test_docs_markers_out_of_order_are_refused(tmp_path, monkeypatch):
    """Fault: with a section's end marker before its start marker (a hand edit), update_section kept the
    text from the end marker on after the new section: everything between the two markers twice."""
    import report

    doc = tmp_path / "benchmarks.md"
    text = "# B\n<!-- mfu:end -->\nmiddle\n<!-- mfu:start -->\nold\n"
    doc.write_text(text)
    monkeypatch.setattr(report, "DOC", doc)
    try:
        report.update_section("mfu", "new")
        raise AssertionError(f"no error; the file is now {doc.read_text()!r}")
    except SystemExit as stop:
        assert str(stop) == (
            f"error: {doc} has 1 '<!-- mfu:start -->' and 1 '<!-- mfu:end -->' markers (end before start); "
            "expected one of each, start first. Fix them by hand; nothing was written. The section:\n"
            "<!-- mfu:start -->\nnew\n<!-- mfu:end -->"
        )
    assert doc.read_text() == text
    doc.write_text("# B\n")  # no section yet: appended
    report.update_section("mfu", "new")
    assert doc.read_text() == "# B\n\n<!-- mfu:start -->\nnew\n<!-- mfu:end -->\n"


def test_peer_step_refuses_another_gpts_model_py(tmp_path):
    """Fault: bench/peer_step.py --official pointing at another GPT's checkout (nanoGPT's model.py has a GPT
    and a GPTConfig too) imported it, built the DeepSpeed engines, then died in the first step with
    "TypeError: GPTConfig.__init__() got an unexpected keyword argument 'base_scale'"; a model.py whose
    own imports failed gave that traceback."""
    from peer_step import load_official

    (tmp_path / "model.py").write_text(
        "from dataclasses import dataclass\n\n\n@dataclass\nclass GPTConfig:\n    n_layer: int = 12\n    bias: bool = True\n"
        "\n\nclass GPT:\n    pass\n"
    )
    try:
        load_official(str(tmp_path))
        raise AssertionError("nanoGPT's model.py was taken for NVIDIA/ngpt's")
    except ValueError as error:
        assert str(error) == (
            f"--official {tmp_path}: {tmp_path / 'model.py'} is not NVIDIA/ngpt's model.py (no GPT, or a "
            "GPTConfig without use_nGPT and base_scale); pass a checkout of NVIDIA/ngpt"
        )
    (tmp_path / "model.py").write_text("import apex\n\n# GPTConfig(use_nGPT=1, base_scale=0.03)\n")
    try:
        load_official(str(tmp_path / "model.py"))
        raise AssertionError("no error")
    except ValueError as error:
        assert str(error) == (
            f"--official {tmp_path / 'model.py'}: importing {tmp_path / 'model.py'} failed "
            "(ModuleNotFoundError: No module named 'apex')"
        )


def test_peer_step_runs_no_file_but_an_ngpt_model_py(tmp_path):
    """Fault: bench/peer_step.py --official imported whatever .py it was given, running its top level (a
    train.py trained), and only then refused it. A file not named model.py, or a model.py whose text does not
    name GPTConfig, use_nGPT and base_scale, is now refused unread by Python."""
    from peer_step import load_official

    marker = tmp_path / "ran"
    body = f"open({str(marker)!r}, 'w').write('top level ran')\n"
    (tmp_path / "train.py").write_text(body + "# GPTConfig use_nGPT base_scale\n")
    with pytest.raises(ValueError) as refused:
        load_official(str(tmp_path / "train.py"))
    assert str(refused.value) == (
        f"--official {tmp_path / 'train.py'}: {tmp_path / 'train.py'} is not a model.py (not imported); "
        "pass a checkout of NVIDIA/ngpt"
    )
    (tmp_path / "model.py").write_text(body + "class GPTConfig:\n    pass\n")  # another GPT's (no use_nGPT)
    with pytest.raises(ValueError, match="is not NVIDIA/ngpt's model.py"):
        load_official(str(tmp_path))
    assert not marker.exists()


@pytest.mark.parametrize("script", ["mfu", "peer_step"])
def test_cpu_only_benchmarks_refuse_a_gpu_machine(script, tmp_path, monkeypatch, capsys):
    """Fault: on a GPU machine bench/peer_step.py timed ngpt_ds's engines on the GPU against the official model
    on the CPU, and bench/mfu.py divided GPU step times (unsynchronized) by a CPU matmul peak. Both measure
    on the CPU only: with CUDA present and DS_ACCELERATOR not cpu they stop before building anything."""
    import importlib

    import engines
    import torch

    module = importlib.import_module(script)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)

    def no_engine(*a, **k):
        raise AssertionError("an engine was built on a GPU machine")

    monkeypatch.setattr(engines, "preset_engine", no_engine)
    monkeypatch.setattr(engines, "shape_engine", no_engine)
    monkeypatch.setattr(
        sys, "argv", [f"{script}.py", "--official", str(tmp_path)] if script == "peer_step" else [f"{script}.py"]
    )
    assert module.main() == 2
    err = capsys.readouterr().err
    assert f"error: bench/{script}.py measures on the CPU only (" in err
    assert f"DeepSpeed would put its engines on cuda here. Run it as DS_ACCELERATOR=cpu python bench/{script}.py" in err


COUNTS = [
    ("convergence", "--step-rounds", "0", 1),  # the worst: a median of nothing after every training run
    ("convergence", "--steps", "0", 1),
    ("convergence", "--step-warmup", "-1", 0),
    ("mfu", "--steps", "0", 1),
    ("peer_step", "--rounds", "0", 1),
    ("step_time", "--rounds", "0", 1),
    ("step_time", "--warmup", "-2", 0),
    ("renorm_cost", "--steps", "0", 1),
    ("activation_memory", "--rounds", "0", 1),
    ("sequence_parallel", "--rounds", "0", 1),
    ("profile_step", "--steps", "0", 1),
]


class Parsed(Exception):
    """Raised right after a parse that passed: the script's main goes no further (no engines, no runs)."""


def usage_error(monkeypatch, capsys, module: str, *argv: str) -> str:
    """The last line bench/<module>.py's argument parser prints for `argv`, which it must refuse (exit 2)."""
    import importlib

    real_parse = argparse.ArgumentParser.parse_args

    def parse_only(self, *args, **kwargs):
        real_parse(self, *args, **kwargs)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    script = importlib.import_module(module)
    extra = ["--official", "unused"] if module == "peer_step" else []
    monkeypatch.setattr(sys, "argv", [f"{module}.py", *argv, *extra])
    try:
        script.main()
        raise AssertionError(f"{module}: main returned")
    except Parsed:
        raise AssertionError(f"{module} {argv}: accepted") from None
    except SystemExit as stop:
        assert stop.code == 2, (module, argv, stop.code)
    return capsys.readouterr().err.splitlines()[-1]


def test_bench_counts_below_their_minimum_are_bad_usage(monkeypatch, capsys):
    """Fault: bench scripts took --rounds 0, --steps 0, --step-rounds 0 (to skip the step timing, say) and
    failed in their summary with "statistics.StatisticsError: no median for empty data" (min() of an empty
    list in peer_step) after their engines were built; bench/convergence.py --step-rounds 0 after every
    training run of its sweep. Now argparse refuses them, exit 2, naming the option."""
    for module, option, value, minimum in COUNTS:
        line = usage_error(monkeypatch, capsys, module, option, value)
        assert line.endswith(f"error: argument {option}: expected an integer >= {minimum}, got {value}"), line


JSON_SCRIPTS = (
    "activation_memory",
    "checkpoint_verify",
    "compile_cost",
    "mfu",
    "parallel_modes",
    "peer_step",
    "qk_path",
    "renorm_cost",
    "sequence_parallel",
    "step_time",
)


def test_bench_json_into_a_missing_folder_is_bad_usage(tmp_path, monkeypatch, capsys):
    """Fault: --json results/x.json with no results/ folder was found out after the whole benchmark:
    FileNotFoundError traceback at the write, and --docs (written after --json) was not written."""
    for module in JSON_SCRIPTS:
        target = tmp_path / "missing" / "x.json"
        line = usage_error(monkeypatch, capsys, module, "--json", str(target))
        assert line.endswith(
            f"error: argument --json: {target}: folder {target.parent} does not exist (create it first)"
        ), line


def test_parallel_modes_docs_name_the_vocabulary_of_the_data(tmp_path, monkeypatch):
    """Fault: bench/parallel_modes.py --data DIR --docs wrote "vocab 512" into docs/benchmarks.md whatever DIR's
    vocabulary (512 is only that of the dataset it makes without --data); the model takes the dataset's."""
    import parallel_modes
    import report

    def fake_child(cmd, **kwargs):
        mode = cmd[cmd.index("--measure") + 1]
        row = {"mode": mode, "ranks": 1, "step_s": 0.1, "peak_rss_mib": 100.0, "losses": [5.0]}
        return subprocess.CompletedProcess(cmd, 0, json.dumps(row) + "\n", "")

    sections = {}
    monkeypatch.setattr(parallel_modes.children, "run", fake_child)
    monkeypatch.setattr(report, "update_section", lambda name, body: sections.update({name: body}))
    monkeypatch.setattr(report, "machine", lambda: "a machine")
    (tmp_path / "meta.json").write_text('{"vocab_size": 32000}\n')
    assert parallel_modes.main(["--modes", "plain", "--data", str(tmp_path), "--docs"]) == 0
    setting = sections["parallel_modes"].split("Setting: ")[1].split("\n")[0]
    assert setting == (
        "nGPT 4 layers, d 64, 4 heads, context 128, vocab 32000, fp32, ZeRO 1, global batch 2 x 4 sequences, "
        "12 steps (median step time after the first two)."
    )


def test_bench_engines_time_the_precision_the_trainer_trains_in(monkeypatch, capsys):
    """Fault: the scripts that time engine steps (bench/engines.py) built them from the DeepSpeed JSON as written,
    while the trainer trains a bf16 JSON in fp32 on a CPU without native bf16 matmuls. On this AVX2 CPU
    bench/step_time.py timed torch's reference bf16 kernel (11.8 s a tiny step against 1.1 s in fp32, nGPT/GPT
    0.98 against 1.04), and bench/convergence.py divided its fp32 training runs by bf16 step times. Now they time
    what the trainer trains, with one warning; NGPT_DS_CPU_BF16=1 and a CPU with native bf16 keep bf16."""
    import engines

    from ngpt_ds.train.ds_config import precision_of

    monkeypatch.setattr(engines, "_WARNED", set())
    monkeypatch.delenv("NGPT_DS_CPU_BF16", raising=False)
    zero2 = str(REPO / "ds_configs/zero2.json")
    assert [precision_of(engines.load_bench_ds(zero2, native=False)) for _ in range(2)] == ["fp32", "fp32"]
    warned = capsys.readouterr().err
    assert warned.count("warning:") == 1, warned
    assert warned.startswith(f"warning: {zero2} enables bf16, but this CPU has no native bf16 matmul (AVX512 or AMX)")
    monkeypatch.setattr(engines, "_WARNED", set())
    monkeypatch.setenv("RANK", "1")  # the other ranks of a job fall back without a word
    assert precision_of(engines.load_bench_ds(zero2, native=False)) == "fp32"
    assert capsys.readouterr().err == ""
    assert precision_of(engines.load_bench_ds(zero2, native=True)) == "bf16"
    monkeypatch.setenv("NGPT_DS_CPU_BF16", "1")
    assert precision_of(engines.load_bench_ds(zero2, native=False)) == "bf16"
    assert capsys.readouterr().err == ""


def test_docs_written_by_two_scripts_at_once_keep_both_sections(tmp_path):
    """Fault: bench/report.update_section wrote every docs update through one temporary name,
    benchmarks.md.tmp, unlocked: two scripts writing their sections at once renamed each other's file away
    (FileNotFoundError) or wrote back a copy read before the other's update (its section lost). Two processes
    update two sections 150 times each: no error, and the file ends with both sections' last text."""
    doc = tmp_path / "docs" / "benchmarks.md"
    doc.parent.mkdir()
    doc.write_text("# Benchmarks\n")
    doc.chmod(0o664)
    writer = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import report\n"
        "report.DOC = Path(sys.argv[2]); name = sys.argv[3]; errors = []\n"
        "for i in range(150):\n"
        "    try:\n"
        "        report.update_section(name, f'{name} run {i}\\n' + 'x' * 50000)\n"
        "    except Exception as error:\n"
        "        errors.append(repr(error))\n"
        "print(len(errors), errors[:1])\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", writer, str(REPO / "bench"), str(doc), name], stdout=subprocess.PIPE, text=True
        )
        for name in ("mfu", "step_time")
    ]
    outputs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert outputs == ["0 []", "0 []"]
    text = doc.read_text()
    for name in ("mfu", "step_time"):
        assert text.count(f"<!-- {name}:start -->\n{name} run 149\n") == 1
    assert sorted(p.name for p in doc.parent.iterdir()) == ["benchmarks.md"]  # no temporary file left
    assert doc.stat().st_mode & 0o777 == 0o664  # the file's mode kept (a mkstemp file is 0600)


def test_compile_cost_from_json_keeps_the_machine_and_date_it_was_measured_on(tmp_path, monkeypatch):
    """Fault: bench/compile_cost.py --from-json --docs stamped the table with the machine it was rebuilt on and
    today's date. The --json now keeps machine() (the date in it) from the runs; an older one without it says
    so instead of inventing either."""
    import compile_cost
    import report

    def r(wall, first, step):
        return {"wall_s": wall, "first_step_s": first, "step_s": step}

    saved = {
        "command": "python bench/compile_cost.py --json x.json",
        "machine": "a GPU box; torch 9, deepspeed 9, Python 3.99; measured 2020-01-02",
        "config": "ngpt_tiny",
        "deepspeed": "zero2.json",
        "steps": 30,
        "threads": "1",
        "rounds": [{"eager": r(100.0, 1.0, 0.5), "cold": r(200.0, 60.0, 0.4), "warm": r(130.0, 20.0, 0.45)}],
    }
    sections: dict = {}
    monkeypatch.setattr(report, "update_section", lambda name, body: sections.update({name: body}))
    monkeypatch.setattr(report, "machine", lambda: "THIS machine; measured today")
    saved_file = tmp_path / "cc.json"
    saved_file.write_text(json.dumps(saved))
    assert compile_cost.main(["--from-json", str(saved_file), "--docs"]) == 0
    assert "\nMachine: a GPU box; torch 9, deepspeed 9, Python 3.99; measured 2020-01-02  \n" in sections["compile"]
    del saved["machine"]
    saved_file.write_text(json.dumps(saved))
    assert compile_cost.main(["--from-json", str(saved_file), "--docs"]) == 0
    assert "\nMachine: machine/date not recorded (a --json written before they were saved)  \n" in sections["compile"]
    assert "THIS machine" not in sections["compile"]


def test_parallel_modes_table_shows_the_largest_loss_difference_of_every_step():
    """docs/benchmarks.md said sp2's losses were 'within 9.5e-7' of plain's, a figure no script printed: the
    table now has the largest difference over all logged steps, not only the final loss."""
    import parallel_modes

    def row(mode, losses):
        return {"mode": mode, "ranks": 2, "step_s": 0.1, "peak_rss_mib": 400.0, "losses": losses}

    text = parallel_modes.table([row("plain", [6.5, 6.25, 6.0]), row("sp2", [6.5, 6.2500095, 6.0])])
    assert text.splitlines()[0].endswith("| largest loss difference from plain (every step) |")
    assert text.splitlines()[2].endswith("| 6.000000 | 0.0e+00 |")
    assert text.splitlines()[3].endswith("| 6.000000 | 9.5e-06 |")


def test_step_time_alternates_which_model_steps_first_in_a_round(monkeypatch):
    """Fault: bench/step_time.interleaved_step_times ran nGPT's step before GPT's in every round, so GPT's
    always followed nGPT's (its freed memory, its cache state); bench/peer_step.py rotates the order."""
    import step_time

    order: list[str] = []

    def fake_make_step(arch, *args, **kwargs):
        return lambda: order.append(arch) or 0.1

    monkeypatch.setattr(step_time, "make_step", fake_make_step)
    times = step_time.interleaved_step_times({}, 1, "ds.json", rounds=4, warmup=0, compiled=False)
    assert order == ["ngpt", "gpt", "gpt", "ngpt", "ngpt", "gpt", "gpt", "ngpt"]
    assert times == {"ngpt": [0.1] * 4, "gpt": [0.1] * 4}

"""bench/*.py and the setup scripts as an operator runs them again: reused results, the docs file, a wrong
--official, tests/run.sh's cached venv, setup.sh's options."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

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
    monkeypatch.setattr(convergence.subprocess, "run", fake_trainer(calls))
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


STAND_IN_PYTHON = """#!{python}
# tests/run.sh's and launch/setup.sh's PYTHON: answers their questions, installs and tests nothing.
import os, sys
args = sys.argv[1:]
if args == ["-"]:
    code = sys.stdin.read()
    sys.exit(1 if "EXTERNALLY-MANAGED" in code else 0)  # not externally managed; no requirements
if args[:1] == ["-c"]:
    print("0.16.0" if "LOWEST" in args[1] else "2.13.0" if "__version__.split" in args[1] else "stand-in")
    sys.exit(0)
if args[:2] == ["-m", "venv"]:
    os.makedirs(os.path.join(args[2], "bin"))
    open(os.path.join(args[2], "pyvenv.cfg"), "w").close()
    os.symlink(__file__, os.path.join(args[2], "bin", "python"))
sys.exit(0)  # -m pip / ruff / mypy / pytest
"""


def stand_in_env(tmp_path, **env) -> dict[str, str]:
    """The environment of a run.sh or setup.sh with a stand-in PYTHON (and dpkg, g++) in tmp_path/bin."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(STAND_IN_PYTHON.format(python=sys.executable))
    for tool in ("dpkg", "g++"):
        (bin_dir / tool).write_text("#!/bin/sh\nexit 0\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    path = f"{bin_dir}:{os.environ['PATH']}"
    return {"PATH": path, "HOME": str(tmp_path), "PYTHON": str(bin_dir / "python"), **env}


def run_sh(tmp_path, *argv, script="tests/run.sh", **env):
    """bash tests/run.sh with a stand-in PYTHON (and dpkg, g++): only its venv logic runs for real."""
    full_env = stand_in_env(tmp_path, **env)
    return subprocess.run(["bash", REPO / script, *argv], env=full_env, capture_output=True, text=True, timeout=60)


def test_run_sh_does_not_delete_a_venv_it_did_not_build(tmp_path):
    """Fault: tests/run.sh deleted whatever venv NGPT_DS_MIN_VENV named when it lacked run.sh's stamp
    (`rm -rf`, then a new venv there): pointed at one's own venv, e.g. NGPT_DS_MIN_VENV=$VIRTUAL_ENV, that
    venv was gone with all its packages."""
    own = tmp_path / "own-venv"
    (own / "lib").mkdir(parents=True)
    (own / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (own / "lib" / "my-package").write_text("mine\n")
    proc = run_sh(tmp_path, NGPT_DS_MIN_VENV=str(own))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == (
        f"error: NGPT_DS_MIN_VENV={own} is a venv tests/run.sh did not build (no .ngpt_ds_stamp); it "
        "would be deleted and rebuilt. Set NGPT_DS_MIN_VENV to a new path"
    )
    assert (own / "lib" / "my-package").read_text() == "mine\n"


def test_run_sh_rebuilds_its_own_venv_cut_short(tmp_path):
    """A venv run.sh began to build and was stopped in (Ctrl-C in pip: the stamp says 'building') is
    rebuilt, at NGPT_DS_MIN_VENV as at the default path; the finished one is reused."""
    for env in ({"NGPT_DS_MIN_VENV": str(tmp_path / "mine")}, {}):
        venv = tmp_path / "mine" if env else tmp_path / ".cache/ngpt_ds/venv-deepspeed-0.16.0-torch-2.13.0"
        venv.mkdir(parents=True)
        (venv / "pyvenv.cfg").write_text("")
        (venv / ".ngpt_ds_stamp").write_text("building\n")
        (venv / "half-installed").write_text("")
        proc = run_sh(tmp_path / ("a" if env else "b"), HOME=str(tmp_path), **env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"[tests] building {venv} (deepspeed==0.16.0, torch==2.13.0)" in proc.stdout
        assert (venv / ".ngpt_ds_stamp").read_text() == "deepspeed==0.16.0 torch==2.13.0 \n"
        assert not (venv / "half-installed").exists()


def _children_named(pid: int, name: str) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            comm, ppid = fields[0].split("(", 1)[1], int(fields[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and comm == name:
            found.append(int(stat.parent.name))
    return found


def test_run_sh_waits_for_another_run_using_the_same_venv(tmp_path):
    """Fault: two tests/run.sh (two clones on one machine) shared the cached lowest-DeepSpeed venv with no
    lock: one deleted and rebuilt it (a stamp it did not expect, a build cut short) while the other was
    building it or running its tests in it. run.sh now takes a lock beside the venv: exclusive to build,
    shared to test."""
    import fcntl
    import time

    venv = tmp_path / ".cache/ngpt_ds/venv-deepspeed-0.16.0-torch-2.13.0"
    venv.mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("")
    (venv / ".ngpt_ds_stamp").write_text("building\n")  # another run's build, in progress
    (venv / "half-installed").write_text("")
    with open(str(venv) + ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the other run holds it
        env = stand_in_env(tmp_path)
        proc = subprocess.Popen(["bash", REPO / "tests/run.sh"], env=env, stdout=subprocess.PIPE, text=True)
        try:
            while proc.poll() is None and not _children_named(proc.pid, "flock"):
                time.sleep(0.05)
            assert proc.poll() is None, "run.sh finished without waiting for the lock: " + proc.stdout.read()
            assert (venv / "half-installed").exists()  # untouched while the other run holds the lock
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert f"[tests] building {venv}" in out and not (venv / "half-installed").exists()


def test_run_sh_uses_a_ready_venv_while_another_run_tests_with_it(tmp_path):
    """Two runs on one machine share a built venv: the second uses it while the first holds its shared lock
    (running its tests), instead of waiting for that whole pass."""
    import fcntl

    venv = tmp_path / ".cache/ngpt_ds/venv-deepspeed-0.16.0-torch-2.13.0"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("")
    (venv / ".ngpt_ds_stamp").write_text("deepspeed==0.16.0 torch==2.13.0 \n")
    env = stand_in_env(tmp_path)
    os.symlink(Path(env["PYTHON"]), venv / "bin" / "python")
    with open(str(venv) + ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_SH)  # the other run, testing
        proc = subprocess.run(["bash", REPO / "tests/run.sh"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "building" not in proc.stdout and "[tests] DeepSpeed-sensitive tests on the lowest" in proc.stdout


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
    (tmp_path / "model.py").write_text("import apex\n")
    try:
        load_official(str(tmp_path / "model.py"))
        raise AssertionError("no error")
    except ValueError as error:
        assert str(error) == (
            f"--official {tmp_path / 'model.py'}: importing {tmp_path / 'model.py'} failed "
            "(ModuleNotFoundError: No module named 'apex')"
        )


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


def test_setup_sh_refuses_an_option_it_does_not_know(tmp_path):
    """Fault: launch/setup.sh looked at $1 for --test and --cluster only: a typo (--tests, --clusters, as in
    an image's RUN line) installed without OpenMPI, mpi4py and the test tools, exit 0, nothing said; a
    second option was ignored."""
    for argv, message in (
        (("--clusters",), "error: unknown option --clusters; use none, --cluster or --test (--help explains them)"),
        (("--cluster", "--test"), "error: one option at most (--test includes --cluster); got: --cluster --test"),
    ):
        proc = run_sh(tmp_path / argv[-1], *argv, script="launch/setup.sh")
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.startswith(message), proc.stderr
        assert proc.stdout == ""


def test_setup_sh_help_prints_its_header_and_installs_nothing(tmp_path):
    """Fault: `bash launch/setup.sh --help` was "error: unknown option --help", exit 2: the options, the torch
    build it installs and NGPT_DS_TORCH_INDEX_URL were explained only at the top of the file."""
    proc = run_sh(tmp_path / "help", "--help", script="launch/setup.sh")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Install ngpt_ds and everything it needs")
    for line in ("bash launch/setup.sh --test", "NGPT_DS_TORCH_INDEX_URL", "DS_BUILD_"):
        assert line in proc.stdout
    assert "[setup]" not in proc.stdout and "set -euo" not in proc.stdout


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
    monkeypatch.setattr(parallel_modes.subprocess, "run", fake_child)
    monkeypatch.setattr(report, "update_section", lambda name, body: sections.update({name: body}))
    monkeypatch.setattr(report, "machine", lambda: "a machine")
    (tmp_path / "meta.json").write_text('{"vocab_size": 32000}\n')
    assert parallel_modes.main(["--modes", "plain", "--data", str(tmp_path), "--docs"]) == 0
    setting = sections["parallel_modes"].split("Setting: ")[1].split("\n")[0]
    assert setting == (
        "nGPT 4 layers, d 64, 4 heads, context 128, vocab 32000, fp32, ZeRO 1, global batch 2 x 4 sequences, "
        "12 steps (median step time after the first two)."
    )


def setup_sh_with_fakes(tmp_path, torch_version: str, deepspeed_source: str, **env):
    """launch/setup.sh with a PYTHON that records its pip commands (installing nothing) and imports a fake
    torch (`torch_version`, CPU-only) and a fake deepspeed (`deepspeed_source`) before the real packages."""
    fakes = tmp_path / "fakes"
    (fakes / "torch").mkdir(parents=True)
    (fakes / "torch" / "__init__.py").write_text(f"__version__ = {torch_version!r}\nclass version:\n    cuda = None\n")
    (fakes / "deepspeed").mkdir()
    (fakes / "deepspeed" / "__init__.py").write_text(deepspeed_source)
    python = tmp_path / "python"
    python.write_text(
        "#!/bin/bash\n"
        f'if [ "$1 $2" = "-m pip" ]; then echo "$*" >> {tmp_path}/pip.log; exit 0; fi\n'
        f'PYTHONPATH={fakes}:{REPO} exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    full_env = stand_in_env(tmp_path, PYTHON=str(python), NGPT_DS_TORCH_INDEX_URL="https://torch.example/cpu", **env)
    proc = subprocess.run(["bash", REPO / "launch/setup.sh"], env=full_env, capture_output=True, text=True, timeout=60)
    pip_log = tmp_path / "pip.log"
    return proc, pip_log.read_text().splitlines() if pip_log.exists() else []


def test_setup_sh_replaces_a_torch_older_than_setup_py_allows_from_the_chosen_index(tmp_path):
    """Fault: setup.sh kept any installed torch, so with torch 2.1 it installed no torch, and pip then
    replaced 2.1 with setup.py's torch>=2.4 from the default index (the multi-GB CUDA build), ignoring
    NGPT_DS_TORCH_INDEX_URL; nothing said that torch was being replaced. Now a torch below 2.4 is named and
    replaced by 2.13.0 from NGPT_DS_TORCH_INDEX_URL, and a kept torch is named."""
    proc, pip = setup_sh_with_fakes(tmp_path / "old", "2.1.0+cpu", "__version__ = '0.19.8'\n")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[setup] the installed torch 2.1.0+cpu is older than 2.4, the lowest ngpt_ds supports\n" in proc.stdout
    assert pip[0] == "-m pip install -q --index-url https://torch.example/cpu torch==2.13.0"
    assert len(pip) == 2 and pip[1].startswith("-m pip install -q -e . deepspeed==0.19.8")

    proc, pip = setup_sh_with_fakes(tmp_path / "new", "2.4.1", "__version__ = '0.19.8'\n")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[setup] keeping the installed torch 2.4.1\n" in proc.stdout
    assert len(pip) == 1 and "torch==" not in pip[0]
    assert proc.stdout.splitlines()[-1] == "[setup] done: ngpt_ds 0.1.0, torch 2.4.1 (CPU-only build), deepspeed 0.19.8"


def test_setup_sh_last_line_is_the_installed_versions_when_deepspeed_warns_on_import(tmp_path):
    """Fault: DeepSpeed's import prints "[WARNING] ... Setting accelerator to CPU ..." on stdout, and setup.sh's
    last line held it: "[setup] done: [2026-12-01 16:50:47,189] [WARNING] ...", the versions on a line after."""
    noisy = "print('[2026-12-01 16:50:47,189] [WARNING] Setting accelerator to CPU.')\n__version__ = '0.19.8'\n"
    proc, _ = setup_sh_with_fakes(tmp_path / "noisy", "2.4.1", noisy)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "[setup] done: ngpt_ds 0.1.0, torch 2.4.1 (CPU-only build), deepspeed 0.19.8"


def test_setup_sh_fails_when_what_it_installed_does_not_import(tmp_path):
    """Fault: setup.sh's last line ran the import check inside `say "done: $(...)"`, whose failure `set -e`
    does not see: with a deepspeed that does not import it printed "[setup] done: " with nothing after it
    and exited 0, so an image build or CI went on with a broken install."""
    proc, _ = setup_sh_with_fakes(tmp_path, "2.13.0", "raise ImportError('deepspeed cannot find libcudart')\n")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "done:" not in proc.stdout
    assert proc.stderr.splitlines()[-1] == (
        f"error: installed, but torch, deepspeed and ngpt_ds do not import with {tmp_path}/python: "
        "ImportError: deepspeed cannot find libcudart"
    )


def test_setup_sh_without_root_or_sudo_names_the_missing_packages(tmp_path):
    """Fault: `setup.sh --cluster` as a user without sudo, with OpenMPI missing, printed
    "[setup] apt-get install ..." and then died of "sudo: command not found", exit 127. Now one line names
    the packages and how to install them, exit 2, before pip installs anything."""
    env = stand_in_env(tmp_path)
    bin_dir = tmp_path / "bin"
    (bin_dir / "dpkg").write_text("#!/bin/sh\nexit 1\n")  # nothing installed
    (bin_dir / "id").write_text('#!/bin/sh\n[ "$1" = -u ] && echo 1000\n')  # not root
    (bin_dir / "id").chmod(0o755)
    path = ":".join(p for p in env["PATH"].split(":") if not (Path(p) / "sudo").exists())
    proc = subprocess.run(
        ["bash", REPO / "launch/setup.sh", "--cluster"],
        env={**env, "PATH": path},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    missing = "openmpi-bin libopenmpi-dev pdsh openssh-client openssh-server"
    assert proc.stderr == (
        f"error: missing system packages {missing}, and neither root nor sudo to install them; "
        f"as root: apt-get install {missing}, then run this again\n"
    )


def test_setup_sh_with_ds_build_brings_the_build_tools_it_builds_without_isolation(tmp_path):
    """Fault: with DS_BUILD_* set, setup.sh installed with --no-build-isolation, so pip built ngpt_ds with
    the environment's own setuptools: in a Python 3.11 venv (setuptools 65, no wheel) the editable install
    failed with "invalid command 'bdist_wheel'" (3.12's venvs have no setuptools at all). It now installs
    setuptools>=64 and wheel first."""
    proc, pip = setup_sh_with_fakes(tmp_path, "2.13.0", "__version__ = '0.19.8'\n", DS_BUILD_FUSED_ADAM="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert pip[0] == "-m pip install -q setuptools>=64 wheel"
    assert pip[1].startswith("-m pip install -q --no-build-isolation -e . deepspeed==0.19.8")
    assert "[setup] installing setuptools>=64 and wheel for the builds without isolation\n" in proc.stdout

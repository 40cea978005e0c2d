"""launch/setup.sh's options, the torch it keeps or replaces, and its last line."""

import subprocess
import sys
from pathlib import Path

from conftest import REPO
from shell_stand_ins import run_sh, stand_in_env


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

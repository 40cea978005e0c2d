"""The DeepSpeed version range: declared once, installed as pinned, checked at startup.

Fault: setup.py allowed any deepspeed>=0.16, but the hypersphere hook reads internals that
0.16.0-0.19.2 lack (`_get_param_partition_rank`): ZeRO 3 died with an AttributeError after the
process group was up. tests/run.sh runs the DeepSpeed-sensitive tests on the lowest release too.
"""

import re
import sys
from importlib import metadata

import pytest
from packaging.specifiers import SpecifierSet

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import ds_compat
from ngpt_ds.train.ds_compat import ALLOW_UNTESTED_ENV, LOWEST, SUPPORTED, TESTED, check_deepspeed_version

from conftest import REPO, cpu_env, run, train_cmd, write_ds_config, write_yaml

FIX = "pip install 'deepspeed>=0.19.6,<0.20' (launch/setup.sh installs deepspeed==0.19.8)"


@pytest.mark.parametrize("version", ["0.19.6", "0.19.8", "0.19.8+cu124", "0.19.9.dev0", "0.19.10"])
def test_releases_in_the_tested_range_pass(version, monkeypatch):
    monkeypatch.delenv(ALLOW_UNTESTED_ENV, raising=False)
    assert check_deepspeed_version(version) == version


@pytest.mark.parametrize("version", ["0.16.0", "0.18.9", "0.19.2", "0.20.0", "0.20.0rc1", "1.0.0", "not-a-version"])
def test_releases_outside_the_range_are_refused_with_the_fix(version, monkeypatch):
    monkeypatch.delenv(ALLOW_UNTESTED_ENV, raising=False)
    with pytest.raises(NgptConfigError) as err:
        check_deepspeed_version(version)
    assert str(err.value) == (
        f"DeepSpeed {version} is installed, but ngpt_ds supports deepspeed>=0.19.6,<0.20: the hypersphere hook "
        f"reads DeepSpeed internals that differ between releases. Fix: {FIX}, or set "
        f"NGPT_DS_ALLOW_UNTESTED_DEEPSPEED=1 to try it anyway"
    )


def test_the_override_turns_the_error_into_a_warning(monkeypatch):
    monkeypatch.setenv(ALLOW_UNTESTED_ENV, "1")
    said = []
    assert check_deepspeed_version("0.20.1", warn=said.append) == "0.20.1"
    assert said == [
        "warning: DeepSpeed 0.20.1 is installed, but ngpt_ds supports deepspeed>=0.19.6,<0.20: the "
        "hypersphere hook reads DeepSpeed internals that differ between releases; running anyway "
        "because NGPT_DS_ALLOW_UNTESTED_DEEPSPEED=1"
    ]


def test_a_missing_deepspeed_is_named(monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(ds_compat.metadata, "version", not_installed)
    with pytest.raises(
        NgptConfigError,
        match=re.escape(f"DeepSpeed is not installed; ngpt_ds supports deepspeed>=0.19.6,<0.20. Fix: {FIX}"),
    ):
        check_deepspeed_version()


def test_one_range_in_setup_py_setup_sh_and_the_check():
    assert SUPPORTED == f">={LOWEST},<0.20"
    assert TESTED in SpecifierSet(SUPPORTED)
    assert f'"deepspeed{SUPPORTED}"' in (REPO / "setup.py").read_text()
    assert re.findall(r"deepspeed[<>=]", (REPO / "setup.py").read_text()) == ["deepspeed>"]
    assert f"DEEPSPEED_VERSION={TESTED}\n" in (REPO / "launch/setup.sh").read_text()
    # The environment the tests run in is one the check accepts.
    assert check_deepspeed_version() == metadata.version("deepspeed")


def test_an_old_deepspeed_stops_the_trainer_before_any_process_group(tmp_path, tiny_dataset):
    """launch/train.py with DeepSpeed's version reported as 0.16.0: exit 2 and the fix, nothing started."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "sitecustomize.py").write_text(
        "import importlib.metadata as m\n"
        "_version = m.version\n"
        "m.version = lambda name: '0.16.0' if name == 'deepspeed' else _version(name)\n"
    )
    config = write_yaml(
        tmp_path / "tiny.yaml",
        {"arch": "ngpt", "n_layer": 1, "n_embd": 16, "n_head": 1, "seq_len": 16},
        {"max_steps": 1, "eval_interval": 0},
    )
    ds = write_ds_config(tmp_path / "ds.json", stage=0, bf16=False, micro=2, accum=1)
    out = tmp_path / "out"
    env = cpu_env(PYTHONPATH=f"{fake}:{REPO}")
    proc = run([sys.executable, *train_cmd(config, ds, tiny_dataset, out)], env=env, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: DeepSpeed 0.16.0 is installed, but ngpt_ds supports deepspeed>=0.19.6,<0.20: the hypersphere "
        f"hook reads DeepSpeed internals that differ between releases. Fix: {FIX}, or set "
        f"NGPT_DS_ALLOW_UNTESTED_DEEPSPEED=1 to try it anyway"
    )
    assert "Traceback" not in proc.stderr
    assert not out.exists()

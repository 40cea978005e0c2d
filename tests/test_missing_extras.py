"""Commands that need an optional dependency name the pip extra when it is missing.

Faults: without lm-eval, `ngpt-lm-eval --help` was a ModuleNotFoundError traceback (exit 1); without
transformers, `export.py --format hf` read the whole checkpoint and then died in the same traceback.
Each is now one line naming `pip install 'ngpt_ds[EXTRA]'`, exit 2, before anything is read. The
packages are installed here, so the child interpreter refuses to import them, as Python does for a
package that is not installed.
"""

import subprocess
import sys

from conftest import REPO, cpu_env

WITHOUT = """
import runpy, sys
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, NotInstalled())
sys.argv = {argv!r}
runpy.run_path({script!r}, run_name="__main__")
"""


def run_without(blocked: str, script: str, *args: str) -> subprocess.CompletedProcess:
    code = WITHOUT.format(blocked=blocked, argv=[script, *args], script=str(REPO / script))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cpu_env(), timeout=300)


def test_lm_eval_command_without_lm_eval_names_the_eval_extra():
    proc = run_without("lm_eval", "ngpt_ds/infer/lm_eval_cli.py", "--help")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "ngpt-lm-eval needs lm_eval, which is not installed: pip install 'ngpt_ds[eval]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_hf_export_without_transformers_names_the_hf_extra_before_reading_the_checkpoint(tmp_path):
    proc = run_without(
        "transformers", "launch/export.py", str(tmp_path / "run"), "--out", str(tmp_path / "hf"), "--format", "hf"
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--format hf needs transformers, which is not installed: pip install 'ngpt_ds[hf]'" in proc.stderr
    assert not (tmp_path / "hf").exists()

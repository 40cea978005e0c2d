#!/usr/bin/env bash
# Set up everything the tests need (system packages and Python packages), lint, then run them.
#   bash tests/run.sh [pytest args...]
#
# With no arguments (the whole suite, as CI runs it) the tests that depend on DeepSpeed's
# internals (the hypersphere hook and its guards, checkpoint resume, the precision x ZeRO step
# sizes, the gradient norm against plain torch's) then run a second time on the lowest DeepSpeed
# release setup.py allows
# (ngpt_ds/train/ds_compat.py: LOWEST), in a venv of its own with the same torch, built once and reused:
#   NGPT_DS_MIN_VENV    where it lives (default: $NGPT_DS_CACHE/venv-deepspeed-<LOWEST>-torch-<torch>,
#                       NGPT_DS_CACHE defaulting to ~/.cache/ngpt_ds)
#   NGPT_DS_MIN_DEEPSPEED_TESTS=0   skip that second run
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
# The tests start many Python processes; each would compile ngpt_ds's sources again
# (0.3 s of CPU) where the environment forbids writing bytecode.
unset PYTHONDONTWRITEBYTECODE
bash launch/setup.sh --test

# Lint and type-check first (settings in pyproject.toml); a finding fails the run before the slow tests start.
"$PYTHON" -m ruff check .
"$PYTHON" -m ruff format --check .
"$PYTHON" -m mypy

if [ $# -gt 0 ] || [ "${NGPT_DS_MIN_DEEPSPEED_TESTS:-1}" = 0 ]; then
  exec "$PYTHON" -m pytest -q tests "$@"
fi

# Two test files at a time (pytest-xdist, one file per worker so that each file's fixtures are built
# once): most tests are multi-process jobs that leave a core idle while a process starts. The slowest
# files start first (tests/conftest.py SLOWEST_FILES_FIRST); NGPT_DS_TEST_WORKERS sets the number.
status=0
"$PYTHON" -m pytest -q -n "${NGPT_DS_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder \
  --durations=25 tests || status=$?  # the slowest tests, to keep CI in its budget

# The lowest supported DeepSpeed: a plain venv (not --system-site-packages, which would share the
# main environment's DeepSpeed) with the main environment's torch version and this package's other
# requirements. The package itself comes from this checkout (PYTHONPATH), so one venv serves every clone.
MIN_TESTS=(tests/test_hypersphere.py tests/test_sphere_guards.py tests/test_precision.py
           tests/test_gradient_norm_parallel.py tests/test_pipeline_grad_norm.py
           "tests/test_trainer.py::test_resumed_run_reproduces_the_uninterrupted_losses_exactly")
lowest=$("$PYTHON" -c 'from ngpt_ds.train.ds_compat import LOWEST; print(LOWEST)')
torch_version=$("$PYTHON" -c 'import torch; print(torch.__version__.split("+")[0])')
venv="${NGPT_DS_MIN_VENV:-${NGPT_DS_CACHE:-$HOME/.cache/ngpt_ds}/venv-deepspeed-$lowest-torch-$torch_version}"
mapfile -t requirements < <("$PYTHON" - <<'PY'
import re
from importlib.metadata import requires
for req in requires("ngpt_ds") or []:
    name = re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower()
    if "extra ==" not in req and name not in ("deepspeed", "torch"):
        print(req)
PY
)
stamp="deepspeed==$lowest torch==$torch_version ${requirements[*]}"
started=$SECONDS
# Another tests/run.sh (another clone) may build or use the same venv: use it under a shared lock, and
# build under an exclusive one, so that no run deletes the venv another is building or testing with.
mkdir -p "$(dirname "$venv")"
locking=0
if command -v flock > /dev/null; then
  exec 9> "$venv.lock"
  locking=1
  flock -s 9
fi
venv_ready() {
  [ "$(cat "$venv/.ngpt_ds_stamp" 2>/dev/null)" = "$stamp" ] && "$venv/bin/python" -c 'import deepspeed, torch' 2>/dev/null
}
if ! venv_ready && [ "$locking" = 1 ]; then
  flock 9  # exclusive (after the others' uses end); another run may have built it meanwhile
fi
if ! venv_ready; then
  echo "[tests] building $venv (deepspeed==$lowest, torch==$torch_version)"
  if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ]; then
    echo "error: $venv exists and is not a venv; set NGPT_DS_MIN_VENV to another path" >&2
    exit 2
  fi
  # Only a venv this script built (its .ngpt_ds_stamp is written first) is deleted and rebuilt: an
  # NGPT_DS_MIN_VENV naming one's own venv (the active one) would be deleted with its packages.
  if [ -n "${NGPT_DS_MIN_VENV:-}" ] && [ -e "$venv" ] && [ ! -f "$venv/.ngpt_ds_stamp" ]; then
    echo "error: NGPT_DS_MIN_VENV=$venv is a venv tests/run.sh did not build (no .ngpt_ds_stamp); it" \
      "would be deleted and rebuilt. Set NGPT_DS_MIN_VENV to a new path" >&2
    exit 2
  fi
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  echo "building" > "$venv/.ngpt_ds_stamp"  # ours from now on: a build cut short is rebuilt next time
  "$venv/bin/python" -m pip install -q "torch==$torch_version"
  "$venv/bin/python" -m pip install -q "deepspeed==$lowest" "pytest>=8" "${requirements[@]}"
  echo "$stamp" > "$venv/.ngpt_ds_stamp"
fi
[ "$locking" = 1 ] && flock -s 9
echo "[tests] DeepSpeed-sensitive tests on the lowest supported release, deepspeed $lowest ($venv)"
min_status=0
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$venv/bin/python" -m pytest -q "${MIN_TESTS[@]}" || min_status=$?
echo "[tests] lowest-DeepSpeed run: exit $min_status, $((SECONDS - started)) s including the venv"
[ "$status" -ne 0 ] && exit "$status"
exit "$min_status"

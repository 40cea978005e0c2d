#!/usr/bin/env bash
# Install ngpt_ds and everything it needs into the active Python environment.
#
#   bash launch/setup.sh          torch (when none is installed), DeepSpeed, this package
#   bash launch/setup.sh --cluster  also what multi-node launches need: OpenMPI + mpi4py, pdsh and
#                                   openssh (system packages, needs root or sudo); the Dockerfile uses it
#   bash launch/setup.sh --test     --cluster, plus Slurm + munge, headless Chromium and the test tools
#
# torch: an installed torch (2.4 or later, setup.py's range) is kept. Otherwise torch 2.13.0 is installed from your pip index, which
# decides the build: from PyPI on Linux x86_64 that is the CUDA build (several GB of nvidia-* wheels;
# it also runs on a CPU-only machine). For the much smaller CPU-only build set
#   NGPT_DS_TORCH_INDEX_URL=<PyTorch's CPU wheel index, listed on PyTorch's "Get Started" page>
# and it is passed to pip as --index-url for torch alone. The last line says which build is installed.
# DS_BUILD_* variables (e.g. DS_BUILD_FUSED_ADAM=1) prebuild those DeepSpeed ops at install time
# (pip then builds without isolation, against the installed torch).
# Works on a fresh Debian/Ubuntu machine with Python >= 3.10, in a venv, conda env or pyenv.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
WITH_TESTS=0
WITH_CLUSTER=0
if [ $# -gt 1 ]; then
  echo "error: one option at most (--test includes --cluster); got: $*" >&2
  exit 2
fi
case "${1:-}" in
  "" | --cluster | --test) ;;
  -h | --help)  # the header above, without its comment marks
    sed -n '2,/^set -euo pipefail$/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0 ;;
  *)  # a typo (--tests, --clusters) installed without what it asked for, and said nothing
    echo "error: unknown option $1; use none, --cluster or --test (--help explains them)" >&2
    exit 2 ;;
esac
[ "${1:-}" = "--test" ] && WITH_TESTS=1 && WITH_CLUSTER=1
[ "${1:-}" = "--cluster" ] && WITH_CLUSTER=1

say() { printf '[setup] %s\n' "$*"; }

if "$PYTHON" - <<'PY'
import sys, sysconfig, pathlib
managed = pathlib.Path(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED").exists()
import os
sys.exit(0 if managed and sys.prefix == sys.base_prefix and os.environ.get("PIP_BREAK_SYSTEM_PACKAGES") != "1" else 1)
PY
then
  echo "error: $PYTHON is the system's externally managed Python; pip may not install into it." >&2
  echo "fix: python3 -m venv .venv && . .venv/bin/activate, then run this script again" >&2
  echo "     (Debian/Ubuntu: sudo apt install python3-venv first, if python3 -m venv says ensurepip is missing)." >&2
  exit 2
fi

apt_install() {  # apt_install PKG...: install the Debian packages that are missing
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  if ! command -v apt-get >/dev/null; then
    echo "error: missing system packages ${missing[*]} and no apt-get; install them with your package manager" >&2
    exit 2
  fi
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then  # was: "sudo: command not found", exit 127
      echo "error: missing system packages ${missing[*]}, and neither root nor sudo to install them;" \
        "as root: apt-get install ${missing[*]}, then run this again" >&2
      exit 2
    fi
    sudo="sudo"
  fi
  say "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q >/dev/null
  $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# g++ and make: DeepSpeed JIT-compiles its CPU ops (e.g. the CPU Adam of ZeRO-Offload).
command -v g++ >/dev/null || apt_install g++ make
if [ "$WITH_CLUSTER" = 1 ]; then
  # OpenMPI (mpirun, and the headers mpi4py builds against); pdsh + ssh for DeepSpeed's launcher.
  apt_install openmpi-bin libopenmpi-dev pdsh openssh-client openssh-server
fi
if [ "$WITH_TESTS" = 1 ]; then
  apt_install slurm-wlm munge chromium  # chromium: headless, for tests/test_tensorboard_browser.py
fi

# An installed torch older than setup.py's torch>=2.4 is not kept: pip would replace it while installing
# ngpt_ds below, from the default index (the multi-GB CUDA build), whatever NGPT_DS_TORCH_INDEX_URL says.
torch_version="$("$PYTHON" -c "import torch; print(torch.__version__)" 2>/dev/null || true)"
if [ -n "$torch_version" ] && "$PYTHON" -c "import re, sys; m = re.match(r'(\d+)\.(\d+)', sys.argv[1]); sys.exit(0 if m and (int(m[1]), int(m[2])) >= (2, 4) else 1)" "$torch_version"; then
  say "keeping the installed torch $torch_version"
else
  if [ -n "$torch_version" ]; then say "the installed torch $torch_version is older than 2.4, the lowest ngpt_ds supports"; fi
  if [ -n "${NGPT_DS_TORCH_INDEX_URL:-}" ]; then
    say "installing torch 2.13.0 from NGPT_DS_TORCH_INDEX_URL"
    "$PYTHON" -m pip install -q --index-url "$NGPT_DS_TORCH_INDEX_URL" torch==2.13.0
  else
    say "installing torch 2.13.0, the build your pip index serves (PyPI on Linux: the CUDA build, several GB;"
    say "  for the CPU-only build set NGPT_DS_TORCH_INDEX_URL to PyTorch's CPU wheel index)"
    "$PYTHON" -m pip install -q torch==2.13.0
  fi
fi
extras=""
[ "$WITH_CLUSTER" = 1 ] && extras="[mpi]"
[ "$WITH_TESTS" = 1 ] && extras="[test]"
pip_flags=()
if env | grep -q '^DS_BUILD_'; then
  say "prebuilding DeepSpeed ops: $(env | grep '^DS_BUILD_' | tr '\n' ' ')"
  pip_flags+=(--no-build-isolation)
  # Without build isolation pip builds with this environment's setuptools and wheel, which a venv has too
  # old for an editable install (Python 3.11's: setuptools 65, no wheel: "invalid command 'bdist_wheel'")
  # or not at all (3.12's).
  say "installing setuptools>=64 and wheel for the builds without isolation"
  "$PYTHON" -m pip install -q "setuptools>=64" wheel
fi
# DeepSpeed: the release the hypersphere hook's internals were read against (setup.py allows the
# tested range, ngpt_ds/train/ds_compat.py checks it at startup).
DEEPSPEED_VERSION=0.19.8
say "installing ngpt_ds$extras, deepspeed==$DEEPSPEED_VERSION and the other dependencies"
"$PYTHON" -m pip install -q ${pip_flags[@]+"${pip_flags[@]}"} -e ".$extras" "deepspeed==$DEEPSPEED_VERSION"
# Norm's C++ loops for eager CPU steps (ngpt_ds/model/norm_kernel.py, README "Benchmarks"): built here once per
# machine and CPU (about 30 s of CPU), so the trainer uses them by default; it never compiles them itself. Without
# a compiler torch's operators run, the same values. Skipped where torch sees a GPU: training runs there.
norm_errors="$(mktemp)"
if "$PYTHON" -c 'import sys, torch; from ngpt_ds.model import norm_kernel; sys.exit(2 if torch.cuda.is_available() else 0 if norm_kernel.build() else 1)' 2>"$norm_errors"; then
  say "built Norm's C++ loops for this CPU (eager CPU steps use them by default)"
elif [ $? -eq 2 ]; then
  say "Norm's C++ loops not built: torch sees a GPU, where training does not run them"
else
  say "Norm's C++ loops not built, torch's operators run instead (the same values): $(grep -m1 Warning "$norm_errors" | sed 's/.*Warning: //')"
fi
rm -f "$norm_errors"
# The last line says what is installed, or why it does not import (then the exit status is 1, not 0).
import_errors="$(mktemp)"
trap 'rm -f "$import_errors"' EXIT
if ! installed="$("$PYTHON" -c 'import torch, deepspeed, ngpt_ds; build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"; print(f"ngpt_ds {ngpt_ds.__version__}, torch {torch.__version__} ({build}), deepspeed {deepspeed.__version__}")' 2>"$import_errors")"; then
  echo "error: installed, but torch, deepspeed and ngpt_ds do not import with $PYTHON: $(tail -n 1 "$import_errors")" >&2
  exit 1
fi
# Its last line: DeepSpeed's import prints a warning on stdout first ("Setting accelerator to CPU ...").
say "done: ${installed##*$'\n'}"

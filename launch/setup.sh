#!/usr/bin/env bash
# Install ngpt_ds and everything it needs into the active Python environment.
#
#   bash launch/setup.sh          torch (the CPU wheel when no torch is installed), DeepSpeed, this package
#   bash launch/setup.sh --cluster  also what multi-node launches need: OpenMPI + mpi4py, pdsh and
#                                   openssh (system packages, needs root or sudo); the Dockerfile uses it
#   bash launch/setup.sh --test     --cluster, plus Slurm + munge and the test tools
#
# On a GPU machine install the CUDA build of torch first; this script keeps an installed torch.
# DS_BUILD_* variables (e.g. DS_BUILD_FUSED_ADAM=1) prebuild those DeepSpeed ops at install time
# (pip then builds without isolation, against the installed torch).
# Works on a fresh Debian/Ubuntu machine with Python >= 3.10, in a venv, conda env or pyenv.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
WITH_TESTS=0
WITH_CLUSTER=0
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
  echo "fix: python3 -m venv .venv && . .venv/bin/activate, then run this script again." >&2
  exit 2
fi

apt_install() {  # apt_install PKG...: install the Debian packages that are missing
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  if ! command -v apt-get >/dev/null; then
    echo "error: missing system packages ${missing[*]} and no apt-get; install them with your package manager" >&2
    exit 2
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
  apt_install slurm-wlm munge
fi

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  say "installing torch 2.13.0 (CPU build; on GPU machines install the CUDA build of torch first)"
  "$PYTHON" -m pip install -q torch==2.13.0
fi
extras=""
[ "$WITH_CLUSTER" = 1 ] && extras="[mpi]"
[ "$WITH_TESTS" = 1 ] && extras="[test]"
pip_flags=()
if env | grep -q '^DS_BUILD_'; then
  say "prebuilding DeepSpeed ops: $(env | grep '^DS_BUILD_' | tr '\n' ' ')"
  pip_flags+=(--no-build-isolation)
fi
# DeepSpeed: the release the hypersphere hook's internals were read against (setup.py allows the
# tested range, ngpt_ds/train/ds_compat.py checks it at startup).
DEEPSPEED_VERSION=0.19.8
say "installing ngpt_ds$extras, deepspeed==$DEEPSPEED_VERSION and the other dependencies"
"$PYTHON" -m pip install -q ${pip_flags[@]+"${pip_flags[@]}"} -e ".$extras" "deepspeed==$DEEPSPEED_VERSION"
say "done: $("$PYTHON" -c 'import torch, deepspeed, ngpt_ds; print(f"ngpt_ds {ngpt_ds.__version__}, torch {torch.__version__}, deepspeed {deepspeed.__version__}")' 2>/dev/null)"

#!/usr/bin/env bash
# The GPU path, checked in one go on the day a GPU machine is at hand (not run in CI).
#
#   bash bench/gpu_check.sh [--dry-run] [--workdir DIR]
#
# Runs in under 9 minutes on one GPU (GPU_CHECK_BUDGET_S, default 510 s: a check that would not
# fit in what is left, or runs out of it, is SKIPPED). One rank per GPU: world size 1 on a one-GPU machine, where the
# hook's all-reduce is routed through the world group so that its NCCL path still runs (the line
# says so, or says that it could not). Checks, one summary line each (PASS / FAIL / SKIPPED):
#   hook_zero2_nccl          ds_configs/zero2.json: the hook's collectives on NCCL, masters on the
#                            sphere after every step, DeepSpeed's zero_to_fp32 consolidation on it
#   hook_zero2_offload_nccl  the same with ds_configs/zero2_offload.json (fp32 masters on the CPU,
#                            the hook's all-reduce on the GPU)
#   hook_zero3_bf16          the same with ds_configs/zero3.json (bf16)
#   trainer_zero2            launch/train.py end to end on NCCL (ZeRO 2, bf16), finished
#   export_on_sphere         launch/export.py of that run: the consolidated fp32 masters on the sphere
#   throughput_0.5b_short    tokens/s and MFU of the 0.5B layer shape at 2 layers (bench/step_time.py)
#   flash_sdpa               the attention of that shape runs a flash SDPA kernel (torch profiler)
#   trainer_compile_zero2    trainer_zero2's run with --compile (as the long-run presets): finished,
#                            losses beside the eager run's
# Logs and results stay under --workdir (default: a new temporary folder, printed at the end); a
# --workdir must be new or empty (exit 2 otherwise): the checks replace data/, runs/ and export/ in it.
#
# Exit status: 0 every check PASS (in --dry-run: PASS or SKIPPED), 1 a check FAILed or was
# SKIPPED, 3 no CUDA GPU is visible (nothing was checked), 2 bad usage or a PYTHON without torch.
# --dry-run runs the same checks on CPU and gloo at toy sizes (GPU-only parts SKIPPED): it tests the
# script's plumbing on a machine without a GPU, not the GPU path.
set -uo pipefail
CALLER_DIR=$PWD  # a relative --workdir is the caller's, not the repository's (the line below moves there)
cd "$(dirname "$0")/.." || exit 2
PYTHON="${PYTHON:-python3}"
DRY=0
WORKDIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --workdir)
      [ -n "${2:-}" ] || { echo "error: --workdir needs a folder (see --help)" >&2; exit 2; }
      WORKDIR=$2; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

case "$WORKDIR" in
  "" | /*) ;;
  *) WORKDIR="$CALLER_DIR/$WORKDIR" ;;
esac
# A folder that holds anything is refused: prepare_data and export run with --overwrite there (an
# earlier check's dataset, or anyone's, would be replaced), and the trainer checks would resume an
# earlier check's runs/, already at max_steps: "nothing to do", exit 0, PASS without a step trained.
if [ -n "$WORKDIR" ] && { [ -e "$WORKDIR" ] && [ ! -d "$WORKDIR" ] || [ -n "$(ls -A "$WORKDIR" 2>/dev/null)" ]; }; then
  echo "error: --workdir $WORKDIR is not a new or empty folder; the checks replace data/, runs/ and export/" \
    "in it and would resume an earlier check's runs. Pass a new folder (or none: a temporary one)" >&2
  exit 2
fi

BUDGET_S="${GPU_CHECK_BUDGET_S:-510}"
START=$SECONDS
if ! NGPU=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null); then
  # Not "no GPU": a shell without the environment launch/setup.sh installed into has no torch at all.
  echo "gpu_check: $PYTHON cannot import torch ($("$PYTHON" -c 'import torch' 2>&1 | tail -n 1)): nothing was checked." >&2
  echo "gpu_check: activate the environment launch/setup.sh installed into, or set PYTHON to its python." >&2
  exit 2
fi
NGPU="${NGPU:-0}"
if [ "$DRY" = 0 ] && [ "$NGPU" = 0 ]; then
  echo "gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False): nothing was checked." >&2
  echo "gpu_check: on a machine without a GPU, 'bash bench/gpu_check.sh --dry-run' tests the script itself." >&2
  exit 3
fi
RANKS=$NGPU
if [ "$DRY" = 1 ]; then
  RANKS=1
  export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=""
fi
WORKDIR="${WORKDIR:-$(mktemp -d -t gpu_check.XXXXXX)}"
mkdir -p "$WORKDIR"
SUMMARY="$WORKDIR/summary.txt"
: > "$SUMMARY"

say() { printf '[gpu_check] %s\n' "$*"; }
record() {  # record NAME STATUS DETAILS
  printf '%-8s %-24s %s\n' "$2" "$1" "$3" | tee -a "$SUMMARY"
}

# check NAME SECONDS COMMAND...: run it with a time limit; its result is the first line of
# $WORKDIR/NAME.result if the command wrote one, else PASS on exit 0 and FAIL otherwise.
check() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET_S - (SECONDS - START)))
  if [ "$left" -lt 20 ]; then
    record "$name" SKIPPED "time budget spent (${BUDGET_S} s, GPU_CHECK_BUDGET_S)"
    return 1
  fi
  local cut=0  # its limit cut to what is left of the budget: a timeout then is the budget's, not a hang
  [ "$limit" -gt "$left" ] && limit=$left && cut=1
  local log="$WORKDIR/$name.log" result="$WORKDIR/$name.result" began=$SECONDS rc=0
  rm -f "$result"
  say "$name (limit ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1 || rc=$?
  local took=$((SECONDS - began))
  if [ -s "$result" ] && [ "$rc" = 0 ]; then
    local line
    line=$(head -n 1 "$result")
    record "$name" "${line%% *}" "${line#* } [${took} s]"
  elif { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && [ "$cut" = 1 ]; then
    record "$name" SKIPPED "time budget spent after ${limit} s of it (${BUDGET_S} s, GPU_CHECK_BUDGET_S); log: $log"
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    record "$name" FAIL "timed out after ${limit} s; log: $log"
  elif [ "$rc" = 0 ]; then
    record "$name" PASS "[${took} s]"
  else
    record "$name" FAIL "exit $rc: $(grep -E 'Error|error' "$log" | grep -v Warning | tail -n 1 | cut -c1-300); log: $log"
  fi
  [ "$rc" = 0 ]
}

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

say "workdir $WORKDIR; $([ "$DRY" = 1 ] && echo 'DRY RUN on CPU (gloo, toy sizes)' || echo "$NGPU GPU(s), $RANKS rank(s)")"
"$PYTHON" - <<'PY' | tee -a "$SUMMARY"
import torch, deepspeed
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
print(f"INFO     machine                  {gpu}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"deepspeed {deepspeed.__version__}")
PY

# A small dataset made here: the machine may have no network for the default corpus. One document
# per paragraph of pydoc's topics (~2600) with a fifth held out: ~39k validation tokens, ~150
# windows at the trainer's seq_len 256 (Python 3.11), a validation batch of 8 for each rank of up
# to ~19 GPUs. (The ~80 whole topics at the default 2 % held out one of 365 tokens: 1 window, and
# the trainer refused the dataset on every GPU machine.)
"$PYTHON" - "$WORKDIR/corpus.jsonl" <<'PY'
import json, sys, pydoc_data.topics
with open(sys.argv[1], "w") as f:
    for text in pydoc_data.topics.topics.values():
        for paragraph in text.split("\n\n"):
            if paragraph.strip():
                f.write(json.dumps({"text": paragraph}) + "\n")
PY
check prepare_data 90 "$PYTHON" launch/prepare_data.py --input "$WORKDIR/corpus.jsonl" --vocab-size 1024 \
  --val-fraction 0.2 --out "$WORKDIR/data" --overwrite --workers 2 --no-progress

STEPS=20
[ "$DRY" = 1 ] && STEPS=4
for case in "hook_zero2_nccl zero2" "hook_zero2_offload_nccl zero2_offload" "hook_zero3_bf16 zero3"; do
  read -r name config <<<"$case"
  check "$name" 90 "$PYTHON" -m torch.distributed.run --nproc_per_node "$RANKS" --master_addr 127.0.0.1 \
    --master_port "$(free_port)" bench/gpu_check_worker.py hook --ds "ds_configs/$config.json" --steps "$STEPS" \
    --workdir "$WORKDIR" --result "$WORKDIR/$name.result"
done

cat > "$WORKDIR/trainer.yaml" <<EOF
model: {arch: ngpt, n_layer: 4, n_embd: 256, n_head: 4, seq_len: 256}
train: {max_steps: $((STEPS * 2)), lr: 0.005, log_interval: 5, eval_interval: 0, eval_batches: 2,
        checkpoint_interval: 0}
EOF
[ "$DRY" = 1 ] && sed -i 's/n_layer: 4, n_embd: 256, n_head: 4, seq_len: 256/n_layer: 2, n_embd: 32, n_head: 2, seq_len: 32/' "$WORKDIR/trainer.yaml"
if check trainer_zero2 150 "$PYTHON" -m torch.distributed.run --nproc_per_node "$RANKS" --master_addr 127.0.0.1 \
    --master_port "$(free_port)" launch/train.py --config "$WORKDIR/trainer.yaml" \
    --deepspeed_config ds_configs/zero2.json --data "$WORKDIR/data" --out "$WORKDIR/runs/zero2" --no-progress; then
  # shellcheck disable=SC2016  # $1 and $2 expand in the inner shell
  check export_on_sphere 90 bash -c '"$1" launch/export.py "$2/runs/zero2" --out "$2/export" --overwrite &&
    "$1" bench/gpu_check_worker.py sphere --model "$2/export" --result "$2/export_on_sphere.result"' \
    _ "$PYTHON" "$WORKDIR"
else
  record export_on_sphere SKIPPED "trainer_zero2 did not finish"
fi

check throughput_0.5b_short 120 "$PYTHON" bench/gpu_check_worker.py throughput --steps "$((STEPS / 2))" \
  --json "$WORKDIR/throughput.json" --result "$WORKDIR/throughput_0.5b_short.result"
check flash_sdpa 90 "$PYTHON" bench/gpu_check_worker.py flash --result "$WORKDIR/flash_sdpa.result"

# The long-run presets compile (README "Compile"): the trainer's run again through torch.compile
# (Inductor; Triton kernels on a GPU), its logged losses beside the eager run's. Last: the check most
# likely to run out of time.
if [ -s "$WORKDIR/runs/zero2/metrics.jsonl" ]; then
  # shellcheck disable=SC2016  # $1 ... $4 expand in the inner shell
  check trainer_compile_zero2 150 bash -c '"$1" -m torch.distributed.run --nproc_per_node "$3" --master_addr 127.0.0.1 \
    --master_port "$4" launch/train.py --config "$2/trainer.yaml" --compile --deepspeed_config ds_configs/zero2.json \
    --data "$2/data" --out "$2/runs/compile" --no-progress &&
    "$1" bench/gpu_check_worker.py compare --runs "$2/runs/zero2" "$2/runs/compile" \
      --result "$2/trainer_compile_zero2.result"' _ "$PYTHON" "$WORKDIR" "$RANKS" "$(free_port)"
else
  record trainer_compile_zero2 SKIPPED "trainer_zero2 did not finish"
fi

echo
echo "gpu_check summary ($((SECONDS - START)) s; logs in $WORKDIR):"
cat "$SUMMARY"
if grep -q '^FAIL' "$SUMMARY"; then
  exit 1
fi
if [ "$DRY" = 0 ] && grep -q '^SKIPPED' "$SUMMARY"; then
  exit 1
fi
exit 0

#!/usr/bin/env bash
# Multi-node training without Slurm: DeepSpeed's launcher over pdsh + ssh, or OpenMPI's mpirun.
#
#   launch/multinode.sh deepspeed HOSTFILE [launch/train.py options...]
#   launch/multinode.sh mpi       HOSTFILE [launch/train.py options...]
#
# HOSTFILE lists one node per line with its number of ranks (GPUs), the format both
# DeepSpeed and OpenMPI read:
#     gpu-node-1 slots=8
#     gpu-node-2 slots=8
# Run it on the first node. The working directory (relative paths in the options resolve there),
# the repository, the data and --out must be at the same paths on every node (a shared
# filesystem), with the same Python environment.
#
# deepspeed: `deepspeed --hostfile HOSTFILE --master_addr FIRST_HOST ... launch/train.py ...`.
#   DeepSpeed runs `pdsh -w HOSTS` (ssh) to start its per-node launcher, which starts one rank per
#   slot with RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* set. Needs passwordless ssh from this node to
#   every node, each tried first (an unreachable one is named and nothing starts); SSH_PORT for a
#   non-standard port, PDSH_SSH_ARGS_APPEND for more ssh options; and pdsh here. The remote shell
#   gets only the variables DeepSpeed exports (PYTHON*, NCCL*, ...);
#   put others, one NAME=VALUE a line, in ./.deepspeed_env or ~/.deepspeed_env.
#   A hostfile with a single host runs locally: no pdsh, no ssh. Over several hosts the working folder and
#   the repository's path must hold no space and the options no shell character ($ ` ' " ~ * ; ...): pdsh
#   hands each host one unquoted command line (refused before anything starts; mode mpi has no such limit).
# mpi: `mpirun --hostfile HOSTFILE -np TOTAL_SLOTS python launch/train.py ...`. Each rank reads
#   OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK, and rank 0's address and a free port reach the others
#   through mpi4py (ngpt_ds/distributed.py), unless MASTER_ADDR/MASTER_PORT are set. OpenMPI
#   starts remote ranks over ssh too; MPI_ARGS adds mpirun flags (e.g. "--mca btl_tcp_if_include eth0").
#   Stopping: on SIGTERM or Ctrl-C, Open MPI 4.1's mpirun sends its ranks SIGCONT, waits
#   odls_base_sigkill_timeout, sends SIGTERM, waits that long again, then SIGKILLs them. Its default, 1 s,
#   cut the ranks' stop save short; this script passes train.stop_grace_s + 5 s (STOP_GRACE_S, else the
#   --config YAML file's, else 25 s). So the ranks get SIGTERM that long after mpirun did, and mpirun reads
#   none of their output meanwhile (a rank that writes more than a pipe holds, 64 KiB, waits). SIGUSR1 or
#   SIGUSR2 to mpirun reach the ranks at once: a stop with a checkpoint, no wait (`kill -USR1 MPIRUN_PID`).
#
# Environment: MASTER_ADDR (default: the first host; 127.0.0.1 for a single host), MASTER_PORT
# (default 29500; deepspeed mode refuses one in use), SSH_PORT, PYTHON (default python3),
# DEEPSPEED_ARGS / MPI_ARGS (extra launcher flags), STOP_GRACE_S (mpi: the train.stop_grace_s that sizes
# mpirun's wait before SIGKILL; default: the --config YAML file's), DRY_RUN=1 (print the command instead
# of running it).
# DeepSpeed's --include / --exclude / --num_nodes in DEEPSPEED_ARGS narrow the hostfile: the master is the
# first host left, and only the hosts left are probed over ssh (exclude a broken node that way).
set -euo pipefail
usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
case "${1:-}" in  # the whole header (modes, hostfile format, environment), on stdout, exit 0
  -h | --help) sed -n '2,/^set -euo pipefail$/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
[ $# -ge 2 ] || usage
mode="$1"
hostfile="$2"
shift 2
[ -f "$hostfile" ] || { echo "error: hostfile $hostfile not found" >&2; exit 2; }
root="$(cd "$(dirname "$0")/.." && pwd)"

# Hosts and slots, skipping comments and blank lines.
hosts=()
total=0
# `|| [ -n "$host" ]`: a last line without a newline (printf, some editors) is a host too; read fails on
# it, and the loop dropped it: mpirun started too few ranks, and a two-host file ran on the loopback.
while read -r host rest || [ -n "$host" ]; do
  case "$host" in ''|'#'*) continue ;; esac
  # The word slots=N, not the N of max_slots=N (Open MPI's hostfiles have both: 'node slots=8 max_slots=16').
  slots=""
  [[ " $rest" =~ [[:space:]]slots=([0-9]+) ]] && slots="${BASH_REMATCH[1]}"
  [ -n "$slots" ] || { echo "error: $hostfile: '$host' has no slots=N" >&2; exit 2; }
  # A host of no ranks, say to leave a node out: DeepSpeed still counts it as a node and this script made it
  # the rendezvous, where no rank listens (the others waited train.dist_timeout_s); mpirun stops on it.
  if [ "$((10#$slots))" = 0 ]; then
    echo "error: $hostfile: '$host' has slots=0: to leave a host out, delete or comment out its line" \
         "(deepspeed mode: or DEEPSPEED_ARGS=\"--exclude $host\")" >&2
    exit 2
  fi
  # Both launchers refuse a host given twice, DeepSpeed with a ValueError traceback once every host has
  # been probed over ssh, mpirun with an "internal error"; say it here, before anything is tried.
  for seen in "${hosts[@]}"; do
    [ "$seen" != "$host" ] && continue
    echo "error: $hostfile: '$host' is listed twice; give each host one line with all its ranks (slots=N)" >&2
    exit 2
  done
  hosts+=("$host")
  total=$((total + 10#$slots))   # base 10: bash reads 08 as a bad octal number
done < "$hostfile"
[ ${#hosts[@]} -gt 0 ] || { echo "error: $hostfile lists no host" >&2; exit 2; }

PYTHON="${PYTHON:-python3}"
run() {
  if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "$@"; echo; else exec "$@"; fi
}

# Seconds mpirun waits after passing a stop on before it SIGKILLs the ranks: STOP_GRACE_S (default: the
# train.stop_grace_s line of the --config YAML file among the arguments, else the YAML default, 25), + 5.
sigkill_timeout() {
  local grace="${STOP_GRACE_S:-}" config="" prev="" arg
  for arg in "$@"; do
    case "$arg" in --config=*) config="${arg#--config=}" ;; esac
    [ "$prev" = --config ] && config="$arg"
    prev="$arg"
  done
  if [ -z "$grace" ] && [ -f "$config" ]; then
    grace="$(sed -n 's/^ *stop_grace_s: *\([0-9][0-9.]*\).*/\1/p' "$config" | head -n 1)"
  fi
  [[ "$grace" =~ ^[0-9]+(\.[0-9]*)?$ ]] || grace=25
  local whole="${grace%%.*}"
  [[ "$grace" == *.*[1-9]* ]] && whole=$((whole + 1))   # round a fraction up
  echo $((10#$whole + 5))
}

# Whether host $1 is named in DeepSpeed's NODE_SPEC[@NODE_SPEC...] list $2 (NODE_SPEC = NAME[:SLOT,...]);
# with $3 = whole, only a NAME without slots counts (an --exclude of some slots leaves the host in).
named_in() {
  local spec specs
  IFS=@ read -ra specs <<<"$2"
  for spec in "${specs[@]}"; do
    [ "${spec%%:*}" = "$1" ] || continue
    [ "${3:-}" = whole ] && [ "$spec" != "$1" ] && continue
    return 0
  done
  return 1
}

case "$mode" in
  deepspeed)
    # The hosts DeepSpeed starts ranks on, in hostfile order: DEEPSPEED_ARGS may narrow the hostfile
    # (--include, --exclude, --num_nodes). Rank 0, so the rendezvous, is on the first of them, and an
    # excluded host (a broken node) must be neither the master nor probed over ssh.
    include="" exclude="" num_nodes="" prev=""
    # shellcheck disable=SC2086  # DEEPSPEED_ARGS is a word list
    for arg in ${DEEPSPEED_ARGS:-}; do
      case "$prev" in -i|--include) include="$arg" ;; -e|--exclude) exclude="$arg" ;; --num_nodes) num_nodes="$arg" ;; esac
      case "$arg" in --include=*) include="${arg#*=}" ;; --exclude=*) exclude="${arg#*=}" ;; --num_nodes=*) num_nodes="${arg#*=}" ;; esac
      prev="$arg"
    done
    active=()
    for host in "${hosts[@]}"; do
      if [ -n "$include" ]; then named_in "$host" "$include" || continue; fi
      if [ -n "$exclude" ]; then named_in "$host" "$exclude" whole && continue; fi
      active+=("$host")
    done
    if [[ "$num_nodes" =~ ^[0-9]+$ ]] && [ "$num_nodes" -gt 0 ] && [ "$num_nodes" -lt ${#active[@]} ]; then
      active=("${active[@]:0:$num_nodes}")
    fi
    [ ${#active[@]} -gt 0 ] || { echo "error: $hostfile: DEEPSPEED_ARGS ($DEEPSPEED_ARGS) leave no host" >&2; exit 2; }
    hosts=("${active[@]}")
    if [ ${#hosts[@]} -gt 1 ]; then
      # Over pdsh, DeepSpeed's runner sends one command line to each host's shell: `cd <working folder>;`, the
      # script and the options joined by spaces, only an option holding a space put in double quotes. A space
      # in the folder or the script's path splits them there (`cd /shared/my runs` fails, and the ranks start
      # in the home directory, where a relative --data or --out points elsewhere); $, `, ~, *, quotes and the
      # like are expanded or break the line. mpirun passes all of them intact.
      for word in "$PWD" "$root/launch/train.py" "$@"; do
        allowed='^[A-Za-z0-9_./=:,@%+-]*$'
        case "$word" in "$PWD" | "$root/launch/train.py") ;; *) allowed='^[A-Za-z0-9_./=:,@%+ -]*$' ;; esac
        [[ "$word" =~ $allowed ]] && continue
        echo "error: deepspeed mode starts other hosts' ranks through a remote shell (pdsh), which would split" \
             "or expand '$word': use folders without spaces and options without shell characters, or mode mpi" >&2
        exit 2
      done
    fi
    master="${MASTER_ADDR:-${hosts[0]}}"
    [ ${#hosts[@]} = 1 ] && master="${MASTER_ADDR:-127.0.0.1}"   # one host: the rendezvous stays on it
    # A port some other process already listens on (another job's rendezvous): rank 0 could not
    # listen, and the other nodes' ranks would join that rendezvous and wait as long as it runs.
    if [ "${DRY_RUN:-0}" != 1 ] &&
       timeout 5 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$master" "${MASTER_PORT:-29500}" 2>/dev/null; then
      echo "error: rendezvous port ${MASTER_PORT:-29500} on $master is in use by another process;" \
           "set MASTER_PORT to a free port" >&2
      exit 2
    fi
    cmd=(deepspeed --hostfile "$hostfile" --master_addr "$master" --master_port "${MASTER_PORT:-29500}")
    [ -n "${SSH_PORT:-}" ] && cmd+=(--ssh_port "$SSH_PORT")
    [ ${#hosts[@]} = 1 ] && cmd+=(--no_ssh_check)   # one host: DeepSpeed starts it locally, no ssh
    if [ ${#hosts[@]} -gt 1 ] && [ "${DRY_RUN:-0}" != 1 ]; then
      # Every host over ssh as pdsh will reach it, before anything starts: DeepSpeed checks the first
      # only, and the ranks started elsewhere would wait train.dist_timeout_s (600 s by default) for
      # an unreachable host's ranks, then fail with a traceback that does not name it.
      # shellcheck disable=SC2206  # PDSH_SSH_ARGS_APPEND is a word list, as pdsh reads it
      probe=(ssh ${SSH_PORT:+-p "$SSH_PORT"} ${PDSH_SSH_ARGS_APPEND:-} -o BatchMode=yes -o ConnectTimeout=15)
      pids=()
      for host in "${hosts[@]}"; do "${probe[@]}" "$host" true </dev/null >/dev/null 2>&1 & pids+=($!); done
      unreachable=()
      for i in "${!hosts[@]}"; do wait "${pids[$i]}" || unreachable+=("${hosts[$i]}"); done
      if [ ${#unreachable[@]} -gt 0 ]; then
        echo "error: $hostfile: not reachable over passwordless ssh (${probe[*]} HOST true): ${unreachable[*]}" >&2
        exit 2
      fi
    fi
    # shellcheck disable=SC2206  # DEEPSPEED_ARGS is a word list
    cmd+=(${DEEPSPEED_ARGS:-} "$root/launch/train.py" "$@")
    run "${cmd[@]}"
    ;;
  mpi)
    # torchrun's variables left in this shell (a run started by hand before): the ranks mpirun starts on this
    # node inherit its environment and read them before Open MPI's (ngpt_ds/distributed.py), each training
    # as that rank of that world, while the other nodes' ranks wait for them.
    leftover=()
    for var in RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE LOCAL_SIZE; do [ -n "${!var+set}" ] && leftover+=("$var"); done
    if [ ${#leftover[@]} -gt 0 ]; then
      echo "warning: ignoring ${leftover[*]} from this shell: the ranks come from mpirun" >&2
      unset "${leftover[@]}"
    fi
    cmd=(mpirun --hostfile "$hostfile" -np "$total" --bind-to none)
    [ "$(id -u)" = 0 ] && cmd+=(--allow-run-as-root)
    # A stop (SIGTERM or Ctrl-C to mpirun) is passed on to the ranks, which save within train.stop_grace_s;
    # Open MPI 4.1 SIGKILLs them odls_base_sigkill_timeout (default 1 s) later, in the middle of the save.
    if [[ " ${MPI_ARGS:-} " != *odls_base_sigkill_timeout* ]] && [ -z "${OMPI_MCA_odls_base_sigkill_timeout:-}" ]; then
      cmd+=(--mca odls_base_sigkill_timeout "$(sigkill_timeout "$@")")
    fi
    [ -n "${SSH_PORT:-}" ] && cmd+=(--mca plm_rsh_args "-p $SSH_PORT")
    # Pass the environment the ranks need (mpirun forwards nothing by default to remote nodes).
    for var in PATH PYTHONPATH LD_LIBRARY_PATH VIRTUAL_ENV DS_ACCELERATOR OMP_NUM_THREADS NGPT_DS_CACHE \
               MASTER_ADDR MASTER_PORT HF_HOME; do
      [ -n "${!var:-}" ] && cmd+=(-x "$var")
    done
    while IFS= read -r var; do cmd+=(-x "$var"); done < <(compgen -e | grep -E '^(NCCL_|CUDA_|TORCH_)' || true)
    # shellcheck disable=SC2206  # MPI_ARGS is a word list
    cmd+=(${MPI_ARGS:-} "$PYTHON" "$root/launch/train.py" "$@")
    run "${cmd[@]}"
    ;;
  *) usage ;;
esac

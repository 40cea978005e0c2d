#!/usr/bin/env bash
# A throw-away Slurm cluster on this machine, for the launch tests: one munged, one slurmctld
# and NODES slurmd (fake nodes ngptds1..N, all on 127.0.0.1, each on its own port).
#
#   bash tests/system/slurm_cluster.sh up      # (re)start it; prints `export SLURM_CONF=...`
#   bash tests/system/slurm_cluster.sh down    # stop every daemon it started, by PID file
#   bash tests/system/slurm_cluster.sh env     # print the export line only
#
# Needs root, slurm-wlm and munge (bash launch/setup.sh --test installs them).
# Everything lives under $NGPT_SLURM_DIR (default /run/ngpt_ds_slurm): its own munge key and
# socket, slurm.conf, spool, logs and PID files. A system Slurm or munge is left alone. `up` is
# idempotent (it brings down a previous instance first). The only change outside that directory
# is one "127.0.0.1 ngptdsN" line per fake node in /etc/hosts, added when the name does not
# resolve yet (torch's MASTER_ADDR is the first node's name); no line is ever removed.
set -euo pipefail
ACTION="${1:-up}"
DIR="${NGPT_SLURM_DIR:-/run/ngpt_ds_slurm}"
NODES="${NODES:-2}"
CPUS="${CPUS:-$(nproc)}"
MEM_MB="${MEM_MB:-2000}"
CTLD_PORT="${NGPT_SLURM_PORT:-16817}"   # slurmd ports follow: +1 .. +NODES
PREFIX=ngptds
CONF="$DIR/slurm.conf"
SOCKET="$DIR/munge/munge.socket"

say() { printf '[slurm-cluster] %s\n' "$*" >&2; }

stop_pidfiles() {  # stop_pidfiles FILE...: TERM the PIDs they name (together), KILL after 10 s, remove the files
  local f pid pids=()
  for f in "$@"; do
    [ -f "$f" ] || continue
    pid="$(cat "$f" 2>/dev/null || true)"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill "$pid" 2>/dev/null && pids+=("$pid"); fi
  done
  for _ in $(seq 1 100); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null; done
  rm -f "$@"
}

down() {
  [ -d "$DIR" ] || return 0
  if [ -f "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
    # Cancel this cluster's jobs and give their steps a moment to end.
    SLURM_CONF="$CONF" timeout 10 scancel --quiet --full --signal=KILL --user=root 2>/dev/null || true
    SLURM_CONF="$CONF" timeout 10 scancel --quiet --user=root 2>/dev/null || true
    for _ in $(seq 1 30); do
      [ -z "$(SLURM_CONF="$CONF" timeout 5 squeue -h -o %i 2>/dev/null || true)" ] && break
      sleep 0.5
    done
  fi
  stop_pidfiles "$DIR"/slurmd-*.pid "$DIR/slurmctld.pid"
  stop_pidfiles "$DIR/munge/munged.pid"
  say "down"
}

up() {
  [ "$(id -u)" = 0 ] || { echo "error: the local Slurm cluster needs root" >&2; exit 2; }
  for tool in munged slurmctld slurmd sbatch; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found: bash launch/setup.sh --test installs slurm-wlm and munge" >&2; exit 2; }
  done
  down
  rm -rf "$DIR"
  mkdir -p "$DIR"/{munge,spool,state,log}
  chmod 0755 "$DIR"
  chown munge:munge "$DIR/munge"; chmod 0700 "$DIR/munge"
  dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1 count=1024 status=none
  chown munge:munge "$DIR/munge/munge.key"; chmod 0400 "$DIR/munge/munge.key"
  chmod 0755 "$DIR/munge"   # the socket must be reachable by slurm's clients
  runuser -u munge -- "$(command -v munged)" --socket="$SOCKET" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed"
  munge --socket="$SOCKET" -n | unmunge --socket="$SOCKET" >/dev/null

  local names=() i
  for i in $(seq 1 "$NODES"); do names+=("$PREFIX$i"); done
  {
    echo "# written by tests/system/slurm_cluster.sh"
    echo "ClusterName=ngptds"
    echo "SlurmctldHost=$(hostname -s)(127.0.0.1)"
    echo "SlurmctldPort=$CTLD_PORT"
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "AuthType=auth/munge"
    echo "CredType=cred/munge"
    echo "AuthInfo=socket=$SOCKET"
    echo "StateSaveLocation=$DIR/state"
    echo "SlurmdSpoolDir=$DIR/spool/%n"
    echo "SlurmctldPidFile=$DIR/slurmctld.pid"
    echo "SlurmdPidFile=$DIR/slurmd-%n.pid"
    echo "SlurmctldLogFile=$DIR/log/slurmctld.log"
    echo "SlurmdLogFile=$DIR/log/slurmd-%n.log"
    echo "SlurmdParameters=config_overrides"
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
    echo "JobAcctGatherType=jobacct_gather/none"
    echo "AccountingStorageType=accounting_storage/none"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_Core"
    echo "MpiDefault=none"
    echo "ReturnToService=2"
    echo "SlurmdTimeout=30"
    echo "InactiveLimit=0"
    echo "KillWait=30"
    echo "MinJobAge=600"
    for i in $(seq 1 "$NODES"); do
      echo "NodeName=$PREFIX$i NodeHostname=$(hostname -s) NodeAddr=127.0.0.1 Port=$((CTLD_PORT + i)) CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
  } > "$CONF"

  for n in "${names[@]}"; do
    getent hosts "$n" >/dev/null || { echo "127.0.0.1 $n" >> /etc/hosts; say "added '127.0.0.1 $n' to /etc/hosts"; }
  done

  export SLURM_CONF="$CONF"
  slurmctld -c -f "$CONF"   # -c: clean state; daemonizes, PID file as configured
  for n in "${names[@]}"; do
    mkdir -p "$DIR/spool/$n"
    slurmd -f "$CONF" -N "$n"
  done
  for _ in $(seq 1 60); do
    if [ "$(sinfo -h -N -o '%T' 2>/dev/null | grep -c '^idle')" -ge "$NODES" ]; then
      say "up: $NODES nodes idle (${names[*]})"
      echo "export SLURM_CONF=$CONF"
      return 0
    fi
    sleep 0.5
  done
  say "nodes not idle after 30 s"
  sinfo -N >&2 || true
  tail -n 20 "$DIR"/log/*.log >&2 || true
  return 1
}

case "$ACTION" in
  up) up ;;
  down) down ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 {up|down|env}" >&2; exit 2 ;;
esac

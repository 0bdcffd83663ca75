#!/usr/bin/env bash
# A one-node SLURM cluster for CI (Debian 12, root, no systemd, no cgroups); no accounting database.
#
#   bash .ci/slurm.sh start   # install slurmctld/slurmd/slurm-client/munge if missing, write slurm.conf,
#                             # start munged, slurmctld, slurmd (idempotent) and print their PIDs
#   bash .ci/slurm.sh stop    # stop the daemons started here, by the PIDs in their pid files
#   bash .ci/slurm.sh status  # sinfo, and the PIDs of the daemons that run
#
# Partition "debug" (the default), state and logs under /tmp/carve-slurm. Without accounting, sacct cannot
# report job states: Snakemake's SLURM executor must use `slurm-status-command: squeue` (profiles/slurm-local),
# which needs finished jobs to stay visible to squeue for a while (MinJobAge=3600 below: an hour).
set -euo pipefail

STATE=/tmp/carve-slurm
CONF=/etc/slurm/slurm.conf
NODE=$(hostname -s)
PARTITION=debug
MUNGE_PID=/run/munge/munged.pid
PIDFILES=("$MUNGE_PID" "$STATE/slurmctld.pid" "$STATE/slurmd.pid")

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {  # wait_for SECONDS CONDITION
  local n=$(( $1 * 10 ))
  for _ in $(seq "$n"); do eval "$2" && return 0; sleep 0.1; done
  echo "slurm.sh: timed out after $1 s waiting for: $2" >&2
  return 1
}
print_pids() {
  for f in "${PIDFILES[@]}"; do alive "$f" && echo "$(basename "$f" .pid)=$(cat "$f")"; done
  return 0
}

stop() {
  # slurmd first, then the controller, then munge; each by the PID its own pid file names
  for f in "$STATE/slurmd.pid" "$STATE/slurmctld.pid" "$MUNGE_PID"; do
    if alive "$f"; then
      local p
      p=$(cat "$f")
      kill "$p"
      for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$p" 2>/dev/null; then echo "slurm.sh: $(basename "$f" .pid) pid $p did not stop" >&2; fi
      echo "stopped $(basename "$f" .pid) pid $p"
    fi
  done
}

start() {
  # 1. packages (Debian 12: slurm 22.05, munge 0.5)
  local missing=""
  for p in slurmctld slurmd slurm-client munge; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    echo "slurm.sh: installing$missing"
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi

  # 2. directories and the munge key
  mkdir -p "$STATE"/{ctld,d,log} /run/munge /var/lib/munge /var/log/munge /etc/slurm
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  chmod 0755 /run/munge
  [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=128 count=1 status=none
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key

  # 3. slurm.conf for this node (CPUs and memory read from the machine, 1 GiB left to the system)
  local cpus mem_mb changed=1
  cpus=$(nproc)
  mem_mb=$(( $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) - 1024 ))
  cat > "$CONF.new" <<CONF
# written by carve's .ci/slurm.sh: one node, no accounting, no cgroups
ClusterName=carveci
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=3600
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
  cmp -s "$CONF.new" "$CONF" && changed=0
  mv "$CONF.new" "$CONF"

  # 4. munged, as the munge user; it daemonizes and writes its pid file
  if ! alive "$MUNGE_PID"; then
    runuser -u munge -- /usr/sbin/munged
    wait_for 10 "[ -S /run/munge/munge.socket.2 ] && alive $MUNGE_PID"
  fi
  munge -n | unmunge >/dev/null

  # 5. slurmctld, then slurmd (both daemonize); a changed slurm.conf restarts them
  if [ "$changed" = 1 ]; then
    for f in "$STATE/slurmd.pid" "$STATE/slurmctld.pid"; do
      if alive "$f"; then
        local p
        p=$(cat "$f")
        kill "$p"
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      fi
    done
  fi
  alive "$STATE/slurmctld.pid" || slurmctld -i   # -i: ignore unreadable saved state
  wait_for 20 'scontrol ping 2>/dev/null | grep -q UP'
  alive "$STATE/slurmd.pid" || slurmd
  wait_for 20 'sinfo -h -N -o %t 2>/dev/null | grep -qE "^(idle|mix|alloc|down|drain)"'
  case "$(sinfo -h -N -o %t | head -1)" in   # left down/drained by an unclean stop: resume it
    down* | drain*) scontrol update NodeName="$NODE" State=RESUME ;;
  esac
  wait_for 20 'sinfo -h -N -o %t | grep -qE "^(idle|mix|alloc)"'
  sinfo
  print_pids
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) sinfo 2>/dev/null || echo "slurm.sh: no controller answers"; print_pids ;;
  *) echo "usage: bash .ci/slurm.sh start|stop|status" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# A single-node Slurm cluster under one folder, for tests and for trying
# `pipe run --executor slurm` on one machine (as root; Debian's slurmctld, slurmd,
# slurm-client and munge):
#
#   scripts/slurm_local.sh start DIR [PORT]   # prints the SLURM_CONF to export
#   scripts/slurm_local.sh stop DIR
#
# munged runs as the munge user with its own key and socket under DIR; slurmctld and slurmd
# use DIR/slurm.conf (linuxproc process tracking, no task plugin, no accounting).
set -euo pipefail

usage() { echo "usage: $0 start DIR [PORT] | stop DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
action=$1
dir=$2

stop() {
  for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
    if [ -s "$pidfile" ]; then
      kill "$(cat "$pidfile")" 2>/dev/null || true
    fi
  done
  # slurmd may leave job steps (slurmstepd) behind for a moment.
  sleep 1
}

case "$action" in
  stop) stop; exit 0 ;;
  start) ;;
  *) usage ;;
esac

port=${3:-26817}
for tool in munged slurmctld slurmd sbatch; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] \
    || { echo "slurm_local: $tool is not installed (apt-get install slurmctld slurmd slurm-client munge)" >&2; exit 3; }
done
[ "$(id -u)" = 0 ] || { echo "slurm_local: must run as root (slurmd starts jobs as their users)" >&2; exit 3; }

dir=$(mkdir -p "$dir" && cd "$dir" && pwd)
mkdir -p "$dir"/{munge,spool,state,log}
# munged refuses a socket folder that others cannot traverse, and a key others can read.
chown munge:munge "$dir/munge"
chmod 711 "$dir" "$dir/munge"
runuser -u munge -- test -x "$dir/munge" \
  || { echo "slurm_local: the munge user cannot reach $dir (make its parent folders traversable: chmod o+x)" >&2; exit 3; }
dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chown munge:munge "$dir/munge/munge.key"
chmod 400 "$dir/munge/munge.key"

host=$(hostname -s)
cpus=$(nproc)
memory_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
cat > "$dir/slurm.conf" <<CONF
ClusterName=pipelocal
SlurmctldHost=$host
SlurmUser=root
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
InactiveLimit=0
# Ended jobs stay listed (squeue --states=all) for 5 minutes.
MinJobAge=300
KillWait=5
NodeName=$host CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF

runuser -u munge -- /usr/sbin/munged \
  --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
  --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
  --seed-file="$dir/munge/munged.seed"
export SLURM_CONF=$dir/slurm.conf
/usr/sbin/slurmctld -f "$SLURM_CONF"
/usr/sbin/slurmd -f "$SLURM_CONF"

# Ready when the node takes jobs.
for _ in $(seq 1 60); do
  if sinfo --noheader --format=%T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.5
done
echo "slurm_local: the node did not come up; logs in $dir/log" >&2
tail -n 20 "$dir/log/"*.log >&2 || true
stop
exit 1

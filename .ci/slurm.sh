#!/usr/bin/env bash
# Start a one-node Slurm cluster on localhost for the `slurm` tests (run as root).
#
#   .ci/slurm.sh          install slurm-wlm + munge if sbatch is missing, start the cluster,
#                         wait until the node is idle (about 15 s once installed)
#   .ci/slurm.sh stop     stop slurmd, slurmctld and munged started by this script
#
# State, spool and logs live under $SLURM_CI_DIR (default /tmp/iterdpo-slurm). Running it
# again while the cluster is up is a no-op.
set -euo pipefail

DIR=${SLURM_CI_DIR:-/tmp/iterdpo-slurm}
HOST=$(hostname -s)

stop() {
    for f in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munged.pid"; do
        if [[ -s $f ]] && kill -0 "$(cat "$f")" 2>/dev/null; then kill "$(cat "$f")"; fi
    done
    # munged writes its pid file itself; the --pid-file path is ours
    [[ -s /run/munge/munged.pid ]] && kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
    rm -f "$DIR"/*.pid
}

if [[ ${1:-} == stop ]]; then stop; exit 0; fi

if sinfo -h -o %T 2>/dev/null | grep -q idle; then
    echo "slurm.sh: cluster already up"; exit 0
fi

if ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
fi

mkdir -p "$DIR"/{state,spool,log}

# --- munge: a shared key, the daemon runs as user munge ------------------------------
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 400 /etc/munge/munge.key
chmod 711 /run/munge
if ! munge -n >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
fi

# --- slurm.conf -----------------------------------------------------------------------
CPUS=$(nproc)
MEM=$(( $(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo) * 8 / 10 ))   # MiB, below the real total or slurmd drains the node
mkdir -p /etc/slurm
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=iterdpo-ci
SlurmctldHost=${HOST}(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
# requeued batch jobs wait cred_expire seconds before they start again (default 120)
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
MailProg=/bin/true
SlurmUser=root
SlurmdUser=root
StateSaveLocation=${DIR}/state
SlurmdSpoolDir=${DIR}/spool
SlurmctldLogFile=${DIR}/log/slurmctld.log
SlurmdLogFile=${DIR}/log/slurmd.log
SlurmctldPidFile=${DIR}/slurmctld.pid
SlurmdPidFile=${DIR}/slurmd.pid
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
JobRequeue=1
MinJobAge=600
KillWait=5
SlurmdTimeout=60
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM} State=UNKNOWN
PartitionName=ci Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF

slurmctld
slurmd

for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -q idle; then
        sinfo; exit 0
    fi
    sleep 1
done
echo "slurm.sh: the node did not become idle in 60 s" >&2
tail -n 20 "$DIR"/log/*.log >&2
exit 1

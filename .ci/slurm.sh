#!/usr/bin/env bash
# Start a Slurm cluster on this machine for the `slurm` tests (run as root).
#
#   .ci/slurm.sh            one node on localhost: install slurm-wlm + munge if sbatch is
#                           missing, start the cluster, wait until the node is idle (~15 s)
#   .ci/slurm.sh two-nodes  the same node (partition `ci`, the default) plus two "hosts"
#                           ci-node1, ci-node2 (partition `two`), each in its own network and
#                           UTS namespace with its own hostname and address on a bridge
#   .ci/slurm.sh stop       cancel the cluster's jobs, stop every daemon this script started,
#                           remove the namespaces, the bridge and their /etc/netns files
#
# Two-node layout (every address is one this script creates; no traffic leaves them):
#
#   root namespace: bridge iterdpo-br0 10.77.0.1/24, slurmctld (SlurmctldHost=<host>(10.77.0.1)),
#                   munged, the localhost node's slurmd (NodeAddr=127.0.0.1)
#   netns iterdpo-node1: hostname ci-node1, eth0 10.77.0.11/24, slurmd -N ci-node1
#   netns iterdpo-node2: hostname ci-node2, eth0 10.77.0.12/24, slurmd -N ci-node2
#
# Both namespaces see the same filesystem (run directories, the venv, munged's socket
# /run/munge/munge.socket.2); each node's slurmd runs with /etc/netns/<ns>/hosts bind-mounted
# over /etc/hosts, so inside them ci-node1/ci-node2 resolve to their bridge addresses.
#
# State, spool and logs live under $SLURM_CI_DIR (default /tmp/iterdpo-slurm); a slurmd's
# spool, log and pid file carry its node name. Running it again while the cluster is up
# (in a mode that has what was asked) is a no-op.
set -euo pipefail
trap 'echo "slurm.sh: failed at line $LINENO" >&2' ERR

DIR=${SLURM_CI_DIR:-/tmp/iterdpo-slurm}
HOST=$(hostname -s)
MODE=${1:-one-node}
BRIDGE=iterdpo-br0
NET=10.77.0
CTL_ADDR=$NET.1
NODES=(ci-node1 ci-node2)
ADDRS=("$NET.11" "$NET.12")

netns_of() { echo "iterdpo-${1#ci-}"; }   # ci-node1 -> iterdpo-node1

stop() {
    if command -v scancel >/dev/null && sinfo -h >/dev/null 2>&1; then
        # every job in this cluster was submitted by the tests: end them before the daemons go
        scancel --full --quiet "$(squeue -h -o %i | paste -sd,)" 2>/dev/null || true
        for _ in $(seq 20); do [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break; sleep 0.5; done
    fi
    for f in "$DIR"/slurmd*.pid "$DIR/slurmctld.pid"; do
        if [[ -s $f ]] && kill -0 "$(cat "$f")" 2>/dev/null; then kill "$(cat "$f")"; fi
    done
    [[ -s /run/munge/munged.pid ]] && kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
    for node in "${NODES[@]}"; do
        ns=$(netns_of "$node")
        if ip netns list | grep -qw "$ns"; then
            # whatever still runs in the namespace was started by its slurmd (steps, jobs)
            for pid in $(ip netns pids "$ns"); do kill "$pid" 2>/dev/null || true; done
            sleep 0.5
            for pid in $(ip netns pids "$ns"); do kill -9 "$pid" 2>/dev/null || true; done
            ip netns del "$ns"
        fi
        rm -rf "/etc/netns/$ns"
    done
    if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE"; fi
    rm -f "$DIR"/*.pid
}

if [[ $MODE == stop ]]; then stop; exit 0; fi
if [[ $MODE != one-node && $MODE != two-nodes ]]; then
    echo "usage: $0 [one-node|two-nodes|stop]" >&2; exit 2
fi

up() {  # the nodes of partition $1 are all idle
    local states; states=$(sinfo -h -p "$1" -o %T 2>/dev/null) || return 1
    [[ -n $states ]] && ! grep -qv idle <<< "$states"
}
if up ci && { [[ $MODE == one-node ]] || up two; }; then
    echo "slurm.sh: cluster already up"; exit 0
fi
if sinfo -h >/dev/null 2>&1; then
    echo "slurm.sh: restarting the cluster in $MODE mode"
    stop
fi

if ! command -v sbatch >/dev/null || ! command -v munged >/dev/null \
        || { [[ $MODE == two-nodes ]] && ! command -v ip >/dev/null; }; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge iproute2 >/dev/null
fi

mkdir -p "$DIR"/{state,log} "$DIR/spool-$HOST"

# --- munge: a shared key, the daemon runs as user munge ------------------------------
# Its socket is a file (/run/munge/munge.socket.2): reachable from every network namespace.
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

# --- network: a bridge in the root namespace, one veth per node namespace -------------
if [[ $MODE == two-nodes ]]; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$CTL_ADDR/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    for i in "${!NODES[@]}"; do
        node=${NODES[$i]} ns=$(netns_of "${NODES[$i]}")
        mkdir -p "/etc/netns/$ns" "$DIR/spool-$node"
        {
            echo "127.0.0.1 localhost"
            echo "$CTL_ADDR $HOST"
            for j in "${!NODES[@]}"; do echo "${ADDRS[$j]} ${NODES[$j]}"; done
        } > "/etc/netns/$ns/hosts"
        ip netns add "$ns"
        ip link add "itd-$node" type veth peer name eth0 netns "$ns"   # itd-ci-node1: 12 chars
        ip link set "itd-$node" master "$BRIDGE" up
        ip netns exec "$ns" ip addr add "${ADDRS[$i]}/24" dev eth0
        ip netns exec "$ns" ip link set eth0 up
        ip netns exec "$ns" ip link set lo up
    done
    CTL=$CTL_ADDR
else
    CTL=127.0.0.1
fi

# --- slurm.conf -----------------------------------------------------------------------
CPUS=$(nproc)
MEM=$(( $(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo) * 8 / 10 ))   # MiB, below the real total or slurmd drains the node
mkdir -p /etc/slurm
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=iterdpo-ci
SlurmctldHost=${HOST}(${CTL})
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
# %n: each node's slurmd has its own spool, log and pid file
SlurmdSpoolDir=${DIR}/spool-%n
SlurmctldLogFile=${DIR}/log/slurmctld.log
SlurmdLogFile=${DIR}/log/slurmd-%n.log
SlurmctldPidFile=${DIR}/slurmctld.pid
SlurmdPidFile=${DIR}/slurmd-%n.pid
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
if [[ $MODE == two-nodes ]]; then
    cat >> /etc/slurm/slurm.conf <<CONF
# two "hosts" in network namespaces (.ci/slurm.sh two-nodes); they share the machine's CPUs
NodeName=${NODES[0]} NodeAddr=${ADDRS[0]} CPUs=${CPUS} RealMemory=${MEM} State=UNKNOWN
NodeName=${NODES[1]} NodeAddr=${ADDRS[1]} CPUs=${CPUS} RealMemory=${MEM} State=UNKNOWN
PartitionName=two Nodes=${NODES[0]},${NODES[1]} MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
fi

slurmctld
slurmd
if [[ $MODE == two-nodes ]]; then
    for node in "${NODES[@]}"; do
        ns=$(netns_of "$node")
        # own network namespace + own UTS namespace (hostname) + a mount namespace whose only
        # change is /etc/hosts (`ip netns exec` would also remount /sys, hiding the cgroup
        # mounts slurmd needs); slurmd forks into the background, its job steps inherit all three
        nsenter --net="/run/netns/$ns" unshare --uts --mount -- \
            bash -c "mount --bind /etc/netns/$ns/hosts /etc/hosts && hostname $node && exec slurmd -N $node"
    done
fi

for _ in $(seq 60); do
    if up ci && { [[ $MODE == one-node ]] || up two; }; then
        sinfo; exit 0
    fi
    sleep 1
done
echo "slurm.sh: the nodes did not become idle in 60 s" >&2
sinfo >&2 || true
tail -n 20 "$DIR"/log/*.log >&2
exit 1

#!/usr/bin/env bash
# Start a lucidity cluster on the hosts of a Slurm allocation, run a program against it, then stop it
# (docs/deploy.md, "Slurm").
#
#   start-cluster.sh [--] PROGRAM [ARGS...]
#       Run on the first host of the allocation (lucidity.sbatch does): starts `lucidity control` here,
#       `lucidity node` on every host through the launcher (srun), waits until every node has joined,
#       runs PROGRAM with LUCIDITY_ADDRESS set, stops the nodes and the control node, and exits with
#       PROGRAM's exit status.
#   start-cluster.sh --node
#       What the launcher runs on each host: becomes that host's `lucidity node`.
#
# Only two commands come from Slurm, and both can be replaced, so the script also runs outside a job (as
# tests/test_deploy.py runs it on test hosts): `scontrol show hostnames`, used only when
# LUCIDITY_CONTROL_HOST is unset, and the launcher (LUCIDITY_LAUNCH).
#
# Environment. A secret is required; everything else is optional.
#   LUCIDITY_SECRET_FILE   the cluster secret (mode 0600) on a file system every host sees; or
#                          LUCIDITY_SECRET, the secret itself. Make one with `lucidity secret PATH`.
#   LUCIDITY_CONTROL_HOST  the name or address by which nodes and PROGRAM reach this host, where the
#                          control node runs. Default: the first host of $SLURM_JOB_NODELIST.
#   LUCIDITY_NODES         how many nodes to wait for. Default: $SLURM_JOB_NUM_NODES, else 1.
#   LUCIDITY_PORT          the control node's port. Default 3030.
#   LUCIDITY_NODE_PORT     each node daemon's port. Default 3031.
#   LUCIDITY_WORKER_PORTS  the workers' port range on each host. Default 3100-3199; empty: any free port.
#   LUCIDITY_PROCESSES     workers per node. Default: the CPUs this task may use on its host (`nproc`).
#   LUCIDITY_MEMORY_LIMIT  memory cap of each worker, e.g. 4GiB. Default: none.
#   LUCIDITY_NODE_NAME     the node's name. Default: $SLURMD_NODENAME (the Slurm host name), else
#                          lucidity's own (host name and pid).
#   LUCIDITY_LAUNCH        a command that runs the command given after it once on every host, split at
#                          white space. Default: srun, one task per host with all of its CPUs.
#   LUCIDITY_STARTUP_TIMEOUT  seconds to wait for the nodes to join. Default 120.
#   LUCIDITY_LOG_LEVEL     the daemons' log level. Default INFO.
set -euo pipefail

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
readonly SELF
readonly PORT=${LUCIDITY_PORT:-3030}
readonly LOG_LEVEL=${LUCIDITY_LOG_LEVEL:-INFO}
#: Seconds the nodes, then the control node, get to stop after SIGTERM before SIGKILL.
readonly NODES_STOP_TIMEOUT=30
readonly CONTROL_STOP_TIMEOUT=10

die() {
    echo "start-cluster.sh: $*" >&2
    exit 2
}

# An IPv6 address needs brackets in tcp://HOST:PORT.
bracketed() {
    if [[ $1 == *:* && $1 != \[* ]]; then echo "[$1]"; else echo "$1"; fi
}

# --secret-file for the daemons and `lucidity status`, or nothing when the secret is in $LUCIDITY_SECRET.
secret=()
if [[ -n ${LUCIDITY_SECRET_FILE:-} ]]; then
    secret=(--secret-file "$LUCIDITY_SECRET_FILE")
elif [[ -z ${LUCIDITY_SECRET:-} ]]; then
    die "no cluster secret: set LUCIDITY_SECRET_FILE to a secret file every host can read (make one with \`lucidity secret PATH\`), or LUCIDITY_SECRET"
fi

run_node() {
    [[ -n ${LUCIDITY_CONTROL_HOST:-} ]] || die "--node needs LUCIDITY_CONTROL_HOST (the launcher passes it on)"
    # nproc counts the CPUs this task may run on; it would also obey OMP_NUM_THREADS, often 1 on clusters.
    local processes=${LUCIDITY_PROCESSES:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}
    local options=(--bind "tcp://*:${LUCIDITY_NODE_PORT:-3031}" --processes "$processes" --log-level "$LOG_LEVEL")
    local worker_ports=${LUCIDITY_WORKER_PORTS-3100-3199}
    if [[ -n $worker_ports ]]; then options+=(--worker-ports "$worker_ports"); fi
    if [[ -n ${LUCIDITY_MEMORY_LIMIT:-} ]]; then options+=(--memory-limit "$LUCIDITY_MEMORY_LIMIT"); fi
    local name=${LUCIDITY_NODE_NAME:-${SLURMD_NODENAME:-}}
    if [[ -n $name ]]; then options+=(--name "$name"); fi
    # The wildcard bind advertises this host's address on the route to the control node.
    exec lucidity node "tcp://$(bracketed "$LUCIDITY_CONTROL_HOST"):$PORT" "${options[@]}" ${secret[@]+"${secret[@]}"}
}

# Signal a child and wait for it, SIGKILL after `timeout` seconds. Polls: bash cannot wait with a timeout.
stop_child() {
    local pid=$1 timeout=$2 waited=0
    kill -TERM "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null && (( waited < timeout * 10 )); do
        sleep 0.1
        waited=$(( waited + 1 ))
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

control_pid=""
nodes_pid=""
stop_cluster() {
    # Nodes first: they leave the cluster and stop their workers. srun passes SIGTERM on to every task.
    if [[ -n $nodes_pid ]]; then stop_child "$nodes_pid" "$NODES_STOP_TIMEOUT"; fi
    if [[ -n $control_pid ]]; then stop_child "$control_pid" "$CONTROL_STOP_TIMEOUT"; fi
}

run_cluster() {
    (( $# > 0 )) || die "usage: start-cluster.sh [--] PROGRAM [ARGS...]   or   start-cluster.sh --node"
    local hosts=()
    if [[ -z ${LUCIDITY_CONTROL_HOST:-} ]]; then
        [[ -n ${SLURM_JOB_NODELIST:-} ]] || die "not in a Slurm allocation: set LUCIDITY_CONTROL_HOST (and LUCIDITY_LAUNCH)"
        # The first host of the allocation, as `scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1`
        # (without the pipe, which pipefail would fail when head closes it early).
        mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
        (( ${#hosts[@]} > 0 )) || die "scontrol listed no host for SLURM_JOB_NODELIST=$SLURM_JOB_NODELIST"
        export LUCIDITY_CONTROL_HOST=${hosts[0]}
    fi
    local nodes=${LUCIDITY_NODES:-${SLURM_JOB_NUM_NODES:-1}}
    local address
    address="tcp://$(bracketed "$LUCIDITY_CONTROL_HOST"):$PORT"
    local launch
    if [[ -n ${LUCIDITY_LAUNCH:-} ]]; then
        read -r -a launch <<< "$LUCIDITY_LAUNCH"
    else
        # One task per host with every CPU the job has there; --overlap lets PROGRAM start steps of its own.
        launch=(srun --nodes="$nodes" --ntasks="$nodes" --ntasks-per-node=1
                --cpus-per-task="${SLURM_CPUS_ON_NODE:-1}" --overlap --kill-on-bad-exit=0)
    fi

    trap stop_cluster EXIT
    trap 'exit 143' TERM  # scancel, or the job's time limit: stop the cluster on the way out
    trap 'exit 130' INT
    lucidity control --bind "tcp://*:$PORT" --log-level "$LOG_LEVEL" ${secret[@]+"${secret[@]}"} &
    control_pid=$!
    # The nodes inherit this environment (srun passes it on), LUCIDITY_CONTROL_HOST included.
    "${launch[@]}" "$SELF" --node &
    nodes_pid=$!

    local timeout=${LUCIDITY_STARTUP_TIMEOUT:-120} joined=0
    local deadline=$(( SECONDS + timeout ))
    while :; do
        # A node that answers `status` is listed with its workers; one that does not, as UNREACHABLE.
        joined=$(lucidity status --timeout 2 ${secret[@]+"${secret[@]}"} "$address" 2>/dev/null \
                 | grep -c '^node .*  workers ' || true)
        (( joined >= nodes )) && break
        kill -0 "$control_pid" 2>/dev/null || die "the control node exited (its log is above)"
        kill -0 "$nodes_pid" 2>/dev/null || die "the node launcher exited (the nodes' logs are above)"
        (( SECONDS < deadline )) || die "$joined of $nodes nodes joined $address within ${timeout}s"
        sleep 1
    done
    echo "start-cluster.sh: $joined nodes joined the control node at $address" >&2

    export LUCIDITY_ADDRESS=$address
    local status=0
    "$@" || status=$?
    exit "$status"
}

case ${1:-} in
    --node) run_node ;;
    --) shift; run_cluster "$@" ;;
    *) run_cluster "$@" ;;
esac

#!/usr/bin/env bash
# End-to-end test of `bench slurm` on a real single-node Slurm cluster started on localhost:
# installs slurm + munge from Debian's packages, starts munged/slurmctld/slurmd under a temp dir,
# submits the array job of a tiny protocol, and checks that the merged results equal a local
# `bench run` of the same protocol (same complete run ids, identical metrics.csv files).
#
# Needs the release binary (target/release/bench, or $BENCH). Where Slurm cannot be installed or
# cannot start here it prints why and exits 0 with "SKIPPED: ..."; a cluster that ran the job and
# disagrees with the local run is a failure (exit 1). Every daemon it starts is stopped on exit.
set -uo pipefail
cd "$(dirname "$0")/.."

# Worst case stays under 10 minutes: apt 150 s + 200 s, cluster start 30 s, job 120 s, re-run 60 s.
DEADLINE_S=${SLURM_TEST_TIMEOUT_S:-120}
BENCH=${BENCH:-$PWD/target/release/bench}
BENCH=$(readlink -f "$BENCH" 2>/dev/null || echo "$BENCH")
T=""
PIDS=()

log() { echo "slurm-test: $*"; }
skip() {
    log "SKIPPED: $*"
    echo "slurm: 0 passed, 0 failed, 1 skipped"
    exit 0
}
fail() {
    log "FAILED: $*"
    for f in "$T"/log/*; do
        [ -f "$f" ] || continue
        echo "---- $f (last 30 lines)"
        tail -n 30 "$f"
    done
    echo "slurm: 0 passed, 1 failed"
    exit 1
}
cleanup() {
    # Cancel our job first so that slurmd does not leave task processes behind, then stop the
    # daemons we started, by PID, newest first.
    if [ -n "${JOB:-}" ] && [ -n "${SLURM_CONF:-}" ]; then
        scancel "$JOB" >/dev/null 2>&1 || true
        # Let the job's step daemons finish before their slurmd goes (waits only, kills nothing).
        for _ in $(seq 50); do squeue -h -j "$JOB" 2>/dev/null | grep -q . || break; sleep 0.2; done
    fi
    # A finished job's slurmstepd still ends after squeue forgets the job; once slurmd is gone it
    # would be left to init to reap.
    if [ -n "${SLURMD_PID:-}" ]; then
        for _ in $(seq 50); do pgrep -P "$SLURMD_PID" >/dev/null 2>&1 || break; sleep 0.1; done
    fi
    local i pid
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[i]}
        kill "$pid" 2>/dev/null || continue
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    if [ -n "$T" ] && [ -z "${SLURM_TEST_KEEP:-}" ]; then rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

[ -x "$BENCH" ] || skip "no bench binary at $BENCH (run cargo build --release first)"

# ---- install -------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
    [ "$(id -u)" = 0 ] || skip "slurm is not installed and installing it needs root"
    command -v apt-get >/dev/null || skip "slurm is not installed and there is no apt-get"
    log "installing slurmctld slurmd slurm-client munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    if ! timeout 150 apt-get update -qq >/tmp/slurm-test-apt.log 2>&1 \
        || ! timeout 200 apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge \
            >>/tmp/slurm-test-apt.log 2>&1; then
        tail -n 5 /tmp/slurm-test-apt.log
        skip "apt-get could not install slurm and munge (see /tmp/slurm-test-apt.log)"
    fi
fi
[ "$(id -u)" = 0 ] || skip "starting slurmd needs root (it switches to the job's user)"

# ---- a single-node cluster under a temp dir ------------------------------------------------------
T=$(mktemp -d /tmp/dfbench-slurm.XXXXXX)
chmod 0755 "$T"
mkdir -p "$T"/{munge,ctld,spool,log,run}
chmod 0700 "$T/munge"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
        || echo $((20000 + RANDOM % 20000))
}
CTLD_PORT=$(free_port)
SLURMD_PORT=$(free_port)
[ "$CTLD_PORT" != "$SLURMD_PORT" ] || SLURMD_PORT=$((CTLD_PORT + 1))

# munged refuses keys readable by others and, as root, needs --force.
dd if=/dev/urandom of="$T/munge/munge.key" bs=1024 count=1 status=none
chmod 0400 "$T/munge/munge.key"
MUNGE_SOCKET=$T/munge/munge.socket
munged --force --key-file="$T/munge/munge.key" --socket="$MUNGE_SOCKET" --pid-file="$T/munge/munged.pid" \
    --log-file="$T/log/munged.log" --seed-file="$T/munge/seed" --foreground >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do [ -S "$MUNGE_SOCKET" ] && break; sleep 0.1; done
[ -S "$MUNGE_SOCKET" ] || skip "munged did not start: $(tail -n 3 "$T/log/munged.log" 2>/dev/null)"

# The node's real CPUs and memory, as slurmd sees them (a node configured above them is drained).
NODE_LINE=$(slurmd -C 2>/dev/null | head -n 1)
CPUS=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$NODE_LINE")
MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$NODE_LINE")
CPUS=${CPUS:-$(nproc)}
MEM=${MEM:-1000}

export SLURM_CONF=$T/slurm.conf
cat >"$SLURM_CONF" <<EOF
ClusterName=dfbench
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
StateSaveLocation=$T/ctld
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/run/slurmctld.pid
SlurmdPidFile=$T/run/slurmd.pid
SlurmctldLogFile=$T/log/slurmctld.log
SlurmdLogFile=$T/log/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
NodeName=localhost NodeHostname=$(hostname) NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

slurmctld -D -i -f "$SLURM_CONF" >"$T/log/slurmctld.out" 2>&1 &
PIDS+=($!)
slurmd -D -N localhost -f "$SLURM_CONF" >"$T/log/slurmd.out" 2>&1 &
SLURMD_PID=$!
PIDS+=($SLURMD_PID)

# Up when the node is idle (or mixed/allocated by someone else's job, which cannot happen here).
STATE=""
for _ in $(seq 60); do
    STATE=$(sinfo -h -N -n localhost -o '%t' 2>/dev/null | head -n 1)
    case "$STATE" in idle*) break ;; esac
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null || break 2; done
    sleep 0.5
done
case "$STATE" in
    idle*) log "cluster up: localhost, $CPUS CPUs, ${MEM} MB, ports $CTLD_PORT/$SLURMD_PORT (slurm $(sinfo -V 2>/dev/null))" ;;
    *)
        for f in "$T"/log/slurmctld.out "$T"/log/slurmd.out "$T"/log/slurmctld.log "$T"/log/slurmd.log; do
            [ -f "$f" ] && { echo "---- $f"; tail -n 8 "$f"; }
        done
        skip "the single-node cluster did not come up (node state '${STATE:-none}')"
        ;;
esac

# ---- the protocol, run through Slurm and locally -------------------------------------------------
cat >"$T/tiny.toml" <<'EOF'
name = "slurm-ci"
seeds = [0, 1]

[data]
format = "synthetic"
preset = "tiny"
resolution = 32

[train]
dataset = "FaceForensics++"

[[test]]
name = "FF++"
dataset = "FaceForensics++"

[[test]]
name = "Celeb-DF"
dataset = "Celeb-DF-v2"

[model]
backbone = "meso4"

[training]
steps = 4
batch_size = 8
validation = { every = 2 }

[methods.O]
kind = "erm"
streams = "original"

[methods.SGD]
kind = "erm"
streams = "original"
optimizer = { name = "sgd", lr = 0.01, momentum = 0.9 }

[methods.SAM]
kind = "sam"
rho = 0.05
EOF
SHARDS=3
"$BENCH" slurm "$T/tiny.toml" --shards $SHARDS --time 00:05:00 --cpus-per-task 1 --out "$T/cluster" \
    --data-cache "$T/cache" --script "$T/job.sbatch" --log-dir "$T/log/jobs" -- --no-weights \
    >"$T/log/bench-slurm.out" 2>&1 || fail "bench slurm exited $?: $(cat "$T/log/bench-slurm.out")"
grep -q "^#SBATCH --array=0-$((SHARDS - 1))$" "$T/job.sbatch" || fail "script has no array line for $SHARDS shards"

JOB=$(sbatch --parsable "$T/job.sbatch" 2>"$T/log/sbatch.err") || fail "sbatch failed: $(cat "$T/log/sbatch.err")"
JOB=${JOB%%;*}
log "submitted array job $JOB ($SHARDS tasks)"

# The local reference run while the cluster works.
"$BENCH" run "$T/tiny.toml" --out "$T/local" --data-cache "$T/cache" --no-weights -q >"$T/log/local.out" 2>&1 \
    || fail "local bench run exited $?"

START=$SECONDS
while squeue -h -j "$JOB" 2>/dev/null | grep -q .; do
    if ((SECONDS - START > DEADLINE_S)); then
        squeue -j "$JOB"
        fail "array job $JOB still queued or running after ${DEADLINE_S}s"
    fi
    sleep 1
done
log "array job $JOB finished after $((SECONDS - START))s"
for i in $(seq 0 $((SHARDS - 1))); do
    f="$T/log/jobs/bench-slurm-ci-${JOB}_$i.out"
    [ -f "$f" ] || fail "no log for task $i ($f)"
done

# ---- compare -------------------------------------------------------------------------------
"$BENCH" status "$T/cluster" --protocol "$T/tiny.toml" --shards $SHARDS >"$T/log/status.out" 2>&1
rc=$?
cat "$T/log/status.out"
[ $rc = 0 ] || fail "bench status exited $rc on the cluster's results"

local_ids=$(cd "$T/local/slurm-ci" && ls | sort)
cluster_ids=$(cd "$T/cluster/slurm-ci" && ls | sort)
[ "$local_ids" = "$cluster_ids" ] || fail "run ids differ: local [$local_ids] vs cluster [$cluster_ids]"
n=0
for id in $local_ids; do
    grep -q '"status": "complete"' "$T/cluster/slurm-ci/$id/manifest.json" || fail "$id is not complete on the cluster"
    cmp -s "$T/local/slurm-ci/$id/metrics.csv" "$T/cluster/slurm-ci/$id/metrics.csv" \
        || fail "$id: metrics.csv differs between the local run and the cluster"
    n=$((n + 1))
done
[ $n = 6 ] || fail "expected 6 runs, found $n"

# ---- resume: lose one run, status names its shard, re-submitting that shard alone restores it ----
victim=$(head -n 1 <<<"$local_ids")
rm -rf "${T:?}/cluster/slurm-ci/$victim"
"$BENCH" status "$T/cluster" --protocol "$T/tiny.toml" --shards $SHARDS >"$T/log/status2.out" 2>&1
rc=$?
[ $rc = 1 ] || fail "bench status exited $rc with $victim missing (expected 1)"
shard=$(sed -n 's/^re-run the shards not done.*--array=\([0-9,]*\) .*/\1/p' "$T/log/status2.out")
[ -n "$shard" ] || fail "bench status named no shard to re-run: $(cat "$T/log/status2.out")"
JOB=$(sbatch --parsable --array="$shard" "$T/job.sbatch" 2>"$T/log/sbatch.err") || fail "re-submit failed: $(cat "$T/log/sbatch.err")"
JOB=${JOB%%;*}
START=$SECONDS
while squeue -h -j "$JOB" 2>/dev/null | grep -q .; do
    ((SECONDS - START > DEADLINE_S / 2)) && fail "re-submitted shard $shard (job $JOB) not done after $((DEADLINE_S / 2))s"
    sleep 1
done
"$BENCH" status "$T/cluster" --protocol "$T/tiny.toml" --shards $SHARDS >/dev/null 2>&1 \
    || fail "bench status not 0 after re-submitting shard $shard"
cmp -s "$T/local/slurm-ci/$victim/metrics.csv" "$T/cluster/slurm-ci/$victim/metrics.csv" \
    || fail "$victim: metrics.csv differs after the re-run of shard $shard"
log "re-submitted shard $shard (job $JOB) restored $victim"
log "$n runs complete on the cluster, metrics.csv identical to the local run"
echo "slurm: 1 passed, 0 failed"

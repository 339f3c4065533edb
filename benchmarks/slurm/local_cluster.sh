#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for `benchmarks/run.py --launcher slurm` (docs/cluster.md).
#
#   benchmarks/slurm/local_cluster.sh start   # munged, slurmctld and slurmd; returns once the node is idle
#   export SLURM_CONF=/tmp/bench-slurm/slurm.conf   # what `start` prints: sbatch, squeue, sinfo read it
#   benchmarks/slurm/local_cluster.sh stop    # stops the three daemons by their pid files
#
# Needs Debian's (or Ubuntu's) packages: apt-get install slurmctld slurmd munge slurm-client.
# Everything it writes (config, munge key, state, logs, pid files) is under $BENCH_SLURM_DIR
# (default /tmp/bench-slurm); the daemons run as the calling user and listen on 127.0.0.1.
# BENCH_SLURM_CPUS=N advertises N CPUs instead of the machine's (Slurm's config_overrides), so that more
# light tasks run side by side; BENCH_SLURM_PORT=P puts slurmctld on port P and slurmd on P+1 instead of
# Slurm's 6817 and 6818, so that a second cluster (tests/test_slurm.py's own) can run beside a first one.
set -euo pipefail
PATH=$PATH:/usr/sbin # Debian puts the daemons there, outside a normal user's PATH

dir=${BENCH_SLURM_DIR:-/tmp/bench-slurm}
conf=$dir/slurm.conf
daemons=(slurmd slurmctld munged) # stop order

alive() { [ -f "$dir/$1.pid" ] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }

write_conf() {
	local user host node
	user=$(id -un)
	host=$(hostname -s)
	if [ -n "${BENCH_SLURM_CPUS:-}" ]; then
		node="NodeName=$host CPUs=$BENCH_SLURM_CPUS RealMemory=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')"
		echo "SlurmdParameters=config_overrides" >"$conf"
	else
		node=$(slurmd -C | head -n 1) # NodeName=<host> CPUs=... RealMemory=..., as slurmd will find them
		: >"$conf"
	fi
	cat >>"$conf" <<CONF
ClusterName=bench
SlurmctldHost=$host(127.0.0.1)
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
AuthInfo=socket=$dir/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
# A node that was down (a restart of slurmd) is back in service as soon as it registers.
ReturnToService=2
# SIGTERM to SIGKILL after a time limit or scancel: 5 s, not 30, so the tests' cut task ends soon.
KillWait=5
# No accounting database here (sacct is off): the controller keeps ended jobs for a day, so that
# squeue still gives their final state (TIMEOUT, CANCELLED, ...) to run.py --wait.
MinJobAge=86400
SlurmctldPort=${BENCH_SLURM_PORT:-6817}
SlurmdPort=$((${BENCH_SLURM_PORT:-6817} + 1))
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

start() {
	local cmd
	for cmd in munged mungekey slurmctld slurmd sinfo; do
		command -v "$cmd" >/dev/null || {
			echo "error: $cmd not found; install Slurm: apt-get install slurmctld slurmd munge slurm-client" >&2
			exit 2
		}
	done
	if alive slurmctld; then
		echo "already running; export SLURM_CONF=$conf"
		return
	fi
	mkdir -p "$dir/state" "$dir/spool" "$dir/log"
	chmod 755 "$dir" # munged: its socket's folder must be searchable by all
	[ -f "$dir/munge.key" ] || mungekey --create --keyfile="$dir/munge.key"
	munged --key-file="$dir/munge.key" --socket="$dir/munge.socket" --pid-file="$dir/munged.pid" \
		--log-file="$dir/log/munged.log" --seed-file="$dir/munged.seed"
	write_conf
	export SLURM_CONF=$conf
	slurmctld
	slurmd
	for _ in $(seq 100); do
		if [ "$(sinfo -h -o %t 2>/dev/null)" = idle ]; then
			echo "one-node Slurm cluster up ($(sinfo -h -o '%P %D node, %c CPUs')); export SLURM_CONF=$conf"
			return
		fi
		sleep 0.3
	done
	echo "error: the node did not become idle in 30 s; see $dir/log/ (sinfo: $(sinfo -h -o '%t %E' 2>&1))" >&2
	exit 1
}

stop() {
	local d pid
	for d in "${daemons[@]}"; do
		alive "$d" || continue
		pid=$(cat "$dir/$d.pid")
		kill "$pid"
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
	done
	echo "stopped (state kept in $dir)"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
*)
	echo "usage: $0 start|stop" >&2
	exit 2
	;;
esac

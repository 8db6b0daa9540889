#!/bin/bash
# What one run of ctt_nf_verdict costs, as the kernel measures it (run_time_ns / run_cnt with
# kernel.bpf_stats_enabled=1), per workload through a DNAT like `cargo xtask bench`'s, against
# reference programs at the same hooks: `empty` (return NF_ACCEPT) and `nfct` (the two loads and
# the compare that ctt_nf_verdict's hot path is). Root; take /tmp/ctt-itest.lock around it.
#
#   tests/scripts/nf-cost.sh [SECS [ROUNDS [WORKLOADS [OBSERVERS]]]]
#   e.g. tests/scripts/nf-cost.sh 5 3 "bulk rr crr" "ct empty nfct"
#
# Observers: `ct` (ct-trace --attach netfilter, $CT_TRACE_BIN or target/release/ct-trace),
# `ct=PATH` (another ct-trace binary, e.g. main's, for a before/after in one run), `empty`, `nfct`,
# `none` (no observer) and `destroy` (`conntrack -E -e DESTROY` in the node's namespace).
#
# Prints one line per run: workload observer runs ns ns/run; then the median ns/run of each.
# bpf_stats_enabled is put back to its previous value at exit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
BIN=${CT_TRACE_BIN:-$root/target/release/ct-trace}
LOAD=${CTT_LOAD_BIN:-$root/target/release/ctt-load}
SECS=${1:-5}
ROUNDS=${2:-3}
WORKLOADS=${3:-bulk rr crr}
OBSERVERS=${4:-ct empty nfct}
SERVICE=10.96.0.10 SERVER=10.77.2.2 IPERF_PORT=5201 LOAD_PORT=7000
p=nfc-$$
C=$p-cli N=$p-node S=$p-srv
tmp=$(mktemp -d)
prev=$(cat /proc/sys/kernel/bpf_stats_enabled)
pids=()
cleanup() {
	echo "$prev" >/proc/sys/kernel/bpf_stats_enabled
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	for ns in $C $N $S; do ip netns del "$ns" 2>/dev/null || true; done
	rm -rf "$tmp"
}
trap cleanup EXIT
for ns in $C $N $S; do ip netns add "$ns" && ip -n "$ns" link set lo up; done
ip -n $N link add eth1 type veth peer name eth0 netns $C
ip -n $N link add eth2 type veth peer name eth0 netns $S
for x in "$N eth1 10.77.1.1/24" "$N eth2 10.77.2.1/24" "$C eth0 10.77.1.2/24" "$S eth0 10.77.2.2/24"; do
	set -- $x
	ip -n "$1" addr add "$3" dev "$2" && ip -n "$1" link set "$2" up
done
ip -n $C route add default via 10.77.1.1
ip -n $S route add default via 10.77.2.1
ip netns exec $C sh -c 'sysctl -qw net.ipv4.tcp_tw_reuse=1; echo 1024 65535 >/proc/sys/net/ipv4/ip_local_port_range'
ip netns exec $N sysctl -qw net.ipv4.ip_forward=1
for port in $IPERF_PORT $LOAD_PORT; do
	ip netns exec $N iptables -t nat -A PREROUTING -d $SERVICE -p tcp --dport $port \
		-j DNAT --to-destination $SERVER:$port
done
ip netns exec $S iperf3 -s -p $IPERF_PORT >/dev/null 2>&1 &
pids+=($!)
ip netns exec $S "$LOAD" server $LOAD_PORT >/dev/null 2>&1 &
pids+=($!)
sleep 1
# _nfct's offset in struct sk_buff, for the `nfct` reference program.
bpftool btf dump file /sys/kernel/btf/vmlinux format raw >"$tmp/btf"
nfct_off=$(awk "/STRUCT 'sk_buff'/{s=1} s && /'_nfct'/{sub(/.*bits_offset=/,\"\"); print \$1/8; exit}" "$tmp/btf")
echo 1 >/proc/sys/kernel/bpf_stats_enabled

workload() {
	case $1 in
	bulk) ip netns exec $C iperf3 -c $SERVICE -p $IPERF_PORT -t "$SECS" -J |
		python3 -c 'import json,sys; print("%.2f Gbit/s" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))' ;;
	rr | crr) ip netns exec $C "$LOAD" "$1" $SERVICE $LOAD_PORT "$SECS" ;;
	esac
}

cpu() { # pid -> "thread ticks" lines (user + system), sorted by thread name
	for t in /proc/$1/task/*; do
		local st
		st=$(cat "$t/stat" 2>/dev/null) || continue
		set -- ${st##*) }
		echo "$(tr -c 'A-Za-z0-9\n-' _ <"$t/comm")/${t##*/} $((${12} + ${13}))"
	done | sort
}

run() { # workload observer -> "runs ns"
	local w=$1 o=$2 out
	case $o in
	ct | ct=*)
		local bin=$BIN
		[ "$o" = ct ] || bin=${o#ct=}
		rm -f "$tmp/ready"
		ip netns exec $N "$bin" --attach netfilter -o json -q --ready-file "$tmp/ready" \
			>"$tmp/ct.json" 2>"$tmp/ct.err" &
		local pid=$!
		for _ in $(seq 300); do [ -e "$tmp/ready" ] && break; sleep 0.1; done
		[ -e "$tmp/ready" ] || { cat "$tmp/ct.err" >&2; exit 1; }
		cpu "$pid" >"$tmp/cpu0"
		out=$(workload "$w")
		cpu "$pid" >"$tmp/cpu1"
		# ct-trace's own CPU while the workload ran, by thread.
		echo "# $w $o cpu: $(join "$tmp/cpu0" "$tmp/cpu1" | awk '{printf "%s %.2fs ", $1, ($3-$2)/'"$(getconf CLK_TCK)"'}')" >&2
		kill -INT $pid && wait $pid
		python3 - "$tmp/ct.json" <<'PY'
import json, sys
s = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
for p in s["programs"]:
    if p["program"] == "ctt_nf_verdict":
        print(p["runs"], p["run_ns"])
PY
		;;
	none)
		out=$(workload "$w")
		echo "0 0"
		;;
	destroy)
		# A ctnetlink DESTROY listener alone (what ct-trace's lost-entry watcher subscribes
		# to), without ct-trace: what the kernel's conntrack events cost the workload.
		ip netns exec $N conntrack -E -e DESTROY >/dev/null 2>&1 &
		local pid=$!
		sleep 0.3
		out=$(workload "$w")
		kill $pid && wait $pid 2>/dev/null || true
		echo "0 0"
		;;
	empty | nfct)
		coproc F { ip netns exec $N python3 "$here/nf_floor.py" $o $nfct_off; }
		read -r line <&"${F[0]}"
		[ "$line" = ready ] || exit 1
		out=$(workload "$w")
		echo >&"${F[1]}"
		read -r runs ns <&"${F[0]}"
		wait $F_PID
		echo "$runs $ns"
		;;
	esac
	echo "# $w $o: $out" >&2
	echo "$w $o $out" >>"$tmp/rates"
}

for w in $WORKLOADS; do
	for r in $(seq "$ROUNDS"); do
		for o in $OBSERVERS; do
			read -r runs ns < <(run "$w" "$o")
			echo "$w $o $runs $ns $(python3 -c "print('%.1f' % ($ns / max($runs, 1)))")" | tee -a "$tmp/rows"
		done
	done
done
echo "median rate (workload's unit):"
python3 - "$tmp/rates" <<'PY'
import statistics, sys
rows = {}
for l in open(sys.argv[1]):
    w, o, *out = l.split()
    rate = next(float(x) for x in out if x.replace(".", "", 1).isdigit())
    rows.setdefault((w, o), []).append(rate)
for (w, o), v in rows.items():
    print(f"{w:5} {o:8} {statistics.median(v):10.1f}  (min {min(v):.1f} max {max(v):.1f})")
PY
echo "median ns/run:"
python3 - "$tmp/rows" <<'PY'
import statistics, sys
rows = {}
for l in open(sys.argv[1]):
    w, o, runs, ns, per = l.split()
    rows.setdefault((w, o), []).append((float(per), int(runs)))
for (w, o), v in rows.items():
    per = [x[0] for x in v]
    print(f"{w:5} {o:6} {statistics.median(per):7.1f}  (min {min(per):.1f} max {max(per):.1f}, runs/round {int(statistics.median(x[1] for x in v))})")
PY

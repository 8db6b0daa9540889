#!/bin/sh
# Shows the failure ct-trace is about, once, in namespaces this script creates and deletes:
# client -> node (DNAT 10.96.0.10:80 -> 10.77.2.2:8080, no INVALID drop rule) -> server; the server
# sends one segment 2^30 past conntrack's window; ct-trace runs in the node namespace.
# Usage (root): tests/scripts/demo.sh [CT_TRACE_ARGS...]   e.g. -o json, --attach kprobe
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=${CT_TRACE_BIN:-$here/../../target/release/ct-trace}
py=/usr/bin/python3; [ -x $py ] || py=python3
c=ctt-demo-cli n=ctt-demo-node s=ctt-demo-srv
cleanup() {
  [ -n "${pid:-}" ] && kill -INT "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  for ns in $c $n $s; do ip netns del $ns 2>/dev/null || true; done
  rm -f /tmp/ctt-demo-ready
}
trap cleanup EXIT INT TERM
for ns in $c $n $s; do ip netns add $ns; done
ip -n $n link add eth1 type veth peer name eth0 netns $c
ip -n $n link add eth2 type veth peer name eth0 netns $s
ip -n $n addr add 10.77.1.1/24 dev eth1; ip -n $n addr add 10.77.2.1/24 dev eth2
ip -n $c addr add 10.77.1.2/24 dev eth0; ip -n $s addr add 10.77.2.2/24 dev eth0
ip -n $n link set eth1 up; ip -n $n link set eth2 up
ip -n $c link set eth0 up; ip -n $s link set eth0 up
ip -n $c route add default via 10.77.1.1
ip -n $s route add default via 10.77.2.1
ip netns exec $n sysctl -qw net.ipv4.ip_forward=1
ip netns exec $n iptables -t nat -A PREROUTING -d 10.96.0.10 -p tcp --dport 80 \
  -j DNAT --to-destination 10.77.2.2:8080
rm -f /tmp/ctt-demo-ready
# Every reset, so that the server's reset connection shows too.
ip netns exec $n "$bin" --ready-file /tmp/ctt-demo-ready --duration 30 --resets all "$@" &
pid=$!
i=0; while [ ! -e /tmp/ctt-demo-ready ]; do i=$((i+1)); [ $i -lt 300 ] || exit 1; sleep 0.1; done
ip netns exec $s $py "$here/segment.py" seq_over $c >/dev/null
sleep 1

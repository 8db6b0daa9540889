#!/bin/sh
# Shows the failure ct-trace is about, once, with the lab's own code (one topology for the
# lab, this demo and nothing else to keep in step): `ct-trace lab run --scenario out-of-window`
# builds client -> node (kube-proxy's DNAT of 10.96.0.10:80 to 10.78.2.2:8080, no INVALID drop
# rule) -> server in namespaces of its own, runs ct-trace in the node, has the server send one
# segment 2^30 past conntrack's window, prints ct-trace's events and the verdict, and deletes
# everything, also on Ctrl-C.
# Usage (root): tests/scripts/demo.sh [-o json] [--attach MODE] [--fix FIX] [--pcap FILE]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=${CT_TRACE_BIN:-$here/../../target/release/ct-trace}
exec "$bin" lab run --scenario out-of-window "$@"

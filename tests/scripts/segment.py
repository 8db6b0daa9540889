#!/usr/bin/python3
"""Crafts one TCP segment from the server side of an established connection.

Run inside the server namespace:  segment.py MODE CLIENT_NETNS_NAME [v6] [n=COUNT]

A client socket is created in CLIENT_NETNS_NAME and connects to the service address; the node
namespace DNATs it to this server. The exact sequence numbers of the connection are read from
the server socket with TCP_REPAIR (no sniffing), then one segment is sent with scapy:

  seq_over   ACK with SEQ 2^30 past the receiver's window     -> INVALID ("SEQ is over upper bound")
  ack_over   ACK acknowledging 10^7 bytes never sent          -> INVALID ("ACK is over upper bound")
  bad_flags  SYN|FIN|RST                                      -> INVALID ("invalid tcp flag combination")
  rst_out    RST with SEQ 2^30 past the window                -> INVALID
  ignore     data with SEQ 100000 below the window (boom-server) -> IGNORE on 6.1+, not INVALID

With n=COUNT, does it COUNT times in a row, each on a fresh connection.

Prints one JSON line per segment: the client port, the crafted seq/ack, and whether the server's
own connection was reset afterwards (the incident: a healthy connection killed).
"""
import ctypes
import json
import os
import socket
import sys
import time

from scapy.all import IP, IPv6, TCP, Raw, conf, send  # noqa: E402

conf.verb = 0
mode, client_ns = sys.argv[1], sys.argv[2]
v6 = "v6" in sys.argv[3:]
count = next((int(a[2:]) for a in sys.argv[3:] if a.startswith("n=")), 1)
fam = socket.AF_INET6 if v6 else socket.AF_INET
service = ("fd96::10" if v6 else "10.96.0.10", 80)
server_ip, client_ip = ("fd77:2::2", "fd77:1::2") if v6 else ("10.77.2.2", "10.77.1.2")

libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def setns(fd):
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


home = os.open("/proc/self/ns/net", os.O_RDONLY)
other = os.open(f"/run/netns/{client_ns}", os.O_RDONLY)

lst = socket.socket(fam, socket.SOCK_STREAM)
lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind((server_ip, 8080))
lst.listen(1)


def once():
    setns(other)
    cli = socket.socket(fam, socket.SOCK_STREAM)  # lives in the client namespace
    setns(home)
    cli.settimeout(5)
    cli.connect(service)
    srv, _ = lst.accept()
    cport = cli.getsockname()[1]
    time.sleep(0.1)

    TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ = 19, 20, 21
    srv.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    srv.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, 2)  # send queue
    s_next = int.from_bytes(srv.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, 4), "little")
    srv.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, 1)  # receive queue
    c_next = int.from_bytes(srv.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, 4), "little")
    srv.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, -1)  # off, no window probe

    M = 2**32
    seq, ack, flags, payload = s_next, c_next, "A", b""
    if mode == "seq_over":
        seq = (s_next + 2**30) % M
    elif mode == "ack_over":
        ack = (c_next + 10_000_000) % M
    elif mode == "bad_flags":
        flags = "FSR"
    elif mode == "rst_out":
        seq, flags, ack = (s_next + 2**30) % M, "R", 0
    elif mode == "ignore":
        seq, payload = (s_next - 100_000) % M, b"x" * 10
    else:
        sys.exit(f"unknown mode {mode}")

    ip = IPv6(src=server_ip, dst=client_ip) if v6 else IP(src=server_ip, dst=client_ip)
    send(ip / TCP(sport=8080, dport=cport, flags=flags, seq=seq, ack=ack, window=502) / Raw(payload))
    time.sleep(0.5)

    server_reset = False
    try:
        srv.setblocking(False)
        server_reset = srv.recv(1) == b"" and False
    except ConnectionResetError:
        server_reset = True
    except BlockingIOError:
        pass
    print(json.dumps({"cport": cport, "seq": seq, "ack": ack, "flags": flags,
                      "s_next": s_next, "c_next": c_next, "server_reset": server_reset}), flush=True)
    cli.close()
    srv.close()


for _ in range(count):
    once()

#!/usr/bin/env python3
"""Held connections for the lost-entry tests, bounded in count and time.

server PORT N DELAY: accept N connections, then, DELAY seconds after the last one, send one
    line on each (the backend speaking after its flow's conntrack entry went); exit.
client ADDR PORT N WAIT [READY]: open N connections to ADDR:PORT, print their local ports (one
    line; also written to the file READY once every connection is up), hold them WAIT seconds,
    then close them with a RST; exit.
syns ADDR PORT N WAIT: start N connections to ADDR:PORT without waiting for them (one SYN each,
    from N source ports), print the ports, hold WAIT seconds; exit.
"""
import os
import socket
import struct
import sys
import time


def server(port, n, delay):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen(n)
    ls.settimeout(20)
    conns = [ls.accept()[0] for _ in range(n)]
    time.sleep(delay)
    for c in conns:
        try:
            c.send(b"hello after the entry went\n")
        except OSError:
            pass
    time.sleep(1)


def client(addr, port, n, wait, ready=None):
    socks = []
    for _ in range(n):
        s = socket.create_connection((addr, port), timeout=20)
        socks.append(s)
    ports = " ".join(str(s.getsockname()[1]) for s in socks)
    print(ports, flush=True)
    if ready:
        with open(ready + ".tmp", "w") as f:
            f.write(ports)
        os.rename(ready + ".tmp", ready)
    time.sleep(wait)
    # Close with a RST (linger 0): a FIN towards a Service whose entry is gone would be
    # retransmitted (INVALID at the node each time) for minutes after the test.
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()


def syns(addr, port, n, wait):
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect((addr, port))
        except BlockingIOError:
            pass
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks), flush=True)
    time.sleep(wait)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "syns":
        syns(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    elif mode == "server":
        server(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    else:
        ready = sys.argv[6] if len(sys.argv) > 6 else None
        client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), ready)

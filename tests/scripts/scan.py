#!/usr/bin/python3
"""A port scan, as an Internet-facing node receives them all day.

Run inside a namespace:  scan.py DST PORT[,PORT...] [n=COUNT] [kinds=synfin,fin,null,xmas,ack]

Sends COUNT segments of each kind to each port of DST, each from a fresh source port and with a
random sequence number, without any handshake (scapy; the kernel of this namespace has no
socket for them and ignores what comes back):

  synfin  SYN|FIN        fin   FIN        null  no flag at all
  xmas    FIN|PSH|URG    ack   ACK (an ACK scan: conntrack picks it up mid-stream)

Prints one JSON line: how many segments of each kind went to each port.
"""
import json
import random
import sys
import time

from scapy.all import IP, TCP, L3RawSocket, conf, send  # noqa: E402

conf.verb = 0
FLAGS = {"synfin": "SF", "fin": "F", "null": "", "xmas": "FPU", "ack": "A"}

dst = sys.argv[1]
ports = [int(p) for p in sys.argv[2].split(",")]
count = next((int(a[2:]) for a in sys.argv[3:] if a.startswith("n=")), 10)
kinds = next((a[6:].split(",") for a in sys.argv[3:] if a.startswith("kinds=")), list(FLAGS))

if dst.startswith("127."):
    # scapy's default link-layer socket cannot send on the loopback device: a raw IP socket
    # sends it as a local process would (through LOCAL_OUT, where conntrack sees it).
    conf.L3socket = L3RawSocket

sent = {}
sport = random.randint(20000, 40000)
for kind in kinds:
    for port in ports:
        for _ in range(count):
            sport += 1
            send(IP(dst=dst) / TCP(sport=sport, dport=port, flags=FLAGS[kind],
                                   seq=random.getrandbits(32),
                                   ack=random.getrandbits(32) if "A" in FLAGS[kind] else 0))
            sent[f"{kind}:{port}"] = sent.get(f"{kind}:{port}", 0) + 1
            # A scan is fast, but the resets it causes must not come in one burst the test
            # cannot tell apart: a millisecond apart is still a thousand segments a second.
            time.sleep(0.001)
print(json.dumps(sent))

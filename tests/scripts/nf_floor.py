#!/usr/bin/env python3
"""A reference netfilter BPF program for nf-cost.sh: what a run costs the kernel's run_time_ns
with (almost) nothing in the program, so ctt_nf_verdict's figure can be read against it.

  nf_floor.py empty        r0 = NF_ACCEPT; exit
  nf_floor.py nfct OFF     skb = ctx->skb; nfct = skb->_nfct (OFF from BTF); compare; NF_ACCEPT
  nf_floor.py testrun KIND [OFF]   no hook: BPF_PROG_TEST_RUN (6.5+) with repeat 1,000,000 on
                           an IPv4 TCP packet, which times the loop, not each run: the
                           program's cost without the per-run accounting of bpf_stats_enabled

Attaches at IPv4 PRE_ROUTING and LOCAL_OUT of the caller's namespace, priority -190 (behind
conntrack), prints `ready` (and creates $CTT_READY_FILE when set), waits for a line on stdin
(or, when stdin is at its end from the start, e.g. /dev/null, for SIGINT or SIGTERM), then
prints `RUNS NS`. `cargo xtask bench` runs it the second way (xtask/src/bench/cost.rs).
"""
import ctypes, os, signal, struct, sys

libc = ctypes.CDLL(None, use_errno=True)
SYS_BPF = 321
BPF_PROG_LOAD, BPF_OBJ_GET_INFO_BY_FD, BPF_LINK_CREATE = 5, 15, 28
BPF_PROG_TYPE_NETFILTER, BPF_NETFILTER = 32, 45


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(bytes(attr), 256)
    r = libc.syscall(SYS_BPF, cmd, buf, 256)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"bpf({cmd}): {os.strerror(e)}")
    return r, buf.raw


def insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def program(kind, off):
    mov_r0_1, exit_ = insn(0xB7, 0, 0, 0, 1), insn(0x95)
    if kind == "empty":
        return mov_r0_1 + exit_
    # r2 = *(u64 *)(r1 + 8); r3 = *(u64 *)(r2 + off); if r3 != 0 goto +0; r0 = 1; exit
    return (insn(0x79, 2, 1, 8) + insn(0x79, 3, 2, off) + insn(0x55, 3, 0, 0, 0)
            + mov_r0_1 + exit_)


def test_run(fd):
    # An IPv4/TCP SYN, 10.0.0.1:1 -> 10.0.0.2:2 (the kernel only parses what it needs).
    pkt = bytes.fromhex("450000280000400040060000" "0a0000010a000002"
                        "000100020000000000000000" "50020000" "00000000")
    data = ctypes.create_string_buffer(pkt, len(pkt))
    attr = struct.pack("<IIIIQQII", fd, 0, len(pkt), 0, ctypes.addressof(data), 0,
                       1_000_000, 0)
    _, out = bpf(10, attr)  # BPF_PROG_TEST_RUN
    print("%d ns a run (BPF_PROG_TEST_RUN loop)" % struct.unpack_from("<I", out, 36))


def main():
    testrun = sys.argv[1] == "testrun"
    if testrun:
        del sys.argv[1]
    kind = sys.argv[1]
    off = int(sys.argv[2]) if kind == "nfct" else 0
    code = program(kind, off)
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(65536)
    attr = struct.pack("<IIQQIIQII16sII", BPF_PROG_TYPE_NETFILTER, len(code) // 8,
                       ctypes.addressof(insns), ctypes.addressof(lic), 1, len(log),
                       ctypes.addressof(log), 0, 0, b"ctt_floor", 0, BPF_NETFILTER)
    try:
        fd, _ = bpf(BPF_PROG_LOAD, attr)
    except OSError:
        sys.exit("load failed: " + log.value.decode(errors="replace"))
    if testrun:
        test_run(fd)
        return
    links = []
    for hook in (0, 3):  # NF_INET_PRE_ROUTING, NF_INET_LOCAL_OUT
        lc = struct.pack("<IIIIIIiI", fd, 0, BPF_NETFILTER, 0, 2, hook, -190, 0)
        links.append(bpf(BPF_LINK_CREATE, lc)[0])
    print("ready", flush=True)
    ready = os.environ.get("CTT_READY_FILE")
    # Both end the wait, even where SIGINT came in ignored (a shell's background job: Python
    # then keeps SIG_IGN, and `cargo xtask bench` run with `&` could never stop it).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if ready:
            open(ready, "x").close()
        if not sys.stdin.readline():
            signal.pause()
    except KeyboardInterrupt:
        pass
    info = ctypes.create_string_buffer(256)
    bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", fd, 256, ctypes.addressof(info)))
    # struct bpf_prog_info: run_time_ns at 192, run_cnt at 200 (include/uapi/linux/bpf.h).
    ns, runs = struct.unpack_from("<QQ", info.raw, 192)
    print(runs, ns, flush=True)


main()

//! Kprobes on conntrack itself: why it refused a packet (its log helpers), and the INVALID
//! verdict on kernels without netfilter BPF programs (an fexit program on `nf_conntrack_in`, or a
//! kprobe and kretprobe pair where the kernel has no BPF trampolines).
//!
//! Log helpers (net/netfilter/nf_conntrack_proto.c; with the hook state since 5.14, commit
//! 62eec0d73393, and without it before: one program per prototype, the plan picks the one
//! the running kernel's BTF - or, without module BTF, its version - shows):
//! - `nf_ct_l4proto_log_invalid(skb, ct, state, fmt, ...)`: a tracker refused a packet of a known
//!   entry. The TCP window checks reach it through `nf_tcp_log_invalid()` with the literal format
//!   ("SEQ is over upper bound %u (over the window of the receiver)", ...) and its value as the
//!   first variadic argument, also for the outcomes that only IGNORE the packet.
//! - `nf_l4proto_log_invalid(skb, state, protonum, fmt, ...)`: refused before any entry
//!   (`tcp_error()`: bad flags, truncated, checksum).
//! - Before 5.14: `nf_ct_l4proto_log_invalid(skb, ct, fmt, ...)` and
//!   `nf_l4proto_log_invalid(skb, net, pf, protonum, fmt, ...)`; no hook state, so the
//!   namespace comes from the entry (or the `net` argument) and the hook is unknown. Before 6.1
//!   the window checks log "%s" with the message as the first variadic argument (Debian's
//!   5.10.262, nf_conntrack_proto_tcp.c:703), which is what is read then.
//!
//! Both return at once when `net.netfilter.nf_conntrack_log_invalid` is 0, but their entry runs:
//! a kprobe there reads the reason with no sysctl change, and fires only for refused packets, so
//! ordinary traffic pays nothing. When the sysctl is set, the first calls the second with "%pV";
//! that inner call is skipped. They are variadic, so fentry cannot attach (the BPF trampoline
//! refuses variadic functions): kprobes are the only way.

use aya_ebpf::{
    helpers::{bpf_ktime_get_boot_ns, bpf_probe_read_kernel_buf, bpf_probe_read_kernel_str_bytes},
    macros::{fexit, kprobe, kretprobe, map},
    maps::PerCpuArray,
    programs::{FExitContext, ProbeContext, RetProbeContext},
};
use conntrack_common::{
    ctinfo, Counter, Kind, Reason, ReasonClass, CT_TCP_BYTES, CT_TUPLE_BYTES, FMT_BYTES,
};

use crate::{
    config,
    maps::{allow, count, EVENTS},
    netfilter::{on_invalid, on_new, syn_or_not_tcp},
    skb::{header, netns_inum, read, read_packet},
};

/// Whether a hook state belongs to the namespace ct-trace watches.
#[inline(always)]
fn watched(state: *const u8) -> bool {
    watched_net(state_net(state))
}

/// `state->net`.
#[inline(always)]
fn state_net(state: *const u8) -> *const u8 {
    let o = config::offsets();
    // SAFETY: probe read of a kernel pointer.
    unsafe { read::<u64>(state, o.state_net) }.unwrap_or(0) as *const u8
}

/// Whether a `struct net *` is the namespace ct-trace watches.
#[inline(always)]
fn watched_net(net: *const u8) -> bool {
    netns_inum(net, &config::offsets()) == config::target_netns()
}

/// The namespace of a conntrack entry (`nf_ct_net(ct)`: `ct->ct_net.net`), or of the packet's
/// device when the entry's field is not known.
#[inline(always)]
fn ct_net(ct: *const u8, skb: *const u8) -> *const u8 {
    let c = config::ct_offsets();
    let o = config::offsets();
    // SAFETY: probe reads of kernel pointers.
    unsafe {
        if !ct.is_null() && c.net != 0 {
            return read::<u64>(ct, c.net).unwrap_or(0) as *const u8;
        }
        let dev = read::<u64>(skb, o.skb_dev).unwrap_or(0) as *const u8;
        if dev.is_null() {
            return core::ptr::null();
        }
        read::<u64>(dev, o.dev_nd_net).unwrap_or(0) as *const u8
    }
}

/// `state->hook`.
#[inline(always)]
fn state_hook(state: *const u8) -> u8 {
    // SAFETY: probe read of a kernel pointer.
    unsafe { read::<u8>(state, config::offsets().state_hook) }.unwrap_or(u8::MAX)
}

/// `nf_ct_l4proto_log_invalid(skb, ct, state, fmt, ...)` (5.14+): the packet had a conntrack
/// entry.
#[kprobe]
pub fn ctt_ct_log(ctx: ProbeContext) -> u32 {
    let skb: *const u8 = ctx.arg(0).unwrap_or(core::ptr::null());
    let ct: *const u8 = ctx.arg(1).unwrap_or(core::ptr::null());
    let state: *const u8 = ctx.arg(2).unwrap_or(core::ptr::null());
    let fmt: *const u8 = ctx.arg(3).unwrap_or(core::ptr::null());
    let args = [ctx.arg(4).unwrap_or(0), ctx.arg(5).unwrap_or(0)];
    if !state.is_null() {
        log_reason(skb, ct, state_net(state), state_hook(state), fmt, args);
    }
    0
}

/// `nf_l4proto_log_invalid(skb, state, protonum, fmt, ...)` (5.14+): refused before any entry.
#[kprobe]
pub fn ctt_l4_log(ctx: ProbeContext) -> u32 {
    let skb: *const u8 = ctx.arg(0).unwrap_or(core::ptr::null());
    let state: *const u8 = ctx.arg(1).unwrap_or(core::ptr::null());
    let fmt: *const u8 = ctx.arg(3).unwrap_or(core::ptr::null());
    let args = [ctx.arg(4).unwrap_or(0), ctx.arg(5).unwrap_or(0)];
    if !state.is_null() {
        let (net, hook) = (state_net(state), state_hook(state));
        log_reason(skb, core::ptr::null(), net, hook, fmt, args);
    }
    0
}

/// `nf_ct_l4proto_log_invalid(skb, ct, fmt, ...)` (before 5.14): no hook state; the entry names
/// the namespace.
#[kprobe]
pub fn ctt_ct_log5(ctx: ProbeContext) -> u32 {
    let skb: *const u8 = ctx.arg(0).unwrap_or(core::ptr::null());
    let ct: *const u8 = ctx.arg(1).unwrap_or(core::ptr::null());
    let fmt: *const u8 = ctx.arg(2).unwrap_or(core::ptr::null());
    let args = [ctx.arg(3).unwrap_or(0), ctx.arg(4).unwrap_or(0)];
    if !skb.is_null() {
        log_reason(skb, ct, ct_net(ct, skb), u8::MAX, fmt, args);
    }
    0
}

/// `nf_l4proto_log_invalid(skb, net, pf, protonum, fmt, ...)` (before 5.14): the fifth argument
/// is the format, and the first variadic one (the message of a "%s") is the sixth, the last
/// passed in a register on x86-64.
#[kprobe]
pub fn ctt_l4_log5(ctx: ProbeContext) -> u32 {
    let skb: *const u8 = ctx.arg(0).unwrap_or(core::ptr::null());
    let net: *const u8 = ctx.arg(1).unwrap_or(core::ptr::null());
    let fmt: *const u8 = ctx.arg(4).unwrap_or(core::ptr::null());
    let args = [ctx.arg(5).unwrap_or(0), 0];
    log_reason(skb, core::ptr::null(), net, u8::MAX, fmt, args);
    0
}

#[inline(always)]
fn log_reason(
    skb: *const u8,
    ct: *const u8,
    net: *const u8,
    hook: u8,
    fmt: *const u8,
    args: [u64; 2],
) {
    if skb.is_null() || net.is_null() || fmt.is_null() || !watched_net(net) {
        return;
    }
    // SAFETY: probe read of the format string's first bytes.
    let head = unsafe { read::<[u8; 4]>(fmt, 0) }.unwrap_or([0; 4]);
    if head[..3] == *b"%pV" {
        // The inner call of a helper that already reported this packet.
        return;
    }
    // `tcp_error()` logs its message through a bare "%s" (nf_conntrack_proto_tcp.c:
    // `nf_l4proto_log_invalid(skb, state, IPPROTO_TCP, "%s", msg)`): take the message.
    let text = if head[..3] == *b"%s\0" && args[0] != 0 {
        args[0] as *const u8
    } else {
        fmt
    };
    count(class(text));
    if !allow(Kind::Reason, false) {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<Reason>(0) else {
        count(Counter::LostReason);
        return;
    };
    let o = config::offsets();
    let c = config::ct_offsets();
    let r = entry.as_mut_ptr();
    // SAFETY: `r` points at a reserved ring buffer record of the right size; every field is
    // written before the record is submitted. Kernel memory is only read through probe reads.
    unsafe {
        (*r).header = header(Kind::Reason);
        (*r).packet = Default::default();
        if !read_packet(skb, &o, &mut (*r).packet) {
            count(Counter::ReadFailed);
        }
        (*r).packet.netns = config::target_netns();
        (*r).skb = skb as u64;
        (*r).args = args;
        (*r).hook = hook;
        (*r)._pad = 0;
        (*r)._pad2 = 0;
        (*r).fmt = [0; FMT_BYTES];
        let _ = bpf_probe_read_kernel_str_bytes(text, &mut (*r).fmt);
        (*r).ct_tcp = [0; CT_TCP_BYTES];
        (*r).ct_tuples = [[0; CT_TUPLE_BYTES]; 2];
        (*r).ct_status = 0;
        (*r).has_ct = 0;
        if !ct.is_null() && c.proto_tcp != 0 {
            (*r).ct_status = read::<u64>(ct, c.status).unwrap_or(0);
            // Straight into the record: these copies would not fit the 512-byte BPF stack.
            let ok = bpf_probe_read_kernel_buf(ct.add(c.proto_tcp as usize), &mut (*r).ct_tcp)
                .is_ok()
                && bpf_probe_read_kernel_buf(
                    ct.add(c.tuple_original as usize),
                    &mut (*r).ct_tuples[0],
                )
                .is_ok()
                && bpf_probe_read_kernel_buf(
                    ct.add(c.tuple_reply as usize),
                    &mut (*r).ct_tuples[1],
                )
                .is_ok();
            (*r).has_ct = u8::from(ok);
        }
    }
    entry.submit(crate::maps::wakeup());
}

/// The class of a conntrack log message, by its first words (nf_conntrack_proto_tcp.c:
/// "SEQ is over upper bound %u ...", "ACK is under the lower bound ...", tcp_error()'s
/// "invalid tcp flag combination", the 6.1+ IGNORE outcomes' "ignored ..."): the shared
/// `ReasonClass`, told from the 12 bytes read here, and the kernel counter it keeps.
#[inline(always)]
fn class(text: *const u8) -> Counter {
    // SAFETY: probe read of a kernel string's first bytes (a shorter string reads its NUL and
    // whatever follows it, which no prefix can match across).
    let w = unsafe { read::<[u8; 12]>(text, 0) }.unwrap_or([0; 12]);
    ReasonClass::of_prefix(&w).counter()
}

/// One `nf_conntrack_in()` call in progress on a CPU. Softirq processing can interrupt a
/// LOCAL_OUT call made in process context and enter `nf_conntrack_in()` again, so the frames form
/// a per-CPU stack (`CT_IN_DEPTH` + `CT_IN_FRAMES`), not a slot. Map lookups by index keep every
/// access bounds-checked by the kernel (the verifier refuses a computed index into one value).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CtInFrame {
    skb: u64,
    state: u64,
    ts: u64,
}

const STACK_DEPTH: u32 = 4;
/// No `nf_conntrack_in()` call lasts this long: a frame this old lost its return (the kretprobe
/// instances ran out, `maxactive`), and the stack restarts.
const STALE_NS: u64 = 1_000_000_000;

#[map]
static CT_IN_DEPTH: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[map]
static CT_IN_FRAMES: PerCpuArray<CtInFrame> = PerCpuArray::with_max_entries(STACK_DEPTH, 0);

/// `nf_conntrack_in(struct sk_buff *skb, const struct nf_hook_state *state)`
/// (net/netfilter/nf_conntrack_core.c, 5.x-7.x): remembers its arguments for the return probe.
/// This runs for every packet conntrack sees: it is the fallback for kernels before 6.4, where no
/// netfilter BPF program can sit behind conntrack. Per-CPU stores only, no shared map update.
#[kprobe]
pub fn ctt_ct_in(ctx: ProbeContext) -> u32 {
    let Some(depth) = CT_IN_DEPTH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU value; a kprobe program cannot be preempted by another on this CPU.
    let depth = unsafe { &mut *depth };
    // SAFETY: helper call without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if *depth > 0 {
        if let Some(top) = CT_IN_FRAMES.get_ptr(*depth - 1) {
            // SAFETY: per-CPU value.
            if now.wrapping_sub(unsafe { (*top).ts }) > STALE_NS {
                count(Counter::StackLost);
                *depth = 0;
            }
        }
    }
    match CT_IN_FRAMES.get_ptr_mut(*depth) {
        // SAFETY: per-CPU value.
        Some(f) => unsafe {
            *f = CtInFrame {
                skb: ctx.arg::<u64>(0).unwrap_or(0),
                state: ctx.arg::<u64>(1).unwrap_or(0),
                ts: now,
            };
        },
        None => count(Counter::StackLost),
    }
    *depth = depth.saturating_add(1);
    0
}

#[kretprobe]
pub fn ctt_ct_in_ret(ctx: RetProbeContext) -> u32 {
    let Some(depth) = CT_IN_DEPTH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: as in ctt_ct_in.
    let depth = unsafe { &mut *depth };
    if *depth == 0 {
        return 0;
    }
    *depth -= 1;
    let Some(frame) = CT_IN_FRAMES.get_ptr(*depth) else {
        return 0;
    };
    // SAFETY: per-CPU value.
    let frame = unsafe { *frame };
    let (skb, state) = (frame.skb as *const u8, frame.state as *const u8);
    if skb.is_null() || state.is_null() {
        return 0;
    }
    // SAFETY: probe read (the skb pointer came through a map: the verifier knows no type for
    // it); the skb is alive until its caller returns.
    let nfct = unsafe { read::<u64>(skb, config::skb_nfct_offset()) }.unwrap_or(1);
    verdict(skb, state, nfct, ctx.ret::<u32>());
    0
}

/// `nf_conntrack_in(skb, state)` returning `ret` (ctx[0], ctx[1], ctx[2] of an fexit program on
/// it): the trampoline hands over the arguments and the verdict together, so no per-CPU stack
/// and no second program run a packet. Module functions are reachable only through the module's
/// BTF (Linux 5.11: 290248a5b7d8); userspace loads this with it (kernel/trampoline.rs). The
/// verdict is read from ctx[2], not with `bpf_get_func_ret()` (5.17).
#[fexit(function = "nf_conntrack_in")]
pub fn ctt_ct_fexit(ctx: FExitContext) -> u32 {
    let skb: *const u8 = ctx.arg(0);
    let state: *const u8 = ctx.arg(1);
    if skb.is_null() || state.is_null() {
        return 0;
    }
    // A tracing program's arguments are typed by BTF (PTR_TO_BTF_ID, 5.5: 9e15db66136a "bpf:
    // Implement accurate raw_tp context access via BTF"), so `_nfct` is one direct load (the
    // verifier makes it a fault-safe BPF_PROBE_MEM load at the frozen .rodata offset), not a
    // bpf_probe_read_kernel() call: this runs for every packet.
    // SAFETY: a load the verifier checks against struct sk_buff's BTF.
    let nfct = unsafe {
        core::ptr::read_volatile(skb.add(config::skb_nfct_offset() as usize) as *const u64)
    };
    // A NEW packet that is a SYN or not TCP is no mid-stream pickup: told from the headers with
    // direct loads too (as the netfilter program does), without on_new's reads.
    if nfct & ctinfo::MASK == ctinfo::NEW && syn_or_not_tcp(skb) {
        return 0;
    }
    verdict(skb, state, nfct, ctx.arg::<u64>(2) as u32);
    0
}

/// What conntrack made of a packet (`skb->_nfct` after the call: `nfct`), once
/// `nf_conntrack_in()` returned `ret`: the common tail of the kretprobe and the fexit program,
/// each of which reads `nfct` its own way. Ordinary packets (an entry, not NEW) return at once,
/// with no map write.
#[inline(always)]
fn verdict(skb: *const u8, state: *const u8, nfct: u64, ret: u32) {
    if nfct != 0 {
        if nfct & ctinfo::MASK == ctinfo::NEW && watched(state) {
            on_new(state, skb, nfct);
        }
        return;
    }
    if !watched(state) {
        return;
    }
    // NF_DROP (0) with no entry: conntrack could not allocate one (table full: "nf_conntrack:
    // table full, dropping packet"), counted as `drop`, not `invalid`.
    if ret == 0 {
        count(Counter::CtDropped);
        return;
    }
    on_invalid(state, skb);
}

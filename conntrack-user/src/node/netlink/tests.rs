use std::io;

use netlink_packet_core::{
    DefaultNla, Emitable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_netfilter::{
    conntrack::{ConntrackAttribute, ConntrackMessage, ProtoInfo, ProtoInfoTCP, Status},
    NetfilterHeader, NetfilterMessage, NetfilterProtoFamily,
};

use super::{
    ctnetlink::{ct_attrs, from_ct_tuple, to_ct_tuple},
    hook::{hook_entry, NFNLA_HOOK_FUNCTION_NAME, NFNLA_HOOK_HOOKNUM, NFNLA_HOOK_PRIORITY},
    socket::{encode, frames},
    *,
};

/// A destroy event as Linux 6.18 sent it after `conntrack -D -p tcp -s 192.0.2.1
/// -d 192.0.2.2 --sport 40000 --dport 80` of an ESTABLISHED, ASSURED entry, with
/// `nf_conntrack_timestamp=1`: CTA_TUPLE_ORIG, _REPLY, CTA_ID, CTA_STATUS, CTA_TIMEOUT,
/// CTA_TIMESTAMP, CTA_PROTOINFO, CTA_TIMESTAMP_EVENT.
const KERNEL_DESTROY: [u8; 204] = [
    0xcc, 0x00, 0x00, 0x00, 0x02, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xac, 0x08, 0x13, 0xe7,
    0x02, 0x00, 0x00, 0x00, 0x34, 0x00, 0x01, 0x80, 0x14, 0x00, 0x01, 0x80, 0x08, 0x00, 0x01, 0x00,
    0xc0, 0x00, 0x02, 0x01, 0x08, 0x00, 0x02, 0x00, 0xc0, 0x00, 0x02, 0x02, 0x1c, 0x00, 0x02, 0x80,
    0x05, 0x00, 0x01, 0x00, 0x06, 0x00, 0x00, 0x00, 0x06, 0x00, 0x02, 0x00, 0x9c, 0x40, 0x00, 0x00,
    0x06, 0x00, 0x03, 0x00, 0x00, 0x50, 0x00, 0x00, 0x34, 0x00, 0x02, 0x80, 0x14, 0x00, 0x01, 0x80,
    0x08, 0x00, 0x01, 0x00, 0xc0, 0x00, 0x02, 0x02, 0x08, 0x00, 0x02, 0x00, 0xc0, 0x00, 0x02, 0x01,
    0x1c, 0x00, 0x02, 0x80, 0x05, 0x00, 0x01, 0x00, 0x06, 0x00, 0x00, 0x00, 0x06, 0x00, 0x02, 0x00,
    0x00, 0x50, 0x00, 0x00, 0x06, 0x00, 0x03, 0x00, 0x9c, 0x40, 0x00, 0x00, 0x08, 0x00, 0x0c, 0x00,
    0x8f, 0x58, 0x59, 0x11, 0x08, 0x00, 0x03, 0x00, 0x00, 0x00, 0x02, 0x0e, 0x08, 0x00, 0x07, 0x00,
    0x00, 0x00, 0x00, 0x63, 0x1c, 0x00, 0x14, 0x80, 0x0c, 0x00, 0x01, 0x00, 0x18, 0xeb, 0xff, 0x9a,
    0x47, 0x67, 0x31, 0xed, 0x0c, 0x00, 0x02, 0x00, 0x18, 0xeb, 0xff, 0x9a, 0x56, 0xf3, 0x84, 0xbe,
    0x10, 0x00, 0x04, 0x80, 0x0c, 0x00, 0x01, 0x80, 0x05, 0x00, 0x01, 0x00, 0x03, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x1b, 0x00, 0x18, 0xeb, 0xff, 0x9a, 0x56, 0xf3, 0x85, 0x91,
];

fn tuple(src: &str, sport: u16, dst: &str, dport: u16, proto: u8) -> Tuple {
    Tuple {
        src: src.parse().unwrap(),
        sport,
        dst: dst.parse().unwrap(),
        dport,
        proto,
    }
}

/// A ctnetlink message as the crate emits it.
fn emit(msg: ConntrackMessage, family: NetfilterProtoFamily, portid: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.port_number = portid;
    let inner = NetfilterMessage::new(NetfilterHeader::new(family, 0, 0), msg);
    let mut m = NetlinkMessage::new(header, NetlinkPayload::from(inner));
    m.finalize();
    let mut buf = vec![0; m.buffer_len()];
    m.serialize(&mut buf);
    buf
}

#[test]
fn the_dump_reader_reads_what_the_typed_parser_reads() {
    // The kernel's own message (its type aside, a dumped entry carries the same attributes).
    let (id, e) = super::dump::entry_of(&KERNEL_DESTROY[16..]).unwrap();
    assert_eq!(e, parse_destroyed(&KERNEL_DESTROY).unwrap().entry);
    assert_eq!(id, 0x8f58_5911);
    // IPv6 and UDP, as the crate builds them.
    let (orig, reply) = (
        tuple("fd00::1", 5353, "fd00::2", 53, 17),
        tuple("fd00::2", 53, "fd00::1", 5353, 17),
    );
    let msg = ConntrackMessage::New(vec![
        ConntrackAttribute::CtaTupleOrig(to_ct_tuple(&orig)),
        ConntrackAttribute::CtaTupleReply(to_ct_tuple(&reply)),
        ConntrackAttribute::CtaStatus(Status::Confirmed),
    ]);
    let b = emit(msg, NetfilterProtoFamily::IPv6, 0);
    let (id, e) = super::dump::entry_of(&b[16..]).unwrap();
    assert_eq!(
        (id, e.orig, e.reply, e.status, e.tcp_state),
        (0, orig, reply, 1 << 3, None)
    );
    // Cut anywhere: an entry or nothing, never a panic.
    for len in 0..KERNEL_DESTROY.len() {
        let _ = super::dump::entry_of(&KERNEL_DESTROY[16.min(len)..len]);
    }
}

#[test]
fn a_kernel_destroy_event_gives_tuples_status_state_port_and_age() {
    let d = parse_destroyed(&KERNEL_DESTROY).unwrap();
    assert_eq!(d.entry.orig, tuple("192.0.2.1", 40000, "192.0.2.2", 80, 6));
    assert_eq!(d.entry.reply, tuple("192.0.2.2", 80, "192.0.2.1", 40000, 6));
    // DYING | CONFIRMED | ASSURED | SEEN_REPLY
    assert_eq!(d.entry.status, 0x20e);
    assert_ne!(d.entry.status & IPS_ASSURED, 0);
    assert_eq!(d.entry.tcp_state.map(tcp_state_name), Some("ESTABLISHED"));
    assert_eq!(d.portid, 0xe713_08ac);
    assert_eq!(d.age_ns, Some(0x56f3_84be - 0x4767_31ed));
}

#[test]
fn a_destroy_event_built_by_the_crate_parses_back() {
    let (orig, reply) = (
        tuple("fd00::1", 5353, "fd00::2", 53, 17),
        tuple("fd00::2", 53, "fd00::1", 5353, 17),
    );
    let ts: &[DefaultNla] = &[
        DefaultNla::new(1, 1_000u64.to_be_bytes().to_vec()),
        DefaultNla::new(2, 4_500u64.to_be_bytes().to_vec()),
    ];
    let mut nested = vec![0; ts.buffer_len()];
    ts.emit(&mut nested);
    let msg = ConntrackMessage::Delete(vec![
        ConntrackAttribute::CtaTupleOrig(to_ct_tuple(&orig)),
        ConntrackAttribute::CtaTupleReply(to_ct_tuple(&reply)),
        ConntrackAttribute::CtaStatus(Status::Confirmed | Status::SeenReply),
        ConntrackAttribute::Other(DefaultNla::new(
            20 | netlink_packet_core::NLA_F_NESTED,
            nested,
        )),
    ]);
    let d = parse_destroyed(&emit(msg, NetfilterProtoFamily::IPv6, 0)).unwrap();
    assert_eq!(
        d,
        Destroyed {
            entry: Entry {
                orig,
                reply,
                status: (1 << 3) | (1 << 1),
                tcp_state: None,
            },
            portid: 0,
            age_ns: Some(3_500),
        }
    );
}

#[test]
fn a_tcp_entry_without_timestamps_has_no_age() {
    let t = tuple("10.0.0.1", 1234, "10.96.0.10", 80, 6);
    let msg = ConntrackMessage::Delete(vec![
        ConntrackAttribute::CtaTupleOrig(to_ct_tuple(&t)),
        ConntrackAttribute::CtaTupleReply(to_ct_tuple(&t)),
        ConntrackAttribute::CtaProtoInfo(vec![ProtoInfo::TCP(vec![ProtoInfoTCP::State(7)])]),
    ]);
    let d = parse_destroyed(&emit(msg, NetfilterProtoFamily::IPv4, 4242)).unwrap();
    assert_eq!(d.entry.tcp_state, Some(7));
    assert_eq!((d.portid, d.age_ns), (4242, None));
}

#[test]
fn truncated_or_foreign_messages_give_none_never_a_panic() {
    for len in 0..KERNEL_DESTROY.len() {
        assert_eq!(parse_destroyed(&KERNEL_DESTROY[..len]), None, "{len} bytes");
        // The same cut with the header's length made to agree: attributes end mid-way.
        let mut cut = KERNEL_DESTROY[..len].to_vec();
        if len >= 4 {
            cut[..4].copy_from_slice(&(len as u32).to_ne_bytes());
        }
        if let Some(d) = parse_destroyed(&cut) {
            assert_eq!(d.entry.orig.dport, 80);
        }
    }
    // Not a destroy event: an answer to GET (IPCTNL_MSG_CT_NEW) carries the same entry.
    let mut new = KERNEL_DESTROY;
    new[4] = 0;
    assert_eq!(parse_destroyed(&new), None);
    // No tuples at all.
    let empty = emit(
        ConntrackMessage::Delete(vec![]),
        NetfilterProtoFamily::IPv4,
        0,
    );
    assert_eq!(parse_destroyed(&empty), None);
}

#[test]
fn datagrams_split_into_whole_messages() {
    let mut two = KERNEL_DESTROY.to_vec();
    two.extend_from_slice(&KERNEL_DESTROY);
    two.extend_from_slice(&KERNEL_DESTROY[..20]);
    let d: Vec<_> = frames(&two).filter_map(parse_destroyed).collect();
    assert_eq!(d.len(), 2);
    assert_eq!(frames(&two).count(), 2);
}

#[test]
fn a_lookup_request_carries_the_tuple_by_direction() {
    let t = tuple("10.0.0.1", 1234, "10.96.0.10", 80, 6);
    let get = NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
        ConntrackMessage::Get(vec![ConntrackAttribute::CtaTupleReply(to_ct_tuple(&t))]),
    );
    let b = encode(get, NLM_F_ACK, 77);
    // nlmsghdr: type IPCTNL_MSG_CT_GET of NFNL_SUBSYS_CTNETLINK, REQUEST|ACK, seq; nfgenmsg
    // family AF_INET; then CTA_TUPLE_REPLY, nested.
    assert_eq!(
        u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize,
        b.len()
    );
    assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 0x0101);
    assert_eq!(u16::from_ne_bytes([b[6], b[7]]), NLM_F_REQUEST | NLM_F_ACK);
    assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 77);
    assert_eq!(b[16], libc::AF_INET as u8);
    assert_eq!(u16::from_ne_bytes([b[22], b[23]]), 2 | 0x8000);
    let m = NetlinkMessage::<NetfilterMessage>::deserialize(&b).unwrap();
    let NetlinkPayload::InnerMessage(m) = m.payload else {
        panic!("{m:?}")
    };
    let Some([ConntrackAttribute::CtaTupleReply(r)]) = ct_attrs(&m) else {
        panic!("{m:?}")
    };
    assert_eq!(from_ct_tuple(r), Some(t));
}

#[test]
fn a_mixed_family_tuple_is_sent_as_ipv6() {
    let t = tuple("10.0.0.1", 1, "fd00::1", 2, 17);
    let back = from_ct_tuple(&to_ct_tuple(&t)).unwrap();
    assert_eq!(back.src, "::ffff:10.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(back.dst, t.dst);
}

#[test]
fn hook_attributes_give_priority_and_function() {
    let e = hook_entry(&[
        DefaultNla::new(NFNLA_HOOK_HOOKNUM, 0u32.to_be_bytes().to_vec()),
        DefaultNla::new(NFNLA_HOOK_PRIORITY, (-200i32).to_be_bytes().to_vec()),
        DefaultNla::new(NFNLA_HOOK_FUNCTION_NAME, b"ipv4_conntrack_in\0".to_vec()),
    ]);
    assert_eq!(
        e,
        HookEntry {
            priority: -200,
            function: "ipv4_conntrack_in".into()
        }
    );
}

/// Against the running kernel, in a network namespace of its own (a thread's): an entry
/// created over ctnetlink is found by either tuple, its deletion comes back as a destroy
/// event naming our port, and the empty namespace has no conntrack hook.
#[test]
fn a_live_entry_is_looked_up_and_its_deletion_seen() {
    in_own_netns("a_live_entry_is_looked_up_and_its_deletion_seen", || {
        let orig = tuple("192.0.2.1", 40000, "192.0.2.2", 80, 6);
        let reply = tuple("192.0.2.2", 80, "192.0.2.1", 40000, 6);
        let mut events = DestroyEvents::open().unwrap();
        let ct = Conntrack::open().unwrap();
        assert_eq!(ct.lookup(&orig).unwrap(), None);
        let ask = |m, flags| ask(&ct, m, flags);
        ask(
            ConntrackMessage::New(vec![
                ConntrackAttribute::CtaTupleOrig(to_ct_tuple(&orig)),
                ConntrackAttribute::CtaTupleReply(to_ct_tuple(&reply)),
                // CONFIRMED too: the kernel sets it before applying CTA_STATUS, and EBUSY otherwise.
                ConntrackAttribute::CtaStatus(
                    Status::Confirmed | Status::Assured | Status::SeenReply,
                ),
                ConntrackAttribute::CtaTimeout(100),
                ConntrackAttribute::CtaProtoInfo(vec![ProtoInfo::TCP(vec![ProtoInfoTCP::State(
                    3,
                )])]),
            ]),
            netlink_packet_core::NLM_F_CREATE,
        );
        let (e, dir) = ct.lookup(&orig).unwrap().unwrap();
        assert_eq!((e.orig, e.reply, dir), (orig, reply, Direction::Original));
        assert_eq!(e.tcp_state, Some(3));
        assert_ne!(e.status & IPS_ASSURED, 0);
        assert_eq!(ct.lookup(&reply).unwrap().unwrap().1, Direction::Reply);
        ask(
            ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(to_ct_tuple(&orig))]),
            0,
        );
        // The kernel sent the event before it acknowledged the deletion: the receive that
        // takes it says it drained the queue at a later instant.
        let clock = || {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes the timespec it is given.
            unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
            ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
        };
        let deleted = clock();
        let mut gone = Vec::new();
        let mut drained = None;
        for _ in 0..20 {
            let r = events.recv(&mut gone, clock).unwrap();
            assert!(!r.overflowed);
            if !gone.is_empty() {
                drained = r.drained_at;
                break;
            }
        }
        assert_eq!(gone.len(), 1, "{gone:?}");
        assert!(
            drained.is_some_and(|d| d > deleted),
            "{drained:?} after {deleted}"
        );
        assert_eq!(
            (gone[0].entry.orig, gone[0].entry.tcp_state),
            (orig, Some(3))
        );
        assert_ne!(gone[0].portid, 0);
        assert_eq!(ct.lookup(&orig).unwrap(), None);
        // NFPROTO_IPV4, NF_INET_PRE_ROUTING: no rule, so no conntrack hook (or no nfnetlink_hook).
        assert_ne!(conntrack_hooked(2, 0), Some(true));
    });
}

/// Against the running kernel, in a namespace of its own: more destroy events than a small
/// receive buffer holds. The receive that reports the overflow also takes every event that
/// was queued (it used to return at the overflow with none of them, leaving the queue full,
/// and a full queue has the kernel drop every further event), so the next one finds it empty.
#[test]
fn an_overflow_is_reported_by_a_receive_that_drains_the_queue() {
    const ENTRIES: u16 = 200;
    in_own_netns(
        "an_overflow_is_reported_by_a_receive_that_drains_the_queue",
        || {
            // The kernel doubles it: 32 KiB, a few dozen events.
            let mut events = DestroyEvents::with_rcvbuf(16 << 10).unwrap();
            let ct = Conntrack::open().unwrap();
            let ask = |m, flags| ask(&ct, m, flags);
            for p in 0..ENTRIES {
                let orig = tuple("192.0.2.1", 40000 + p, "192.0.2.2", 80, 6);
                let reply = tuple("192.0.2.2", 80, "192.0.2.1", 40000 + p, 6);
                ask(
                    ConntrackMessage::New(vec![
                        ConntrackAttribute::CtaTupleOrig(to_ct_tuple(&orig)),
                        ConntrackAttribute::CtaTupleReply(to_ct_tuple(&reply)),
                        ConntrackAttribute::CtaStatus(Status::Confirmed | Status::SeenReply),
                        ConntrackAttribute::CtaTimeout(100),
                    ]),
                    netlink_packet_core::NLM_F_CREATE,
                );
            }
            // A flush: ENTRIES destroy events at once.
            ask(ConntrackMessage::Delete(vec![]), 0);
            let mut gone = Vec::new();
            let r = events.recv(&mut gone, || 0).unwrap();
            assert!(r.overflowed, "{} events", gone.len());
            assert!(
                !gone.is_empty() && gone.len() < usize::from(ENTRIES),
                "{} events",
                gone.len()
            );
            assert_eq!(r.drained_at, Some(0));
            let mut more = Vec::new();
            let r = events.recv(&mut more, || 0).unwrap();
            assert!(!r.overflowed && more.is_empty(), "{r:?}: {more:?}");
        },
    );
}

#[test]
fn parse_event_tells_new_update_and_destroy_apart() {
    let Some(Some(Event::Destroy(id, e))) = parse_event(&KERNEL_DESTROY) else {
        panic!("a destroy event");
    };
    assert_eq!((id, e.orig.dport, e.tcp_state), (0x8f58_5911, 80, Some(3)));
    // The same message as a NEW event (IPCTNL_MSG_CT_NEW, NLM_F_CREATE|NLM_F_EXCL) and as
    // an update (no flags).
    let mut m = KERNEL_DESTROY;
    m[4] = 0;
    m[6..8].copy_from_slice(&0x600u16.to_ne_bytes());
    assert!(matches!(parse_event(&m), Some(Some(Event::New(..)))));
    m[6..8].copy_from_slice(&0u16.to_ne_bytes());
    assert!(matches!(parse_event(&m), Some(Some(Event::Update(..)))));
    // Cut short: an event, unreadable.
    let mut short = KERNEL_DESTROY[..40].to_vec();
    short[0..4].copy_from_slice(&40u32.to_ne_bytes());
    assert_eq!(parse_event(&short), Some(None));
    // Not a ctnetlink entry message.
    let mut other = KERNEL_DESTROY;
    other[4] = 3;
    assert_eq!(parse_event(&other), None);
}

/// Runs `f` as root in a thread of its own, in a new network namespace. Under `cargo xtask
/// test` (CT_TRACE_BIN set) a missing privilege fails; under a plain `cargo test` it is a
/// counted skip.
fn in_own_netns(name: &str, f: impl FnOnce() + Send + 'static) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("CT_TRACE_BIN").is_none(),
            "{name} needs root"
        );
        println!("SKIPPED: {name}: needs root");
        return;
    }
    std::thread::spawn(|| {
        // SAFETY: plain unshare(2); only this thread changes namespace.
        assert_eq!(
            unsafe { libc::unshare(libc::CLONE_NEWNET) },
            0,
            "{}",
            io::Error::last_os_error()
        );
        f()
    })
    .join()
    .unwrap();
}

/// One ctnetlink request, acknowledged.
fn ask(ct: &Conntrack, m: ConntrackMessage, flags: u16) {
    let m = NetfilterMessage::new(NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0), m);
    let s = ct.sock.request(m, NLM_F_ACK | flags).unwrap();
    ct.sock.answer(s, |_| {}).unwrap();
}

/// Against the running kernel, in a namespace of its own: the destroy subscription's socket
/// filter lets through what ct-trace tells from (a process's deletion, an unassured entry, a
/// TCP flow that expired while open) and drops, in the kernel, the ordinary end of a flow
/// (an assured entry the kernel destroyed in TIME_WAIT or CLOSE, or not TCP).
#[test]
fn the_destroy_filter_drops_only_flows_that_ended_normally() {
    in_own_netns(
        "the_destroy_filter_drops_only_flows_that_ended_normally",
        || {
            // enum tcp_conntrack
            const SYN_SENT: u8 = 1;
            const ESTABLISHED: u8 = 3;
            const TIME_WAIT: u8 = 7;
            const CLOSE: u8 = 8;
            let assured = Status::Confirmed | Status::Assured | Status::SeenReply;
            // sport, proto, status, TCP state, kept.
            let entries = [
                (41001, 6, assured, Some(TIME_WAIT), false),
                (41002, 6, assured, Some(CLOSE), false),
                (41003, 6, assured, Some(ESTABLISHED), true),
                (41004, 17, assured, None, false),
                (41005, 6, Status::Confirmed, Some(SYN_SENT), true),
            ];
            let mut events = DestroyEvents::open().unwrap();
            let ct = Conntrack::open().unwrap();
            let pair = |sport: u16, proto: u8| {
                (
                    tuple("192.0.2.1", sport, "192.0.2.2", 80, proto),
                    tuple("192.0.2.2", 80, "192.0.2.1", sport, proto),
                )
            };
            let create = |sport: u16, proto: u8, status: Status, state: Option<u8>, secs: u32| {
                let (orig, reply) = pair(sport, proto);
                let mut attrs = vec![
                    ConntrackAttribute::CtaTupleOrig(to_ct_tuple(&orig)),
                    ConntrackAttribute::CtaTupleReply(to_ct_tuple(&reply)),
                    ConntrackAttribute::CtaStatus(status),
                    ConntrackAttribute::CtaTimeout(secs),
                ];
                if let Some(s) = state {
                    attrs.push(ConntrackAttribute::CtaProtoInfo(vec![ProtoInfo::TCP(
                        vec![ProtoInfoTCP::State(s)],
                    )]));
                }
                ask(
                    &ct,
                    ConntrackMessage::New(attrs),
                    netlink_packet_core::NLM_F_CREATE,
                );
            };
            for (sport, proto, status, state, _) in entries {
                create(sport, proto, status, state, 1);
            }
            // A closed flow a process deletes: kept (it names the process).
            create(41006, 6, assured, Some(TIME_WAIT), 100);
            ask(
                &ct,
                ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(to_ct_tuple(
                    &pair(41006, 6).0,
                ))]),
                0,
            );
            // Past their timeout, a lookup has the kernel destroy each (nf_ct_gc_expired() in
            // __nf_conntrack_find_get()): nlmsg_pid 0, as the garbage collector's.
            std::thread::sleep(std::time::Duration::from_millis(1500));
            for (sport, proto, ..) in entries {
                assert_eq!(ct.lookup(&pair(sport, proto).0).unwrap(), None);
            }
            let mut gone = Vec::new();
            for _ in 0..10 {
                events.recv(&mut gone, || 0).unwrap();
            }
            let mut seen: Vec<(u16, bool)> = gone
                .iter()
                .map(|d| (d.entry.orig.sport, d.portid != 0))
                .collect();
            seen.sort();
            // Before 5.11 destroy events carry no TCP state (the kept ESTABLISHED one tells):
            // the closed TCP flows cannot be told and are kept.
            let states = gone.iter().any(|d| d.entry.tcp_state.is_some());
            let mut want: Vec<(u16, bool)> = entries
                .iter()
                .filter(|e| e.4 || (!states && e.1 == 6))
                .map(|e| (e.0, false))
                .chain([(41006, true)])
                .collect();
            want.sort();
            assert_eq!(seen, want, "{gone:?}");
        },
    );
}

//! What the lab does to its live connections (`--scenario`), the mitigation it applies in its
//! node namespace (`--fix`), and what each combination is expected to show.

use std::{
    io,
    net::{IpAddr, SocketAddrV4},
    time::Duration,
};

use conntrack_common::harness::netns::exec_in;
use serde::Serialize;

use crate::{
    cli::{Fix, Scenario},
    node::netlink::{self, Conntrack},
};

use super::{
    craft::{self, RawSocket, Segment, ACK, PSH, RST},
    sysctl::TableLimit,
    topology::{in_netns, Lab, CLIENT_IP, SERVER_IP, SERVER_PORT, SERVICE},
    workload::{short_request, ConnResult, LongConn},
    LabError,
};

const LIBERAL: &str = "/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal";

/// Applies the fix inside the node namespace only (the lab's rules already loaded conntrack
/// there, so its per-namespace sysctl exists).
pub fn apply_fix(lab: &Lab, fix: Fix) -> Result<(), LabError> {
    match fix {
        // Applied by the table-full scenario itself, when it sizes the table.
        Fix::None | Fix::BiggerTable => Ok(()),
        Fix::Liberal => {
            // /proc/sys/net is the opening thread's namespace: written and read back from
            // inside the node namespace.
            let got = in_netns(&lab.node, || -> io::Result<String> {
                std::fs::write(LIBERAL, "1")?;
                std::fs::read_to_string(LIBERAL)
            })
            .and_then(|r| r)
            .map_err(|e| LabError::Workload(format!("setting {LIBERAL} in the node: {e}")))?;
            if got.trim() != "1" {
                return Err(LabError::Workload(format!(
                    "{LIBERAL} reads {} in the node after writing 1",
                    got.trim()
                )));
            }
            Ok(())
        }
        Fix::DropInvalid => exec_in(
            &lab.node,
            &[
                "iptables",
                "-w",
                "-A",
                "FORWARD",
                "-m",
                "conntrack",
                "--ctstate",
                "INVALID",
                "-j",
                "DROP",
            ],
        )
        .map(drop)
        .map_err(Into::into),
    }
}

/// The packet a scenario forged, as the verdict reports it.
#[derive(Clone, Debug, Serialize)]
pub struct Forged {
    pub src: String,
    pub dst: String,
    pub flags: String,
    pub seq: u32,
    pub ack: u32,
    pub len: usize,
    /// The server's `snd_nxt` / `rcv_nxt` read with TCP_REPAIR.
    pub server_snd_next: u32,
    pub server_rcv_next: u32,
    pub what: &'static str,
}

/// What the scenario did, for the verdict.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Trigger {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packet: Option<Forged>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deleted_entries: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<TableFill>,
}

/// What `table-full` did to the table, and what the connections it then opened saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TableFill {
    /// The node's entries before, and the limit set (global, restored after the run).
    pub entries_before: u64,
    pub max: u64,
    pub max_before: u64,
    /// Connections opened to the Service once the limit was set, and how many of them could
    /// not be opened within the workload's patience.
    pub attempted: u32,
    pub refused: u32,
}

/// Does the scenario's fault to the live long connections. `table-full` returns the guard
/// that restores the global sysctls, to hold until the run ends.
pub fn trigger(
    lab: &Lab,
    s: Scenario,
    fix: Fix,
    long: &[LongConn],
) -> Result<(Trigger, Option<TableLimit>), LabError> {
    let t = match s {
        Scenario::TableFull => return fill_table(lab, fix).map(|(t, g)| (t, Some(g))),
        Scenario::Clean => Ok(Trigger::default()),
        Scenario::OutOfWindow => forge(
            lab,
            &long[0],
            1 << 30,
            0,
            ACK,
            "SEQ 2^30 past the client's window (INVALID: SEQ is over upper bound)",
        ),
        Scenario::BoomServer => forge(
            lab,
            &long[0],
            0u32.wrapping_sub(100_000),
            10,
            PSH | ACK,
            "data SEQ 100000 below the client's window (boom-server; IGNORE on 6.1+)",
        ),
        Scenario::InvalidRst => forge(
            lab,
            &long[0],
            1 << 30,
            0,
            RST,
            "RST with SEQ 2^30 past the client's window (INVALID; nobody answers a RST)",
        ),
        Scenario::LostEntry => lose_entries(lab, long),
    }?;
    Ok((t, None))
}

/// Entries the table keeps free in `table-full`, without and with `bigger-table`, and the
/// connections it then opens.
const ROOM: u64 = 8;
const BIGGER_ROOM: u64 = 128;
const FILL: u32 = 16;
/// A small hash, as in the write-ups' reproduction: `early_drop()` scans a few buckets
/// (NF_CT_EVICTION_RANGE, nf_conntrack_core.c) for an entry it may evict.
const BUCKETS: u64 = 16;

fn fill_table(lab: &Lab, fix: Fix) -> Result<(Trigger, TableLimit), LabError> {
    let count = in_netns(&lab.node, || {
        std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
    })
    .and_then(|r| r)
    .map_err(|e| LabError::Workload(format!("reading the node's entry count: {e}")))?;
    let entries_before: u64 = count.trim().parse().unwrap_or(0);
    let room = if fix == Fix::BiggerTable {
        BIGGER_ROOM
    } else {
        ROOM
    };
    let max = entries_before + room;
    let guard = TableLimit::set(max, BUCKETS)?;
    // All at once, as a burst of clients would. A finished request's entry stays in the table
    // (TIME_WAIT, 120 s; ASSURED, so early_drop() may not evict it): the table stays full.
    let handles: Vec<_> = (0..FILL)
        .map(|_| {
            let ns = lab.client.clone();
            std::thread::spawn(move || in_netns(&ns, short_request).unwrap_or(ConnResult::Failed))
        })
        .collect();
    let refused = handles
        .into_iter()
        .map(|h| h.join().unwrap_or(ConnResult::Failed))
        .filter(|r| *r != ConnResult::Ok)
        .count() as u32;
    Ok((
        Trigger {
            table: Some(TableFill {
                entries_before,
                max,
                max_before: guard.max_before(),
                attempted: FILL,
                refused,
            }),
            ..Default::default()
        },
        guard,
    ))
}

fn forge(
    lab: &Lab,
    conn: &LongConn,
    seq_offset: u32,
    len: usize,
    flags: u8,
    what: &'static str,
) -> Result<Trigger, LabError> {
    let st = craft::read_seq(&conn.server).map_err(|e| {
        LabError::Workload(format!(
            "reading the server's sequence numbers (TCP_REPAIR): {e}"
        ))
    })?;
    let seg = Segment {
        src: SocketAddrV4::new(SERVER_IP, SERVER_PORT),
        dst: SocketAddrV4::new(CLIENT_IP, conn.cport),
        seq: st.snd_next.wrapping_add(seq_offset),
        ack: st.rcv_next,
        flags,
        window: 502,
        payload: vec![b'b'; len],
    };
    in_netns(&lab.server, || RawSocket::open().and_then(|s| s.send(&seg)))
        .and_then(|r| r)
        .map_err(|e| {
            LabError::Workload(format!(
                "sending the forged segment from the server namespace: {e}"
            ))
        })?;
    Ok(Trigger {
        packet: Some(Forged {
            src: seg.src.to_string(),
            dst: seg.dst.to_string(),
            flags: seg.flag_names(),
            seq: seg.seq,
            ack: seg.ack,
            len,
            server_snd_next: st.snd_next,
            server_rcv_next: st.rcv_next,
            what,
        }),
        deleted_entries: Vec::new(),
        table: None,
    })
}

/// Deletes every long connection's conntrack entry in the node (ctnetlink, as `conntrack -D`
/// does), then lets the server speak on each.
fn lose_entries(lab: &Lab, long: &[LongConn]) -> Result<Trigger, LabError> {
    let mut deleted = Vec::new();
    for c in long {
        in_netns(&lab.node, || delete_entry(c.cport))
            .and_then(|r| r)
            .map_err(|e| {
                LabError::Workload(format!(
                    "deleting the entry of {CLIENT_IP}:{} in the node (ctnetlink): {e}",
                    c.cport
                ))
            })?;
        deleted.push(format!("{CLIENT_IP}:{} -> {SERVICE}", c.cport));
    }
    for c in long {
        use std::io::Write as _;
        // The reply the client never gets: it goes out un-NATed and is reset.
        let _ = (&c.server).write_all(b"hello after the entry went\n");
    }
    Ok(Trigger {
        packet: None,
        deleted_entries: deleted,
        table: None,
    })
}

/// Deletes the entry whose original tuple is client:cport -> Service, in the calling thread's
/// namespace, over ctnetlink (waits for the kernel's ACK).
fn delete_entry(cport: u16) -> io::Result<()> {
    Conntrack::open()?.delete(&netlink::Tuple {
        src: IpAddr::V4(CLIENT_IP),
        sport: cport,
        dst: IpAddr::V4(*SERVICE.ip()),
        dport: SERVICE.port(),
        proto: conntrack_common::IPPROTO_TCP,
    })
}

/// How long after the fault the connections are checked: the forged packet, the client's
/// RST and the server's reaction take well under this.
pub const SETTLE: Duration = Duration::from_millis(400);

/// What a run of `scenario` with `fix` should show, in words and as a check of the tallies
/// (`resets` sent in the lab, `attributed` resets of the scenario's cause, INVALID verdicts,
/// connections lost). `old_kernel`: before 6.1, where the boom-server packet is INVALID.
pub fn expectation(s: Scenario, fix: Fix, old_kernel: bool) -> (&'static str, fn(&Tally) -> bool) {
    match (s, fix) {
        (Scenario::Clean, _) => ("no reset, no INVALID verdict, no connection lost", |t| {
            t.resets == 0 && t.invalid == 0 && t.lost == 0
        }),
        (Scenario::OutOfWindow, Fix::None | Fix::BiggerTable) => (
            "the segment is INVALID, passed without NAT; the client resets the server's connection (attributed: invalid_packet)",
            |t| t.invalid >= 1 && t.attributed_invalid >= 1 && t.lost >= 1,
        ),
        (Scenario::OutOfWindow, Fix::Liberal) => (
            "be_liberal accepts the segment with its NAT: no INVALID verdict, no reset",
            |t| t.invalid == 0 && t.resets == 0 && t.lost == 0,
        ),
        (Scenario::OutOfWindow, Fix::DropInvalid) => (
            "the segment is INVALID and dropped at the node: no reset",
            |t| t.invalid >= 1 && t.resets == 0 && t.lost == 0,
        ),
        (Scenario::LostEntry, _) => (
            "no fix brings a lost entry back: the replies are picked up mid-stream without NAT and reset (attributed: entry_lost)",
            |t| t.attributed_lost >= 1 && t.lost >= 1,
        ),
        (Scenario::InvalidRst, Fix::Liberal) => (
            "be_liberal lets the RST through with its NAT; the client drops a RST outside its window: no reset, no connection lost",
            |t| t.resets == 0 && t.lost == 0,
        ),
        (Scenario::InvalidRst, _) => (
            "the RST is INVALID (passed, or dropped by the fix) and harms nothing: no reset, nothing attributed, no connection lost",
            |t| t.invalid >= 1 && t.resets == 0 && t.attributed_invalid == 0 && t.lost == 0,
        ),
        (Scenario::TableFull, Fix::BiggerTable) => (
            "a table with room: every connection of the burst opens, nothing is dropped",
            |t| t.table_full == 0 && t.kernel_drop == 0 && t.refused == 0 && t.lost == 0,
        ),
        (Scenario::TableFull, _) => (
            "no room for the burst's new connections: netfilter drops their SYNs (one table_full per kernel drop) and they time out; no INVALID fix helps",
            // Exact, except for runs of the kfree_skb program the kernel skipped (a softirq's
            // drop while the same program ran on that CPU: `missed_runs`, which bound it).
            |t| {
                t.table_full >= 1
                    && t.table_full <= t.kernel_drop
                    && t.kernel_drop - t.table_full <= t.missed_runs
                    && t.refused >= 1
            },
        ),
        (Scenario::BoomServer, Fix::None | Fix::BiggerTable) if old_kernel => (
            "before 6.1 the packet is INVALID and passed without NAT; the client resets the server's connection (attributed: invalid_packet), as the write-ups saw",
            |t| t.invalid >= 1 && t.attributed_invalid >= 1 && t.lost >= 1,
        ),
        (Scenario::BoomServer, Fix::Liberal) if old_kernel => (
            "be_liberal accepts the segment with its NAT: no INVALID verdict, no reset",
            |t| t.invalid == 0 && t.resets == 0 && t.lost == 0,
        ),
        (Scenario::BoomServer, Fix::DropInvalid) if old_kernel => (
            "the segment is INVALID and dropped at the node: no reset",
            |t| t.invalid >= 1 && t.resets == 0 && t.lost == 0,
        ),
        (Scenario::BoomServer, _) => (
            "6.1+ only IGNOREs data below the window: not INVALID, no reset",
            |t| t.invalid == 0 && t.resets == 0 && t.lost == 0,
        ),
    }
}

/// The numbers `expectation` checks.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    pub resets: u64,
    pub attributed_invalid: u64,
    pub attributed_lost: u64,
    pub invalid: u64,
    pub lost: u32,
    /// `table_full` events ct-trace counted, and the kernel's `drop` counter over the run.
    pub table_full: u64,
    pub kernel_drop: u64,
    /// Runs of ct-trace's tracing programs the kernel skipped (recursion protection).
    pub missed_runs: u64,
    /// `table-full`'s connections that could not be opened.
    pub refused: u32,
}

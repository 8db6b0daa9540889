//! conntrack's statistics through ctnetlink, for kernels built without
//! `CONFIG_NF_CONNTRACK_PROCFS` (Ubuntu's, among others), where `/proc/net/stat/nf_conntrack`
//! does not exist: the same per-CPU counters, read the way `conntrack -S` reads them.
//!
//! - `IPCTNL_MSG_CT_GET_STATS_CPU` (a dump): one message per possible CPU, its counters as
//!   big-endian u32 attributes (`ctnetlink_ct_stat_cpu_fill_info()`,
//!   net/netfilter/nf_conntrack_netlink.c);
//! - `IPCTNL_MSG_CT_GET_STATS`: the namespace's count of entries (`CTA_STATS_GLOBAL_ENTRIES`).
//!
//! The counters come back under the names `/proc/net/stat/nf_conntrack`'s header gives them
//! (`conntrack_common::kstat`), so that every reader of the kernel's counters sees one map
//! whichever way it was read.

use std::{collections::HashMap, io, time::Duration};

use netlink_packet_core::{Nla, NLM_F_ACK, NLM_F_DUMP};
use netlink_packet_netfilter::{
    conntrack::ConntrackMessage, NetfilterHeader, NetfilterMessage, NetfilterMessageInner,
    NetfilterProtoFamily,
};

use super::socket::{nla_value, Socket};

/// `enum cntl_msg_types` (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
const IPCTNL_MSG_CT_GET_STATS_CPU: u8 = 4;
const IPCTNL_MSG_CT_GET_STATS: u8 = 5;

/// `enum ctattr_stats_global`.
const CTA_STATS_GLOBAL_ENTRIES: u16 = 1;

/// `enum ctattr_stats_cpu`, by the name of the column `/proc/net/stat/nf_conntrack` prints the
/// same counter under (`ct_cpu_seq_show()`). The kernel sends only the counters it still keeps:
/// `ignore`, `new`, `delete`... left both in 5.x (`searched`, `ignore` gone in 5.14), so a
/// counter missing here is missing from the procfs file's values too (printed as 0 there).
const CPU_COUNTERS: [(u16, &str); 14] = [
    (1, "searched"),
    (2, "found"),
    (3, "new"),
    (4, "invalid"),
    (5, "ignore"),
    (6, "delete"),
    (7, "delete_list"),
    (8, "insert"),
    (9, "insert_failed"),
    (10, "drop"),
    (11, "early_drop"),
    // `error` in ctnetlink, `icmp_error` in procfs: the same `st->error`.
    (12, "icmp_error"),
    (13, "search_restart"),
    // `clash_resolve` in ctnetlink (5.9+), `clashres` in procfs.
    (14, "clashres"),
];

/// `chainlength` in procfs, `CTA_STATS_CHAIN_TOOLONG` (15, 5.15+) in ctnetlink.
const CTA_STATS_CHAIN_TOOLONG: u16 = 15;

fn be32(v: &[u8]) -> Option<u64> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?) as u64)
}

/// Adds one CPU's message to `sums`.
fn add_cpu(sums: &mut HashMap<String, u64>, attributes: &[netlink_packet_core::DefaultNla]) {
    for nla in attributes {
        let kind = nla.kind();
        let name = if kind == CTA_STATS_CHAIN_TOOLONG {
            Some("chainlength")
        } else {
            CPU_COUNTERS
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, n)| *n)
        };
        if let (Some(name), Some(v)) = (name, be32(&nla_value(nla))) {
            let sum = sums.entry(name.to_string()).or_insert(0);
            *sum = sum.saturating_add(v);
        }
    }
}

fn request(message_type: u8) -> NetfilterMessage {
    NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0),
        ConntrackMessage::Other {
            message_type,
            attributes: Vec::new(),
        },
    )
}

fn other(m: &NetfilterMessage) -> Option<(u8, &[netlink_packet_core::DefaultNla])> {
    match &m.inner {
        NetfilterMessageInner::Conntrack(ConntrackMessage::Other {
            message_type,
            attributes,
        }) => Some((*message_type, attributes)),
        _ => None,
    }
}

/// Every counter of the current network namespace summed over the CPUs, and `entries`, under
/// procfs's names.
pub fn counters() -> io::Result<HashMap<String, u64>> {
    let sock = Socket::open(Duration::from_secs(1))?;
    let mut sums = HashMap::new();
    let mut cpus = 0;
    let s = sock.request(request(IPCTNL_MSG_CT_GET_STATS_CPU), NLM_F_DUMP)?;
    sock.answer(s, |m| {
        if let Some((IPCTNL_MSG_CT_GET_STATS_CPU, attributes)) = other(&m) {
            cpus += 1;
            add_cpu(&mut sums, attributes);
        }
    })?;
    if cpus == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "ctnetlink answered the statistics dump with no CPU",
        ));
    }
    let s = sock.request(request(IPCTNL_MSG_CT_GET_STATS), NLM_F_ACK)?;
    sock.answer(s, |m| {
        if let Some((IPCTNL_MSG_CT_GET_STATS, attributes)) = other(&m) {
            for nla in attributes {
                if nla.kind() == CTA_STATS_GLOBAL_ENTRIES {
                    if let Some(v) = be32(&nla_value(nla)) {
                        sums.insert("entries".to_string(), v);
                    }
                }
            }
        }
    })?;
    Ok(sums)
}

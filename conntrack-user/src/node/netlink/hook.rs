//! The nfnetlink_hook dump: which functions sit on a netfilter hook, and whether conntrack's is
//! one of them.

use std::{io, time::Duration};

use netlink_packet_core::{parse_i32_be, DefaultNla, Nla, NLA_TYPE_MASK, NLM_F_DUMP};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
    NetfilterSubsystem,
};

use super::socket::{nla_value, Socket};

/// One function registered on a netfilter hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookEntry {
    pub priority: i32,
    pub function: String,
}

// Hand-written: netlink-packet-netfilter 0.4.0 (and no other crate) knows nfnetlink_hook
// (`NFNL_SUBSYS_HOOK`, Linux 5.14). Its messages travel as the crate's untyped
// `NetfilterMessageInner::Other`; the `NFNLA_HOOK_*` attributes are built and read here.
const NFNL_SUBSYS_HOOK: u8 = 15;
const NFNL_MSG_HOOK_GET: u8 = 0;
pub(super) const NFNLA_HOOK_HOOKNUM: u16 = 1;
pub(super) const NFNLA_HOOK_PRIORITY: u16 = 2;
pub(super) const NFNLA_HOOK_FUNCTION_NAME: u16 = 4;

/// The functions on hook `hooknum` of protocol family `pf` (NFPROTO_*) in this namespace.
pub fn hooks(pf: u8, hooknum: u32) -> io::Result<Vec<HookEntry>> {
    let sock = Socket::open(Duration::from_secs(1))?;
    let dump = NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::from(pf), 0, 0),
        NetfilterMessageInner::Other {
            subsys: NetfilterSubsystem::Other(NFNL_SUBSYS_HOOK),
            message_type: NFNL_MSG_HOOK_GET,
            attributes: vec![DefaultNla::new(
                NFNLA_HOOK_HOOKNUM,
                hooknum.to_be_bytes().to_vec(),
            )],
        },
    );
    let s = sock.request(dump, NLM_F_DUMP)?;
    let mut out = Vec::new();
    sock.answer(s, |m| {
        if let NetfilterMessageInner::Other { attributes, .. } = &m.inner {
            out.push(hook_entry(attributes));
        }
    })?;
    Ok(out)
}

pub(super) fn hook_entry(attrs: &[DefaultNla]) -> HookEntry {
    let (mut priority, mut function) = (0, String::new());
    for a in attrs {
        let v = nla_value(a);
        match a.kind() & NLA_TYPE_MASK {
            NFNLA_HOOK_PRIORITY => priority = parse_i32_be(&v).unwrap_or(0),
            NFNLA_HOOK_FUNCTION_NAME => {
                function = String::from_utf8_lossy(&v)
                    .trim_end_matches('\0')
                    .to_string()
            }
            _ => {}
        }
    }
    HookEntry { priority, function }
}

/// Whether conntrack's own hook (`ipv4_conntrack_in`, `ipv6_conntrack_local` ...) is on
/// `hooknum`; `None` when this kernel cannot say (no nfnetlink_hook).
pub fn conntrack_hooked(pf: u8, hooknum: u32) -> Option<bool> {
    hooks(pf, hooknum).ok().map(|h| {
        h.iter()
            .any(|e| e.function.contains("conntrack_in") || e.function.contains("conntrack_local"))
    })
}

/// [`conntrack_hooked`] in the attach layer's terms (`kernel::load::ConntrackHooked`).
pub fn conntrack_hooked_at(
    family: conntrack_common::Family,
    hook: conntrack_common::Hook,
) -> Option<bool> {
    conntrack_hooked(family as u8, hook as u32)
}

//! The kernel-side filter (`--host`, `--port`, `--netns`, `--resets`): records that do not match
//! are counted as filtered and never reach the ring buffer.

use conntrack_common::{Counter, Filter, Kind, Packet};

use crate::{
    config,
    maps::{allow, count},
};

/// Whether a record of `kind` about packet `p` is sent: it must pass `--host`/`--port` (else it
/// is counted under `filtered`) and then the event budget (else it is counted as suppressed).
#[inline(always)]
pub fn admit(kind: Kind, p: &Packet, filtered: Counter) -> bool {
    if packet_matches(&config::filter(), p) {
        allow(kind, false)
    } else {
        count(filtered);
        false
    }
}

/// Whether a packet passes the address and port parts of the filter.
#[inline(always)]
pub fn packet_matches(f: &Filter, p: &Packet) -> bool {
    if f.port != 0 && p.sport != f.port && p.dport != f.port {
        return false;
    }
    if f.family != 0
        && (p.family != f.family
            || (!in_prefix(&p.saddr, &f.addr, f.prefix_len)
                && !in_prefix(&p.daddr, &f.addr, f.prefix_len)))
    {
        return false;
    }
    true
}

/// Whether the first `bits` bits of `a` equal those of `prefix` (bits <= 128).
#[inline(always)]
fn in_prefix(a: &[u8; 16], prefix: &[u8; 16], bits: u8) -> bool {
    let mut left = u32::from(bits);
    for i in 0..16 {
        if left == 0 {
            return true;
        }
        let take = if left >= 8 { 8 } else { left };
        let mask = (0xffu32 << (8 - take)) as u8;
        if a[i] & mask != prefix[i] & mask {
            return false;
        }
        left -= take;
    }
    true
}

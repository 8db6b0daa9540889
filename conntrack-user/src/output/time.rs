//! The time of an event, as a number until it is printed, and the clock events are stamped with.

use serde::Serialize;

/// A moment of an event: nanoseconds since the epoch. Kept as a number through the pipeline
/// (events are ordered by it, pcapng takes it as it is) and rendered as RFC 3339 with
/// nanoseconds only when printed (`Display`, and serde as a string).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub u64);

impl std::fmt::Display for Time {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(self.0);
        write!(f, "{}", humantime::format_rfc3339_nanos(t))
    }
}

/// Tests write times as people read them.
#[cfg(test)]
impl From<&str> for Time {
    fn from(s: &str) -> Self {
        let t = humantime::parse_rfc3339(s).expect("an RFC 3339 time");
        Time(t.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64)
    }
}

impl Serialize for Time {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Now on the clock the eBPF programs stamp events with (`bpf_ktime_get_boot_ns`: it counts
/// suspended time, so stamps stay comparable across a suspend).
pub fn boot_now() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME) as u64
}

/// What to add to a boot-clock stamp to make it epoch nanoseconds, now.
pub fn boot_to_epoch_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME)
}

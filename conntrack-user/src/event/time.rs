//! The time of an event, as a number until it is printed, and the clock events are stamped with.

use serde::Serialize;

/// A moment of an event: nanoseconds since the epoch. Kept as a number through the pipeline
/// (events are ordered by it, pcapng takes it as it is) and rendered as RFC 3339 with
/// nanoseconds only when printed (`Display`, and serde as a string).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub u64);

impl Time {
    /// RFC 3339 in UTC with nanoseconds, `2026-11-22T03:21:07.123456789Z`: always 30 bytes (a
    /// u64 of nanoseconds ends in 2554), written in place once per printed event.
    pub(crate) fn rfc3339(self) -> [u8; 30] {
        let (secs, nanos) = (self.0 / 1_000_000_000, self.0 % 1_000_000_000);
        let (days, sod) = (secs / 86_400, secs % 86_400);
        // Days since 1970-01-01 to a civil date (Howard Hinnant's `civil_from_days`).
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        let mut b = *b"0000-00-00T00:00:00.000000000Z";
        let mut put = |at: usize, width: usize, mut v: u64| {
            for i in (at..at + width).rev() {
                b[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, sod / 3_600);
        put(14, 2, sod / 60 % 60);
        put(17, 2, sod % 60);
        put(20, 9, nanos);
        b
    }
}

impl std::fmt::Display for Time {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only ASCII digits and separators were written.
        f.pad(std::str::from_utf8(&self.rfc3339()).unwrap_or_default())
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
        s.serialize_str(std::str::from_utf8(&self.rfc3339()).unwrap_or_default())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_humantime_prints_them() {
        // xorshift64*: deterministic, over the whole range a u64 of nanoseconds covers.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let edges = [
            0,
            1,
            951_782_400_000_000_000,
            1_709_164_800_999_999_999,
            u64::MAX,
        ];
        for ns in edges.into_iter().chain((0..100_000).map(|_| next())) {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns);
            let want = humantime::format_rfc3339_nanos(t).to_string();
            assert_eq!(Time(ns).to_string(), want, "{ns}");
            assert_eq!(
                serde_json::to_string(&Time(ns)).unwrap(),
                format!("\"{want}\"")
            );
        }
    }
}

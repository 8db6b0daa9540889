//! How large the conntrack table is by default for this node: the kernel's own sizing for its
//! RAM, by kernel version, and the incident write-ups' formula, each figure labelled with the
//! formula it comes from.
//!
//! The kernel's own sizing is `nf_conntrack_init_start()` in net/netfilter/nf_conntrack_core.c,
//! which, when no `hashsize=` module parameter was given, takes the bucket count from RAM:
//!
//! ```text
//! buckets = (nr_pages << PAGE_SHIFT) / 16384 / sizeof(struct hlist_head)   // a pointer
//! ```
//!
//! Since Linux 5.15, commit d532bcd0b269 ("netfilter: conntrack: sanitize table size default
//! settings", Florian Westphal; netfilter's fixes pull of 2021-09-03, so v5.15-rc1):
//! 262144 when `BITS_PER_LONG >= 64` and RAM > 4 GiB, else 65536 when RAM > 1 GiB; at least
//! 1024; `max_factor = 1` ("to keep the average hash chain length at 2 entries").
//! Before it (the same code in v4.19 and v5.4): 65536 when RAM > 4 GiB on any word size, else
//! 16384 when RAM > 1 GiB; at least 32; `max_factor = 4`.
//! Then `nf_ct_alloc_hashtable()` rounds the count up to whole pages of bucket heads
//! (`roundup(*sizep, PAGE_SIZE / sizeof(struct hlist_nulls_head))`: 512 a 4 KiB page on
//! 64-bit), and `nf_conntrack_max = max_factor * buckets`. With `hashsize=` given the factor is
//! 8; doctor cannot see whether it was, so it computes the default only.
//!
//! The write-ups' formula, `CONNTRACK_MAX = RAM / 16384 / (word bits / 32)`, is the pre-5.15
//! kernel's own max without its caps: (RAM / 16384 / 8) buckets x 4 = RAM / 32768 on 64-bit. Above
//! 1 GiB of RAM no kernel ever defaulted to it, so a node below it is not undersized by the
//! kernel's standard; it is a sizing some operators chose, shown for reference.
//!
//! The RAM is `MemTotal` now, which is `totalram_pages()` now: a little more than when a
//! built-in conntrack sized its table (boot memory is freed later), so in the proportional
//! range (up to 1 GiB) the figure can be a page of buckets off. Above 1 GiB the caps decide.

use serde::Serialize;

/// A default table size and the formula it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sizing {
    pub formula: &'static str,
    /// Hash buckets, where the formula sets them (the write-ups' does not: absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buckets: Option<u64>,
    pub max: u64,
}

/// Linux 5.15+: commit d532bcd0b269.
pub const KERNEL_5_15: &str = "Linux 5.15+ default (commit d532bcd0b269): buckets = RAM/16384/pointer size, 262144 above 4 GiB on 64-bit, 65536 above 1 GiB, at least 1024, rounded up to a page of buckets; max = buckets";
/// Linux before 5.15 (as in 4.19 and 5.4).
pub const KERNEL_OLD: &str = "Linux <5.15 default: buckets = RAM/16384/pointer size, 65536 above 4 GiB, 16384 above 1 GiB, at least 32, rounded up to a page of buckets; max = 4 x buckets";
/// The incident write-ups' formula.
pub const WRITEUPS: &str = "the write-ups' formula RAM/16384/(word bits/32): the pre-5.15 default's max without its caps, not a kernel default";

/// The first kernel whose default is [`KERNEL_5_15`].
pub const SANITIZED: (u32, u32) = (5, 15);

const GIB: u64 = 1 << 30;

/// `nf_conntrack_max / nf_conntrack_buckets` of the kernel's own sizing on `version`.
pub fn default_factor(version: (u32, u32)) -> u64 {
    if version >= SANITIZED {
        1
    } else {
        4
    }
}

/// The table `nf_conntrack_init_start()` of kernel `version` sizes for `ram_bytes` of RAM on a
/// machine with `word_bits`-bit pointers and `page_size`-byte pages.
pub fn kernel_default(
    ram_bytes: u64,
    word_bits: u32,
    page_size: u64,
    version: (u32, u32),
) -> Sizing {
    let ptr = u64::from(word_bits / 8).max(1);
    let page = page_size.max(ptr);
    let nr_pages = ram_bytes / page;
    let gib_pages = GIB / page;
    let mut buckets = nr_pages * page / 16384 / ptr;
    let formula = if version >= SANITIZED {
        if word_bits >= 64 && nr_pages > 4 * gib_pages {
            buckets = 262_144;
        } else if nr_pages > gib_pages {
            buckets = 65_536;
        }
        buckets = buckets.max(1024);
        KERNEL_5_15
    } else {
        if nr_pages > 4 * gib_pages {
            buckets = 65_536;
        } else if nr_pages > gib_pages {
            buckets = 16_384;
        }
        buckets = buckets.max(32);
        KERNEL_OLD
    };
    let per_page = page / ptr;
    let buckets = buckets.div_ceil(per_page) * per_page;
    Sizing {
        formula,
        buckets: Some(buckets),
        max: default_factor(version) * buckets,
    }
}

/// The write-ups' `RAM / 16384 / (word bits / 32)`.
pub fn writeups_max(ram_bytes: u64, word_bits: u32) -> Sizing {
    Sizing {
        formula: WRITEUPS,
        buckets: None,
        max: ram_bytes / 16384 / u64::from((word_bits / 32).max(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const NEW: (u32, u32) = (6, 18);
    const OLD: (u32, u32) = (5, 10);

    fn k(ram: u64, bits: u32, version: (u32, u32)) -> (u64, u64) {
        let s = kernel_default(ram, bits, 4096, version);
        (s.buckets.unwrap(), s.max)
    }

    #[test]
    fn the_kernels_own_default_by_version_and_ram() {
        // This build machine: 23.5 GiB on 6.18 reads max 262144 and buckets 262144.
        assert_eq!(k(24_684_092 * 1024, 64, NEW), (262_144, 262_144));
        // 5.15 is the first with the new sizing; 5.14 still has the old one.
        assert_eq!(k(16 * GIB, 64, (5, 15)), (262_144, 262_144));
        assert_eq!(k(16 * GIB, 64, (5, 14)), (65_536, 262_144));
        // Above 4 GiB: the same max both ways on 64-bit, four times the buckets since 5.15.
        assert_eq!(k(8 * GIB, 64, OLD), (65_536, 262_144));
        assert_eq!(k(8 * GIB, 64, NEW), (262_144, 262_144));
        // Between 1 and 4 GiB (a "4 GB" VM has a little less than 4 GiB of MemTotal).
        assert_eq!(k(3900 * MIB, 64, NEW), (65_536, 65_536));
        assert_eq!(k(3900 * MIB, 64, OLD), (16_384, 65_536));
        // Exactly 4 GiB is not above it.
        assert_eq!(k(4 * GIB, 64, NEW), (65_536, 65_536));
        // Up to 1 GiB: RAM/16384/8, rounded up to 512 buckets (a 4 KiB page of 8-byte heads).
        assert_eq!(k(512 * MIB, 64, NEW), (4096, 4096));
        assert_eq!(k(512 * MIB, 64, OLD), (4096, 16_384));
        assert_eq!(k(1000 * MIB, 64, NEW), (8192, 8192), "8000 rounded up");
        // Floors: 1024 since 5.15; 32 before, which the page rounding makes 512.
        assert_eq!(k(64 * MIB, 64, NEW), (1024, 1024));
        assert_eq!(k(64 * MIB, 64, OLD), (512, 2048));
        // 32-bit: no 262144 branch; 4-byte heads, 1024 to a page.
        assert_eq!(k(8 * GIB, 32, NEW), (65_536, 65_536));
        assert_eq!(k(8 * GIB, 32, OLD), (65_536, 262_144));
        assert_eq!(k(256 * MIB, 32, OLD), (4096, 16_384));
        // 64 KiB pages (arm64, ppc64le): 8192 heads a page.
        let s = kernel_default(512 * MIB, 64, 65_536, NEW);
        assert_eq!((s.buckets, s.max), (Some(8192), 8192));
        assert_eq!(kernel_default(GIB, 64, 4096, NEW).formula, KERNEL_5_15);
        assert_eq!(kernel_default(GIB, 64, 4096, OLD).formula, KERNEL_OLD);
        assert_eq!((default_factor(NEW), default_factor(OLD)), (1, 4));
    }

    #[test]
    fn the_writeups_formula_is_the_old_default_without_its_caps() {
        let ram = 16 * GIB;
        assert_eq!(writeups_max(ram, 32).max, 1 << 20);
        assert_eq!(writeups_max(ram, 64).max, 1 << 19);
        assert_eq!(writeups_max(0, 64).max, 0);
        assert_eq!(writeups_max(24_684_092 * 1024, 64).max, 771_377);
        // Below 1 GiB (no cap) it equals the old kernel's max, on both word sizes.
        for (ram, bits) in [(512 * MIB, 64), (256 * MIB, 32)] {
            assert_eq!(writeups_max(ram, bits).max, k(ram, bits, OLD).1);
        }
        // Above, the kernel capped it: the write-ups give more than any kernel's default.
        assert!(writeups_max(ram, 64).max > k(ram, 64, NEW).1);
        assert!(writeups_max(ram, 64).max > k(ram, 64, OLD).1);
    }
}

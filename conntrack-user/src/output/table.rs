//! Table pressure over a run: the kernel's own `drop` / `early_drop` / `insert_failed` deltas
//! for the namespace and the exit line of the tallies (`event::TableTally`).

use std::collections::HashMap;

use crate::event::TableTally;

/// The delta of one kernel counter between two readings.
pub fn delta(
    before: Option<&HashMap<String, u64>>,
    after: Option<&HashMap<String, u64>>,
    name: &str,
) -> Option<u64> {
    let a = before?.get(name)?;
    let b = after?.get(name)?;
    Some(b.saturating_sub(*a))
}

/// The exit line about table pressure (only when something happened).
pub fn summary_line(netns: u32, t: &TableTally) -> Option<String> {
    let quiet = t.table_full.counted == 0
        && t.midstream.counted == 0
        && t.evicted.shown == 0
        && t.kernel_drop.unwrap_or(0) == 0
        && t.kernel_early_drop.unwrap_or(0) == 0
        && t.kernel_insert_failed.unwrap_or(0) == 0;
    if quiet {
        return None;
    }
    let k = |v: Option<u64>| v.map_or("unknown".to_string(), |v| v.to_string());
    Some(format!(
        "ct-trace: conntrack table in netns {netns} (max {}): table_full {} (kernel drop {}), evicted shown {} (kernel early_drop {}{}), insert_failed (kernel) {}, midstream {}",
        t.max.map_or("unknown".to_string(), |m| m.to_string()),
        t.table_full.counted,
        k(t.kernel_drop),
        t.evicted.shown,
        k(t.kernel_early_drop),
        if t.evicted.inferred > 0 {
            format!(", {} inferred", t.evicted.inferred)
        } else {
            String::new()
        },
        k(t.kernel_insert_failed),
        t.midstream.counted,
    ))
}

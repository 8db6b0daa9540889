//! The lab's verdict: what the applications saw (connections, resets, losses) beside what
//! ct-trace reported (resets, attributions by cause, INVALID verdicts), whether that is what
//! the scenario and fix should give, and the `compare` table. Text for people, JSON for tests.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;
use serde_json::Value;

use crate::cli::{Fix, Scenario};

use super::{
    scenario::{Tally, Trigger},
    workload::Outcome,
};

#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub kind: &'static str,
    pub scenario: Scenario,
    pub fix: Fix,
    pub kernel: String,
    pub connections: u32,
    pub connections_reset: u32,
    pub connections_lost: u32,
    /// RSTs sent in the lab's namespaces, as ct-trace saw them.
    pub resets: u64,
    /// Attributed resets by cause (`invalid_packet`, `entry_lost`).
    pub attributed: BTreeMap<String, u64>,
    /// INVALID verdicts in the node (ct-trace's exact count).
    pub invalid: u64,
    pub ignored: u64,
    pub midstream: u64,
    /// New flows conntrack had no room for (ct-trace's count), and the kernel's `drop` counter
    /// of the node over the same run.
    pub table_full: u64,
    pub kernel_drop: u64,
    pub evicted: u64,
    /// Runs of ct-trace's kprobe and tracepoint programs the kernel skipped (ct-trace's
    /// `missed_runs`, summed): each may be an event ct-trace could not see.
    pub missed_runs: u64,
    #[serde(flatten)]
    pub trigger: Trigger,
    pub expected: &'static str,
    pub as_expected: bool,
}

impl Verdict {
    /// Tallies ct-trace's events; `netns` are the lab namespaces' inodes (resets elsewhere on
    /// the machine are not the lab's).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        scenario: Scenario,
        fix: Fix,
        kernel: String,
        apps: Outcome,
        events: &[Value],
        netns: &[u64],
        trigger: Trigger,
        expectation: (&'static str, fn(&Tally) -> bool),
    ) -> Self {
        let of = |k: &'static str| of_kind(events, k);
        let resets = of("rst_sent")
            .filter(|e| e["netns"].as_u64().is_some_and(|n| netns.contains(&n)))
            .count() as u64;
        let mut attributed = BTreeMap::new();
        for a in of("attribution") {
            let cause = a["cause"].as_str().unwrap_or("invalid_packet").to_string();
            *attributed.entry(cause).or_insert(0) += 1;
        }
        let summary = events.iter().rev().find(|e| e["kind"] == "summary");
        let invalid = summary
            .and_then(|s| s["invalid"]["counted"].as_u64())
            .unwrap_or_else(|| of("invalid").count() as u64);
        let table = summary.map(|s| &s["table"]);
        let table_full = table
            .and_then(|t| t["table_full"]["counted"].as_u64())
            .unwrap_or_else(|| of("table_full").count() as u64);
        let kernel_drop = table.and_then(|t| t["kernel_drop"].as_u64()).unwrap_or(0);
        let missed_runs = summary
            .and_then(|s| s["missed_runs"].as_object())
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
        let tally = Tally {
            resets,
            attributed_invalid: attributed.get("invalid_packet").copied().unwrap_or(0),
            attributed_lost: attributed.get("entry_lost").copied().unwrap_or(0),
            invalid,
            lost: apps.lost(),
            table_full,
            kernel_drop,
            missed_runs,
            refused: trigger.table.as_ref().map_or(0, |t| t.refused),
        };
        let (expected, check) = expectation;
        Self {
            kind: "lab_verdict",
            scenario,
            fix,
            kernel,
            connections: apps.connections,
            connections_reset: apps.reset,
            connections_lost: apps.lost(),
            resets,
            attributed,
            invalid,
            ignored: of("ignored").count() as u64,
            midstream: of("midstream").count() as u64,
            table_full,
            kernel_drop,
            evicted: of("evicted").count() as u64,
            missed_runs,
            trigger,
            expected,
            as_expected: check(&tally),
        }
    }

    pub fn attributed_total(&self) -> u64 {
        self.attributed.values().sum()
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "lab: scenario {} with fix {} (kernel {})",
            self.scenario.name(),
            self.fix.name(),
            self.kernel
        );
        if let Some(p) = &self.trigger.packet {
            let _ = writeln!(
                s,
                "  packet:       {} > {} {} seq={} ack={} len={} (server snd_nxt={} rcv_nxt={}): {}",
                p.src,
                p.dst,
                p.flags,
                p.seq,
                p.ack,
                p.len,
                p.server_snd_next,
                p.server_rcv_next,
                p.what
            );
        }
        if let Some(t) = &self.trigger.table {
            let _ = writeln!(
                s,
                "  table:        nf_conntrack_max {} -> {} (the node had {} entries; restored after the run); {} new connections, {} could not open",
                t.max_before, t.max, t.entries_before, t.attempted, t.refused
            );
            let _ = writeln!(
                s,
                "  table full:   {} new flows dropped (kernel drop counter {}), {} evicted{}",
                self.table_full,
                self.kernel_drop,
                self.evicted,
                if self.missed_runs > 0 {
                    format!("; {} program runs skipped by the kernel", self.missed_runs)
                } else {
                    String::new()
                }
            );
        }
        for d in &self.trigger.deleted_entries {
            let _ = writeln!(s, "  deleted:      conntrack entry {d}");
        }
        let _ = writeln!(
            s,
            "  connections:  {} ({} reset, {} lost in all)",
            self.connections, self.connections_reset, self.connections_lost
        );
        let causes: Vec<String> = self
            .attributed
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        let _ = writeln!(
            s,
            "  ct-trace:     {} resets sent, {} attributed ({}), {} INVALID verdicts, {} ignored, {} midstream",
            self.resets,
            self.attributed_total(),
            if causes.is_empty() { "-".into() } else { causes.join(", ") },
            self.invalid,
            self.ignored,
            self.midstream
        );
        let _ = writeln!(
            s,
            "  expected:     {}\n  verdict:      {}",
            self.expected,
            if self.as_expected {
                "as expected"
            } else {
                "NOT as expected"
            }
        );
        s
    }
}

fn of_kind<'a>(events: &'a [Value], kind: &'static str) -> impl Iterator<Item = &'a Value> {
    events.iter().filter(move |e| e["kind"] == kind)
}

/// One line per ct-trace event, the fields that tell the story.
pub fn digest(e: &Value) -> Option<String> {
    let s = |k: &str| match &e[k] {
        Value::String(v) => v.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    };
    let flow = || format!("{}:{} > {}:{}", s("src"), s("sport"), s("dst"), s("dport"));
    let line = match e["kind"].as_str()? {
        "summary" => return None,
        "invalid" | "ignored" => format!(
            "{} {} seq={} ack={} len={} fate={} reason={}",
            flow(),
            s("flags"),
            s("seq"),
            s("ack"),
            s("len"),
            s("fate"),
            s("reason")
        ),
        "rst_sent" | "rst_received" => format!(
            "{} netns={} reason={} cause={}",
            flow(),
            s("netns"),
            s("reason"),
            s("cause")
        ),
        "attribution" => format!(
            "client={} service={} backend={} reset={}>{} cause={} invalid_reason={}",
            s("client"),
            s("service"),
            s("backend"),
            s("reset_src"),
            s("reset_dst"),
            s("cause"),
            s("invalid_reason")
        ),
        "midstream" => format!(
            "{} {} lost={}",
            flow(),
            s("flags"),
            e["lost"]["how"].as_str().unwrap_or("-")
        ),
        "table_full" => format!(
            "{} {} no room: entries={} max={}",
            flow(),
            s("flags"),
            s("entries"),
            s("max")
        ),
        "evicted" => format!(
            "{} > {} (reply {} > {}) {} evicted: entries={} max={}",
            e["entry"]["orig_src"].as_str().unwrap_or("-"),
            e["entry"]["orig_dst"].as_str().unwrap_or("-"),
            e["entry"]["reply_src"].as_str().unwrap_or("-"),
            e["entry"]["reply_dst"].as_str().unwrap_or("-"),
            e["entry"]["tcp_state"].as_str().unwrap_or("-"),
            s("entries"),
            s("max")
        ),
        _ => e.to_string(),
    };
    Some(format!("{:<13}{line}", e["kind"].as_str()?))
}

/// `lab compare`'s table.
pub fn table(scenario: Scenario, rows: &[Verdict]) -> String {
    let mut s = format!("lab compare: scenario {}\n", scenario.name());
    let _ = writeln!(
        s,
        "{:<14}{:>8}{:>12}{:>9}{:>18}{:>12}  verdict",
        "fix", "resets", "attributed", "invalid", "connections lost", "table full"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<14}{:>8}{:>12}{:>9}{:>18}{:>12}  {}",
            r.fix.name(),
            r.resets,
            r.attributed_total(),
            r.invalid,
            r.connections_lost,
            r.table_full,
            if r.as_expected {
                "as expected"
            } else {
                "NOT as expected"
            }
        );
    }
    s
}

#[derive(Serialize)]
struct CompareRow {
    fix: Fix,
    resets: u64,
    attributed: u64,
    attributed_by_cause: BTreeMap<String, u64>,
    invalid: u64,
    connections: u32,
    connections_lost: u32,
    table_full: u64,
    as_expected: bool,
}

pub fn table_json(scenario: Scenario, rows: &[Verdict]) -> Value {
    let rows: Vec<CompareRow> = rows
        .iter()
        .map(|r| CompareRow {
            fix: r.fix,
            resets: r.resets,
            attributed: r.attributed_total(),
            attributed_by_cause: r.attributed.clone(),
            invalid: r.invalid,
            connections: r.connections,
            connections_lost: r.connections_lost,
            table_full: r.table_full,
            as_expected: r.as_expected,
        })
        .collect();
    serde_json::json!({"kind": "lab_compare", "scenario": scenario, "rows": rows})
}

//! The per-flow reset summary: attributed resets summed by client -> Service -> backend.

use std::collections::HashMap;

use crate::output::report::{AttributionReport, FlowReport, Time};

/// Flows in the reset summary; attributions of further flows are summed in one
/// `(other flows)` row.
pub const MAX_FLOWS: usize = 10_000;

/// One flow of the reset summary: client -> service -> backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub resets: u64,
    pub reasons: Vec<String>,
    pub first: Time,
    pub last: Time,
}

#[derive(Default)]
pub(super) struct Flows {
    flows: HashMap<(String, String, String), FlowStats>,
}

impl Flows {
    /// Counts an attribution in its flow's row.
    pub fn count(&mut self, a: &AttributionReport) {
        let mut key = (
            a.client.clone().unwrap_or_else(|| "?".into()),
            a.service.clone().unwrap_or_else(|| "-".into()),
            a.backend.clone(),
        );
        if self.flows.len() >= MAX_FLOWS && !self.flows.contains_key(&key) {
            key = ("(other flows)".into(), "-".into(), "-".into());
        }
        let f = self.flows.entry(key).or_default();
        f.resets += 1;
        if !f.reasons.contains(&a.invalid_reason) && f.reasons.len() < 16 {
            f.reasons.push(a.invalid_reason.clone());
        }
        if f.resets == 1 {
            f.first = a.time;
        }
        f.last = a.time;
    }

    /// The flows ranked by attributed resets, most first.
    pub fn summary(&self) -> Vec<FlowReport> {
        let mut v: Vec<_> = self
            .flows
            .iter()
            .map(|((client, service, backend), s)| FlowReport {
                client: client.clone(),
                service: service.clone(),
                backend: backend.clone(),
                resets: s.resets,
                reasons: s.reasons.clone(),
                first: s.first,
                last: s.last,
            })
            .collect();
        v.sort_by(|a, b| {
            b.resets.cmp(&a.resets).then_with(|| {
                (&a.client, &a.service, &a.backend).cmp(&(&b.client, &b.service, &b.backend))
            })
        });
        v
    }
}

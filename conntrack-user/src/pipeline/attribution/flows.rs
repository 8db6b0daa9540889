//! The per-flow reset summary: attributed resets summed by client -> Service -> backend.

use std::collections::HashMap;

use crate::event::{AttributionReport, Endpoint, FlowReport, ReasonText, Time};

/// Flows in the reset summary; attributions of further flows are summed in one
/// `(other flows)` row.
pub const MAX_FLOWS: usize = 10_000;

/// One flow of the reset summary: client -> service -> backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub resets: u64,
    pub reasons: Vec<ReasonText>,
    pub first: Time,
    pub last: Time,
}

/// A row of the summary: a flow's client, Service and backend as the attribution names them,
/// or the row of further flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum FlowKey {
    Flow {
        client: Option<Endpoint>,
        service: Option<Endpoint>,
        backend: Endpoint,
    },
    Other,
}

#[derive(Default)]
pub(super) struct Flows {
    flows: HashMap<FlowKey, FlowStats>,
}

impl Flows {
    /// Counts an attribution in its flow's row.
    pub fn count(&mut self, a: &AttributionReport) {
        let mut key = FlowKey::Flow {
            client: a.client,
            service: a.service,
            backend: a.backend,
        };
        if self.flows.len() >= MAX_FLOWS && !self.flows.contains_key(&key) {
            key = FlowKey::Other;
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
            .map(|(key, s)| {
                // Rendered once per flow, at exit.
                let (client, service, backend) = match key {
                    FlowKey::Flow {
                        client,
                        service,
                        backend,
                    } => (
                        client.map_or_else(|| "?".into(), |c| c.to_string()),
                        service.map_or_else(|| "-".into(), |s| s.to_string()),
                        backend.to_string(),
                    ),
                    FlowKey::Other => ("(other flows)".into(), "-".into(), "-".into()),
                };
                (client, service, backend, s)
            })
            .map(|(client, service, backend, s)| FlowReport {
                client,
                service,
                backend,
                resets: s.resets,
                reasons: s.reasons.iter().map(|r| r.to_string()).collect(),
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

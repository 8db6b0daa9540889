//! `attribution`: a reset laid at the door of the packet conntrack let through without its NAT,
//! naming client, Service and backend.

use std::sync::Arc;

use serde::Serialize;

use super::{
    endpoint::Endpoint,
    invalid::Fate,
    lost::LostReport,
    reason::ReasonText,
    tags::{Enrichment, NfHook, ResetCause},
    time::Time,
};

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AttributionReport {
    pub time: Time,
    /// The host whose connection was reset: the original source of the conntrack entry.
    pub client: Option<Endpoint>,
    /// The address the client connected to (conntrack original destination, before DNAT).
    pub service: Option<Endpoint>,
    /// The address that answered (the backend, after DNAT), source of the INVALID packet.
    pub backend: Endpoint,
    /// Who sent the reset, and to whom.
    pub reset_src: Endpoint,
    pub reset_dst: Endpoint,
    pub reset_netns: u32,
    pub reset_reason: Option<Arc<str>>,
    pub invalid_netns: u32,
    pub invalid_hook: NfHook,
    pub invalid_reason: ReasonText,
    pub invalid_time: Time,
    pub seq: u32,
    pub ack: u32,
    pub delay_us: u64,
    pub fate: Fate,
    /// What let the packet through without the Service's NAT: `invalid_packet` (conntrack
    /// marked it INVALID; the `invalid_*` fields describe that verdict) or `entry_lost` (its
    /// flow's entry was gone and conntrack picked it up mid-stream; the `invalid_*` fields then
    /// describe that packet at the node, and `lost` the entry it had).
    pub cause: ResetCause,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<LostReport>,
    /// `skipped` when the entry behind the reset could not be looked up in time (`client` is
    /// then the packet's destination and `service` null).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrichment: Option<Enrichment>,
    /// The Service, `namespace/name:portname` as kube-proxy's rules name it: by the `service`
    /// address when it is known, else by the `backend` (omitted when no rule names either).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_name: Option<Arc<str>>,
}

//! How addresses and names are written in text lines.

use std::{fmt::Write as _, net::IpAddr};

/// ` service_name=ns/name:port` at the end of a text line, when known.
pub fn service_name_text(s: &mut String, name: &Option<String>) {
    if let Some(n) = name {
        let _ = write!(s, " service_name={n}");
    }
}

/// `addr:port`, with IPv6 addresses in brackets (`[fd00::1]:80`).
pub fn endpoint(a: IpAddr, p: u16) -> String {
    match a {
        IpAddr::V6(a) => format!("[{a}]:{p}"),
        a => format!("{a}:{p}"),
    }
}

/// [`endpoint`] for fields that may be unknown: the address alone without a port, `?` without one.
pub fn endpoint_of(a: Option<IpAddr>, p: Option<u16>) -> String {
    match (a, p) {
        (Some(a), Some(p)) => endpoint(a, p),
        (Some(a), None) => a.to_string(),
        _ => "?".into(),
    }
}

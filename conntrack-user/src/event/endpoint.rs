//! One end of a flow: [`Endpoint`] keeps it typed (address, port) until it is printed as
//! `addr:port`, its `Display` beside it.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

/// `addr:port`, with IPv6 addresses in brackets (`[fd00::1]:80`).
pub fn endpoint(a: IpAddr, p: u16) -> String {
    Endpoint::new(Some(a), Some(p)).to_string()
}

/// [`endpoint`] for fields that may be unknown: the address alone without a port, `?` without one.
pub fn endpoint_of(a: Option<IpAddr>, p: Option<u16>) -> String {
    Endpoint::new(a, p).to_string()
}

/// One end of a flow as far as it is known: printed `addr:port` (`[fd00::1]:80`), the address
/// alone without a port, `?` without an address; a JSON string of the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: Option<IpAddr>,
    pub port: Option<u16>,
}

impl Endpoint {
    pub fn new(addr: Option<IpAddr>, port: Option<u16>) -> Self {
        Self { addr, port }
    }

    fn write(&self, w: &mut impl fmt::Write) -> fmt::Result {
        match (self.addr, self.port) {
            (Some(IpAddr::V6(a)), Some(p)) => write!(w, "[{a}]:{p}"),
            (Some(a), Some(p)) => write!(w, "{a}:{p}"),
            (Some(a), None) => write!(w, "{a}"),
            _ => w.write_str("?"),
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Self {
        Self::new(Some(a.ip()), Some(a.port()))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.width().is_none() {
            return self.write(f);
        }
        // Padded as one string ("[ffff:...]:65535" is at most 47 bytes).
        let mut s = String::with_capacity(48);
        self.write(&mut s)?;
        f.pad(&s)
    }
}

impl serde::Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_print_as_before() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(endpoint(v4, 80), "10.0.0.1:80");
        assert_eq!(endpoint(v6, 80), "[fd00::1]:80");
        assert_eq!(endpoint_of(Some(v4), None), "10.0.0.1");
        assert_eq!(endpoint_of(None, Some(80)), "?");
        assert_eq!(
            format!("{:<14}|", Endpoint::new(Some(v4), Some(80))),
            "10.0.0.1:80   |"
        );
        assert_eq!(
            serde_json::to_string(&Endpoint::from(SocketAddr::new(v6, 443))).unwrap(),
            "\"[fd00::1]:443\""
        );
    }
}

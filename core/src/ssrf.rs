//! The SSRF policy: which destination addresses outbound requests may use. Webhook destinations are chosen by
//! operators and API clients, so a destination must never reach the gateway's own network: loopback, private
//! ranges, link-local (cloud metadata at 169.254.169.254), and every IPv6 spelling of those. This module decides;
//! `hookgate_actors::ssrf::guarded_client` enforces it on every socket address it is about to connect to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

/// Why a destination was refused or could not be reached before any connection was made.
#[derive(Debug, thiserror::Error)]
pub enum SsrfError {
    /// The address is in a forbidden range and not allowlisted.
    #[error("destination address {ip} is forbidden ({reason})")]
    Forbidden { ip: IpAddr, reason: &'static str },
    /// The URL is unusable as a destination (scheme, host, credentials).
    #[error("bad destination URL: {0}")]
    BadUrl(String),
    /// DNS resolution failed.
    #[error("DNS resolution failed: {0}")]
    Resolve(String),
    /// The hostname resolved to no address at all.
    #[error("{0} has no DNS address")]
    NoAddress(String),
}

/// Which destination addresses outbound requests may use.
///
/// Every public unicast address is allowed; the ranges listed by [`forbidden_reason`] are refused unless they lie
/// inside one of the allowlisted networks (for tests, or deliberately internal destinations).
#[derive(Debug, Clone, Default)]
pub struct SsrfPolicy {
    allow: Vec<IpNet>,
}

impl SsrfPolicy {
    /// A policy refusing the forbidden ranges except inside the `allow` networks.
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// The allowlisted networks.
    pub fn allowlist(&self) -> &[IpNet] {
        &self.allow
    }

    /// Err when `ip` is forbidden and not inside an allowlisted network.
    ///
    /// For an IPv6 address embedding an IPv4 address (mapped, compatible, NAT64, 6to4), the address is allowed
    /// when either the IPv6 address or the embedded IPv4 address is inside an allowlisted network.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), SsrfError> {
        let Some(reason) = forbidden_reason(ip) else { return Ok(()) };
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_ipv4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let allowed = self.allow.iter().any(|net| net.contains(&ip) || embedded.is_some_and(|v4| net.contains(&v4)));
        if allowed {
            Ok(())
        } else {
            Err(SsrfError::Forbidden { ip, reason })
        }
    }

    /// Checks a destination URL: scheme http or https, a host, no userinfo; an IP-literal host is checked now
    /// (hostnames are checked when they are resolved, at connect time).
    ///
    /// Send the request to the returned URL's `as_str()`: it is normalised (`http://2130706433/` becomes
    /// `http://127.0.0.1/`), so what was checked is what awc sees. `hookgate_actors::ssrf::guarded_client` re-checks at connect time
    /// regardless.
    pub fn check_url(&self, url: &str) -> Result<url::Url, SsrfError> {
        let parsed = url::Url::parse(url).map_err(|e| SsrfError::BadUrl(format!("not a valid URL: {e}")))?;
        match parsed.scheme() {
            "http" | "https" => {}
            other => return Err(SsrfError::BadUrl(format!("scheme must be http or https, not {other:?}"))),
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(SsrfError::BadUrl("credentials (userinfo) in the URL are not allowed".into()));
        }
        match parsed.host() {
            None => return Err(SsrfError::BadUrl("the URL has no host".into())),
            Some(url::Host::Domain("")) => return Err(SsrfError::BadUrl("the URL has an empty host".into())),
            Some(url::Host::Domain(_)) => {}
            Some(url::Host::Ipv4(v4)) => self.check_ip(IpAddr::V4(v4))?,
            Some(url::Host::Ipv6(v6)) => self.check_ip(IpAddr::V6(v6))?,
        }
        Ok(parsed)
    }

    /// Keeps the acceptable addresses; when none is, the error for the first refused one.
    /// Vets every resolved address: one forbidden address refuses the host (a name that resolves to both a public
    /// and an internal address is not trusted with either).
    pub fn vet(&self, addrs: impl IntoIterator<Item = SocketAddr>, host: &str) -> Result<Vec<SocketAddr>, SsrfError> {
        let mut vetted = Vec::new();
        for addr in addrs {
            self.check_ip(addr.ip())?;
            vetted.push(addr);
        }
        if vetted.is_empty() {
            return Err(SsrfError::NoAddress(host.to_owned()));
        }
        Ok(vetted)
    }
}

/// An IPv4 network as (address, prefix length, reason), most specific first.
const FORBIDDEN_V4: &[([u8; 4], u8, &str)] = &[
    ([255, 255, 255, 255], 32, "broadcast"),
    ([0, 0, 0, 0], 8, "unspecified (\"this network\")"),
    ([10, 0, 0, 0], 8, "private"),
    ([100, 64, 0, 0], 10, "carrier-grade NAT (shared address space)"),
    ([127, 0, 0, 0], 8, "loopback"),
    ([169, 254, 0, 0], 16, "link-local (includes cloud metadata)"),
    ([172, 16, 0, 0], 12, "private"),
    ([192, 0, 0, 0], 24, "IETF protocol assignments"),
    ([192, 0, 2, 0], 24, "documentation (TEST-NET-1)"),
    ([192, 168, 0, 0], 16, "private"),
    ([198, 18, 0, 0], 15, "benchmarking"),
    ([198, 51, 100, 0], 24, "documentation (TEST-NET-2)"),
    ([203, 0, 113, 0], 24, "documentation (TEST-NET-3)"),
    ([224, 0, 0, 0], 4, "multicast"),
    ([240, 0, 0, 0], 4, "reserved"),
];

/// An IPv6 network as (address, prefix length, reason), checked after the embedded-IPv4 forms.
const FORBIDDEN_V6: &[(u128, u8, &str)] = &[
    (0x0064_ff9b_0001 << 80, 48, "NAT64 local-use"),
    (0x2001_0db8 << 96, 32, "documentation"),
    (0x2001_0002 << 96, 48, "benchmarking"),
    (0x2001_0000 << 96, 32, "Teredo"),
    (0xfc00 << 112, 7, "unique-local"),
    (0xfe80 << 112, 10, "link-local"),
    (0xfec0 << 112, 10, "site-local (deprecated)"),
    (0xff00 << 112, 8, "multicast"),
];

fn in_prefix(addr: u128, net: u128, len: u8, bits: u32) -> bool {
    let len = u32::from(len);
    len == 0 || (addr ^ net) >> (bits - len) == 0
}

/// Why an address is forbidden, or None when it is a public unicast address.
///
/// IPv6 addresses that embed an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`,
/// NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by the embedded IPv4 address. IPv6 outside the global
/// unicast block 2000::/3 is reserved and forbidden.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let addr = u128::from(u32::from(v4));
            FORBIDDEN_V4
                .iter()
                .find(|(net, len, _)| in_prefix(addr, u128::from(u32::from(Ipv4Addr::from(*net))), *len, 32))
                .map(|(_, _, reason)| *reason)
        }
        IpAddr::V6(v6) => {
            if v6.is_unspecified() {
                return Some("unspecified");
            }
            if v6.is_loopback() {
                return Some("loopback");
            }
            if let Some(v4) = embedded_ipv4(v6) {
                return forbidden_reason(IpAddr::V4(v4));
            }
            let addr = u128::from(v6);
            if let Some((_, _, reason)) = FORBIDDEN_V6.iter().find(|(net, len, _)| in_prefix(addr, *net, *len, 128)) {
                return Some(reason);
            }
            if !in_prefix(addr, 0x2000 << 112, 3, 128) {
                return Some("reserved (outside global unicast 2000::/3)");
            }
            None
        }
    }
}

/// The IPv4 address embedded in an IPv4-mapped, IPv4-compatible, NAT64 (64:ff9b::/96) or 6to4 (2002::/16)
/// IPv6 address.
fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let o = v6.octets();
    let low32 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low32),
        // IPv4-compatible, except :: and ::1, which are IPv6's own unspecified and loopback addresses.
        [0, 0, 0, 0, 0, 0, _, _] if !v6.is_unspecified() && !v6.is_loopback() => Some(low32),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low32),
        [0x2002, _, _, ..] => Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ssrf_address_table() {
        let forbidden = [
            "127.0.0.1",
            "127.255.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.0.1",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "198.19.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::10.1.2.3",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "2002:c0a8:0101::",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "64:ff9b:1::1",
            "100::1",
        ];
        for a in forbidden {
            assert!(forbidden_reason(ip(a)).is_some(), "{a} should be forbidden");
            assert!(SsrfPolicy::default().check_ip(ip(a)).is_err(), "{a} should be refused");
        }
        let allowed = [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "169.253.255.255",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700::1111",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ];
        for a in allowed {
            assert_eq!(forbidden_reason(ip(a)), None, "{a} should be allowed");
            assert!(SsrfPolicy::default().check_ip(ip(a)).is_ok(), "{a} should be accepted");
        }
        assert_eq!(forbidden_reason(ip("127.0.0.1")), Some("loopback"));
        assert_eq!(forbidden_reason(ip("::ffff:127.0.0.1")), Some("loopback"));
        assert_eq!(forbidden_reason(ip("255.255.255.255")), Some("broadcast"));
        assert_eq!(forbidden_reason(ip("2001::1")), Some("Teredo"));
    }

    #[test]
    fn ssrf_allowlist() {
        let policy = SsrfPolicy::new(vec!["127.0.0.1/32".parse().unwrap()]);
        assert!(policy.check_ip(ip("127.0.0.1")).is_ok());
        assert!(policy.check_ip(ip("::ffff:127.0.0.1")).is_ok(), "embedded v4 inside the allowlist counts");
        match policy.check_ip(ip("127.0.0.2")) {
            Err(SsrfError::Forbidden { ip: refused, reason }) => {
                assert_eq!(refused, ip("127.0.0.2"));
                assert_eq!(reason, "loopback");
            }
            other => panic!("expected Forbidden, got {other:?}"),
        }
        assert!(policy.check_ip(ip("::1")).is_err());
        let v6 = SsrfPolicy::new(vec!["fd00::/8".parse().unwrap()]);
        assert!(v6.check_ip(ip("fd00::5")).is_ok());
        assert!(v6.check_ip(ip("fe80::1")).is_err());
    }

    #[test]
    fn ssrf_check_url() {
        let policy = SsrfPolicy::default();
        let bad_url = |u: &str| matches!(policy.check_url(u), Err(SsrfError::BadUrl(_)));
        let forbidden = |u: &str| matches!(policy.check_url(u), Err(SsrfError::Forbidden { .. }));
        assert!(bad_url("ftp://example.com/file"));
        assert!(bad_url("file:///etc/passwd"));
        assert!(bad_url("gopher://example.com/"));
        assert!(bad_url("http://"));
        assert!(bad_url("http://:8080/"));
        assert!(bad_url("unix:/var/run/docker.sock"));
        assert!(bad_url("not a url"));
        assert!(bad_url("http://user:pass@example.com/"));
        assert!(bad_url("https://user@example.com/"));
        assert!(bad_url("https://:secret@example.com/"));
        assert!(forbidden("http://127.0.0.1/"));
        assert!(forbidden("http://10.0.0.1:8080/hook"));
        assert!(forbidden("http://169.254.169.254/latest/meta-data/"));
        assert!(forbidden("http://[::1]/"));
        assert!(forbidden("http://[::ffff:192.168.0.1]/"));
        assert!(forbidden("http://[fd00::1]/"));
        assert!(forbidden("http://2130706433/"), "decimal spelling of 127.0.0.1");
        assert!(forbidden("http://0x7f.1/"), "hex spelling of 127.0.0.1");
        let ok = policy.check_url("https://example.com/hooks?a=1").unwrap();
        assert_eq!(ok.host_str(), Some("example.com"));
        assert!(policy.check_url("http://8.8.8.8:8080/").is_ok());
        assert!(policy.check_url("http://[2606:4700::1111]/").is_ok());
        let local = SsrfPolicy::new(vec!["127.0.0.1/32".parse().unwrap()]);
        assert!(local.check_url("http://127.0.0.1:9/").is_ok());
        assert!(matches!(local.check_url("http://127.0.0.2:9/"), Err(SsrfError::Forbidden { .. })));
    }
}

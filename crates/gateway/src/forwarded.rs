//! Who sent a request, and which origin the browser used, believing `X-Forwarded-*` headers
//! only from the configured proxies (`gateway.trusted_proxies`).
//!
//! Guarantee: a client that connects directly cannot choose the address it is counted under
//! nor the origin a page builds links with: from an untrusted peer the headers are ignored.
//!
//! - The client address is the TCP peer, unless the peer is a trusted proxy: then
//!   `X-Forwarded-For` is read from the right (each proxy appends the address it saw) and the
//!   first hop that is not a trusted proxy is the client. Hops left of it were written by the
//!   client and are never believed. An unparsable hop stops the walk at the last address a
//!   trusted proxy vouched for.
//! - The origin is `Host` from an untrusted peer; from a trusted proxy, `X-Forwarded-Host` /
//!   `X-Forwarded-Proto` (first value) when present. Only `X-Forwarded-*` is read, not
//!   RFC 7239 `Forwarded`.
//! - IPv4-mapped IPv6 peers are compared as IPv4 (a dual-stack listener reports them so).

use std::net::IpAddr;
use std::str::FromStr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The trusted proxies: addresses and networks.
#[derive(Debug, Clone, Default)]
pub(crate) struct Proxies(Vec<IpNet>);

impl Proxies {
    /// Parses `gateway.trusted_proxies` (IPs like `10.0.0.7`, `::1`, or CIDRs like
    /// `10.0.0.0/8`); the error names the first bad entry.
    pub(crate) fn parse(entries: &[String]) -> Result<Self, String> {
        entries
            .iter()
            .map(|e| {
                let e = e.trim();
                IpNet::from_str(e)
                    .or_else(|_| IpAddr::from_str(e).map(IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| format!("{e:?} is neither an IP address nor a CIDR network"))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether `ip` is one of the trusted proxies.
    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client's address (see the module docs); `peer` is `None` when the server did not
    /// record it (then nothing forwarded is believed either).
    pub(crate) fn client(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?.to_canonical();
        if !self.trusts(peer) {
            return Some(peer);
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                break;
            };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        Some(client)
    }

    /// `{scheme}://{host}` the browser used, from a request sent by `peer` (see the module
    /// docs); `None` when the host is missing or not a plain host[:port].
    pub(crate) fn origin(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<String> {
        let first = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let forwarded = peer.is_some_and(|p| self.trusts(p));
        let host = forwarded
            .then(|| first("x-forwarded-host"))
            .flatten()
            .or_else(|| first("host"))?;
        let valid = host.len() <= 255
            && host.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
            });
        if !valid {
            return None;
        }
        let scheme = match forwarded.then(|| first("x-forwarded-proto")).flatten() {
            Some(p) if p.eq_ignore_ascii_case("https") => "https",
            _ => "http",
        };
        Some(format!("{scheme}://{host}"))
    }
}

/// One `X-Forwarded-For` hop: an IP, optionally with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim_matches('"');
    IpAddr::from_str(hop)
        .ok()
        .or_else(|| std::net::SocketAddr::from_str(hop).ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

/// The rate-limit subject of a client address: IPv4 as is, IPv6 by its /64 (one subscriber
/// usually holds a whole /64, so per-address limits would not hold per address).
pub(crate) fn subject(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_str(k).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn proxies_parse_ips_and_networks() {
        let p =
            Proxies::parse(&["10.0.0.0/8".into(), " 192.168.1.7 ".into(), "::1".into()]).unwrap();
        assert!(p.trusts("10.200.3.4".parse().unwrap()));
        assert!(p.trusts("192.168.1.7".parse().unwrap()));
        assert!(!p.trusts("192.168.1.8".parse().unwrap()));
        assert!(p.trusts("::1".parse().unwrap()));
        // A dual-stack listener reports IPv4 peers as mapped IPv6.
        assert!(p.trusts("::ffff:10.1.2.3".parse().unwrap()));
        // Host bits of a CIDR are dropped rather than refused.
        assert!(
            Proxies::parse(&["10.1.2.3/8".into()])
                .unwrap()
                .trusts("10.9.9.9".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "proxy.internal", "", "1.2.3.4/"] {
            let e = Proxies::parse(&[bad.into()]).unwrap_err();
            assert!(e.contains("neither"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_client_is_the_peer_unless_a_trusted_proxy_forwarded() {
        let p = Proxies::parse(&["10.0.0.0/8".into()]).unwrap();
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 7.7.7.7")]);
        // Untrusted peer: its header is ignored.
        assert_eq!(p.client(ip("203.0.113.9"), &h), ip("203.0.113.9"));
        // Trusted peer: the rightmost untrusted hop; what the client wrote left of it is not.
        assert_eq!(p.client(ip("10.0.0.2"), &h), ip("7.7.7.7"));
        let chain = headers(&[
            ("x-forwarded-for", "6.6.6.6, 198.51.100.4"),
            ("x-forwarded-for", "10.3.3.3"),
        ]);
        assert_eq!(p.client(ip("10.0.0.2"), &chain), ip("198.51.100.4"));
        // Every hop trusted: the leftmost; none: the proxy itself.
        let internal = headers(&[("x-forwarded-for", "10.9.9.9, 10.8.8.8")]);
        assert_eq!(p.client(ip("10.0.0.2"), &internal), ip("10.9.9.9"));
        assert_eq!(p.client(ip("10.0.0.2"), &HeaderMap::new()), ip("10.0.0.2"));
        // Ports and garbage.
        let ported = headers(&[("x-forwarded-for", "[2001:db8::1]:443, 198.51.100.7:5000")]);
        assert_eq!(p.client(ip("10.0.0.2"), &ported), ip("198.51.100.7"));
        let junk = headers(&[("x-forwarded-for", "6.6.6.6, not-an-ip, 10.4.4.4")]);
        assert_eq!(p.client(ip("10.0.0.2"), &junk), ip("10.4.4.4"));
        assert_eq!(p.client(None, &h), None);
        // No proxies configured: never believed.
        assert_eq!(
            Proxies::default().client(ip("10.0.0.2"), &h),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn the_origin_believes_forwarded_headers_only_from_trusted_proxies() {
        let p = Proxies::parse(&["127.0.0.1".into()]).unwrap();
        let h = headers(&[
            ("host", "gw.internal:8080"),
            ("x-forwarded-host", "wx.example.com"),
            ("x-forwarded-proto", "https"),
        ]);
        assert_eq!(
            p.origin(ip("127.0.0.1"), &h).as_deref(),
            Some("https://wx.example.com")
        );
        assert_eq!(
            p.origin(ip("203.0.113.9"), &h).as_deref(),
            Some("http://gw.internal:8080")
        );
        assert_eq!(
            p.origin(None, &h).as_deref(),
            Some("http://gw.internal:8080")
        );
        let junk = headers(&[("host", "gw"), ("x-forwarded-host", "evil.com/<script>")]);
        assert_eq!(p.origin(ip("127.0.0.1"), &junk), None);
        assert_eq!(p.origin(ip("127.0.0.1"), &HeaderMap::new()), None);
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        assert_eq!(subject("198.51.100.4".parse().unwrap()), "198.51.100.4");
        assert_eq!(
            subject("2001:db8:1:2:aaaa::1".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            subject("2001:db8:1:2:bbbb::9".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
        assert_eq!(subject("::ffff:1.2.3.4".parse().unwrap()), "1.2.3.4");
    }
}

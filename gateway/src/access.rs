//! Which networks may call the gateway: an allowlist of CIDR blocks, off when empty.
//!
//! The client is the socket's peer, unless the peer is one of the configured trusted proxies:
//! then `X-Forwarded-For` is read from the right, skipping trusted proxies, and the first other
//! address is the client. A forwarded list that cannot be read leaves no client, and no client
//! is let in while the allowlist is on.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

const FORWARDED_FOR: &str = "x-forwarded-for";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {entry:?} is not an address or a CIDR block")]
pub struct BadNetwork {
    setting: &'static str,
    entry: String,
}

#[derive(Debug, Default)]
pub struct Access {
    allow: Vec<IpNet>,
    trusted_proxies: Vec<IpNet>,
}

impl Access {
    /// From the configured lists; a plain address counts as a block of one.
    pub fn new(allow: &[String], trusted_proxies: &[String]) -> Result<Self, BadNetwork> {
        Ok(Self {
            allow: networks("gateway.allow_cidrs", allow)?,
            trusted_proxies: networks("gateway.trusted_proxies", trusted_proxies)?,
        })
    }

    /// The caller's address as far as it can be trusted.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = canonical(peer.ip());
        if !self.is_trusted_proxy(peer) || !headers.contains_key(FORWARDED_FOR) {
            return Some(peer);
        }
        let mut hops = Vec::new();
        for value in headers.get_all(FORWARDED_FOR) {
            let text = value.to_str().ok()?;
            for hop in text.split(',') {
                hops.push(parse_hop(hop.trim())?);
            }
        }
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            client = hop;
            if !self.is_trusted_proxy(hop) {
                break;
            }
        }
        Some(client)
    }

    /// Whether a request from `client` may go on.
    pub fn allows(&self, client: Option<IpAddr>) -> bool {
        if self.allow.is_empty() {
            return true;
        }
        client.is_some_and(|ip| self.allow.iter().any(|net| net.contains(&ip)))
    }

    fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

fn networks(setting: &'static str, entries: &[String]) -> Result<Vec<IpNet>, BadNetwork> {
    entries
        .iter()
        .map(|entry| entry.trim())
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| BadNetwork { setting, entry: entry.to_owned() })
        })
        .collect()
}

/// An address as written in `X-Forwarded-For`: bare, with a port, or IPv6 in brackets.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|addr| addr.ip()))
        .or_else(|_| hop.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>())
        .ok()
        .map(canonical)
}

/// IPv4 seen through an IPv6 socket (`::ffff:a.b.c.d`) as plain IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn access(allow: &[&str], proxies: &[&str]) -> Access {
        let owned = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        Access::new(&owned(allow), &owned(proxies)).expect("valid networks")
    }

    fn forwarded(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(FORWARDED_FOR, HeaderValue::from_static(value));
        }
        headers
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().expect("ip"), 40000)
    }

    #[test]
    fn an_empty_allowlist_lets_everyone_in() {
        let open = access(&[], &[]);
        assert!(open.allows(Some("203.0.113.9".parse().expect("ip"))));
        assert!(open.allows(None));
    }

    #[test]
    fn the_allowlist_matches_blocks_and_single_addresses() {
        let list = access(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"], &[]);
        let allowed = |ip: &str| list.allows(list.client(peer(ip), &HeaderMap::new()));
        assert!(allowed("10.200.1.1"));
        assert!(allowed("192.0.2.7"));
        assert!(allowed("::ffff:10.1.2.3"));
        assert!(allowed("2001:db8::1"));
        assert!(!allowed("192.0.2.8"));
        assert!(!allowed("127.0.0.1"));
    }

    #[test]
    fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
        let list = access(&["10.0.0.0/8"], &["127.0.0.1"]);
        let from_proxy = forwarded(&["10.1.1.1"]);
        assert_eq!(list.client(peer("127.0.0.1"), &from_proxy), "10.1.1.1".parse().ok());
        // The same header from anyone else is ignored.
        assert_eq!(list.client(peer("192.0.2.1"), &from_proxy), "192.0.2.1".parse().ok());
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let list = access(&["10.0.0.0/8"], &["127.0.0.1", "172.16.0.0/12"]);
        // A client cannot pose as an allowed address by writing it first.
        let spoofed = forwarded(&["10.9.9.9, 198.51.100.4", "172.16.0.5"]);
        let client = list.client(peer("127.0.0.1"), &spoofed);
        assert_eq!(client, "198.51.100.4".parse().ok());
        assert!(!list.allows(client));
        let with_ports = forwarded(&["[2001:db8::9]:443, 10.2.3.4:5678"]);
        assert_eq!(list.client(peer("127.0.0.1"), &with_ports), "10.2.3.4".parse().ok());
    }

    #[test]
    fn an_unreadable_forwarded_list_leaves_no_client() {
        let list = access(&["10.0.0.0/8"], &["127.0.0.1"]);
        let client = list.client(peer("127.0.0.1"), &forwarded(&["10.1.1.1, unknown"]));
        assert_eq!(client, None);
        assert!(!list.allows(client));
    }

    #[test]
    fn bad_entries_are_named() {
        let err = Access::new(&["10.0.0.0/33".into()], &[]).expect_err("bad block");
        assert_eq!(
            err.to_string(),
            "gateway.allow_cidrs: \"10.0.0.0/33\" is not an address or a CIDR block"
        );
    }
}

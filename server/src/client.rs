//! Who a request is from: the client address that stream admission, the write rate and
//! replays count by.
//!
//! It is the connection's peer, unless the peer is a reverse proxy listed in
//! `TRUSTED_PROXIES`: then it is the rightmost `X-Forwarded-For` entry that is not a trusted
//! proxy (each proxy appends the address it got the request from, so entries left of the
//! first untrusted one could have been written by the client itself). An entry that is not an
//! IP address ends the walk at the proxy that passed it on.
//!
//! Addresses are counted by [`client_key`]: one IPv6 /64 is one client.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv6Addr};

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use ipnet::IpNet;

use crate::net::ConnInfo;

/// The address `peer` is counted as: an IPv4 address as it is (also when IPv4-mapped), an
/// IPv6 address by its /64.
pub fn client_key(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !u128::from(u64::MAX);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

/// `TRUSTED_PROXIES`: the reverse proxies whose `X-Forwarded-For` is believed, and which are
/// exempt from the per-address connection cap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Reads a comma-separated list of addresses (`10.0.0.5`, `::1`) and networks
    /// (`10.0.0.0/8`); `None` names the first entry that is neither.
    pub fn parse(text: &str) -> Result<Self, String> {
        text.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| entry.to_owned())
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Whether `peer` is a trusted proxy.
    pub fn contains(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.0.iter().any(|net| net.contains(&peer))
    }

    /// The client address of a request that came from `peer` with `headers` (see the module
    /// docs).
    pub fn client_of(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer;
        if !self.contains(client) {
            return client;
        }
        // Later headers were appended later: walk them, and each one's entries, from the right.
        for value in headers.get_all("x-forwarded-for").iter().rev() {
            let Ok(list) = value.to_str() else {
                return client;
            };
            for entry in list.rsplit(',') {
                let Ok(hop) = entry.trim().parse::<IpAddr>() else {
                    return client;
                };
                client = hop;
                if !self.contains(hop) {
                    return client;
                }
            }
        }
        client
    }
}

/// The client address of a request (see the module docs); `None` when it did not come through
/// the site's listener (a request a test hands to the router directly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub Option<IpAddr>);

impl ClientAddr {
    /// The client address of a request with `parts`.
    pub fn of(parts: &Parts, trusted: &TrustedProxies) -> Self {
        Self(
            parts
                .extensions
                .get::<ConnectInfo<ConnInfo>>()
                .map(|ConnectInfo(conn)| trusted.client_of(conn.remote.ip(), &parts.headers)),
        )
    }
}

impl<S> FromRequestParts<S> for ClientAddr
where
    S: Send + Sync,
    TrustedProxies: FromRef<S>,
{
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::of(parts, &TrustedProxies::from_ref(state)))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                "x-forwarded-for",
                HeaderValue::from_str(value).expect("header"),
            );
        }
        headers
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let a = ip("2001:db8:1:2:aaaa::1");
        assert_eq!(client_key(a), client_key(ip("2001:db8:1:2:ffff:1:2:3")));
        assert_eq!(client_key(a), ip("2001:db8:1:2::"));
        assert_ne!(client_key(a), client_key(ip("2001:db8:1:3::1")));
        assert_eq!(client_key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(client_key(ip("10.1.2.4")), ip("10.1.2.4"));
    }

    #[test]
    fn parses_addresses_and_networks_and_names_a_bad_entry() {
        let trusted = TrustedProxies::parse(" 10.0.0.0/8, ::1 ,192.168.1.7,").expect("list");
        assert!(trusted.contains(ip("10.200.0.1")));
        assert!(trusted.contains(ip("::1")));
        assert!(trusted.contains(ip("::ffff:192.168.1.7")));
        assert!(!trusted.contains(ip("192.168.1.8")));
        assert_eq!(
            TrustedProxies::parse("10.0.0.1, proxy.local"),
            Err("proxy.local".to_owned())
        );
        assert_eq!(TrustedProxies::parse(""), Ok(TrustedProxies::default()));
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let trusted = TrustedProxies::parse("10.0.0.1").expect("list");
        let headers = forwarded(&["1.2.3.4"]);
        assert_eq!(trusted.client_of(ip("5.6.7.8"), &headers), ip("5.6.7.8"));
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_entry_is_the_client() {
        let trusted = TrustedProxies::parse("10.0.0.0/24").expect("list");
        // The client forged the first entry; the proxy appended the real one.
        let headers = forwarded(&["6.6.6.6, 1.2.3.4", "10.0.0.2"]);
        assert_eq!(trusted.client_of(ip("10.0.0.1"), &headers), ip("1.2.3.4"));
        // Nothing forwarded: the proxy itself.
        assert_eq!(
            trusted.client_of(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
        // Every entry trusted: the leftmost.
        let inner = forwarded(&["10.0.0.3, 10.0.0.2"]);
        assert_eq!(trusted.client_of(ip("10.0.0.1"), &inner), ip("10.0.0.3"));
        // Garbage stops the walk at the proxy that passed it on.
        let garbage = forwarded(&["1.2.3.4, unknown, 10.0.0.2"]);
        assert_eq!(trusted.client_of(ip("10.0.0.1"), &garbage), ip("10.0.0.2"));
    }
}

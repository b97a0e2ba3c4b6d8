//! The client's IP address, decided once per request: the connection's
//! peer, unless the peer is one of `TRUSTED_PROXIES` — then the rightmost
//! address of `X-Forwarded-For` that is not itself a trusted proxy (what a
//! client can forge sits to the left of what the proxies appended; MDN
//! "X-Forwarded-For", security and privacy concerns). The per-IP limit and
//! the sessions' network prefix read it; nothing else believes the header.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;

/// The client's address as decided by [`resolve`] (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    /// The address of `req`: its [`ClientIp`] extension, else the
    /// connection's peer, else `0.0.0.0` (an in-process call).
    pub fn of(req: &Request) -> IpAddr {
        req.extensions().get::<ClientIp>().map(|c| c.0).unwrap_or_else(|| {
            req.extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
        })
    }
}

/// The proxies whose `X-Forwarded-For` is believed (`TRUSTED_PROXIES`:
/// addresses or CIDR networks, comma separated; empty believes nobody).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses `TRUSTED_PROXIES` entries (`10.0.0.0/8`, `127.0.0.1`, `::1`).
    ///
    /// # Errors
    /// An entry that is neither an address nor a network.
    pub fn parse(entries: &[String]) -> anyhow::Result<Self> {
        let mut nets = Vec::new();
        for e in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let net = match e.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => IpNet::from(
                    e.parse::<IpAddr>()
                        .map_err(|_| anyhow::anyhow!("TRUSTED_PROXIES: {e:?} is not an address"))?,
                ),
            };
            nets.push(net);
        }
        Ok(Self(nets))
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client behind `peer` given the `X-Forwarded-For` values in
    /// order: `peer` unless trusted; otherwise walking the addresses right
    /// to left, the first one not trusted (or the leftmost, if all are).
    /// An unparsable entry stops the walk at the last good address.
    pub fn client<'a>(&self, peer: IpAddr, forwarded: impl DoubleEndedIterator<Item = &'a str>) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        for hop in forwarded.rev() {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else { break };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// Middleware: decides the request's [`ClientIp`].
pub async fn resolve(State(trusted): State<Arc<TrustedProxies>>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let values: Vec<String> = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::to_owned)
        .collect();
    let client = trusted.client(peer, values.iter().map(String::as_str));
    req.extensions_mut().insert(ClientIp(client));
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_trusted_proxies_are_believed() {
        let none = TrustedProxies::default();
        assert_eq!(none.client(ip("10.0.0.1"), ["6.6.6.6"].into_iter()), ip("10.0.0.1"), "no proxy trusted");
        let lb = TrustedProxies::parse(&["10.0.0.0/8".into(), "::1".into()]).unwrap();
        // A direct client forging the header is not believed.
        assert_eq!(lb.client(ip("203.0.113.9"), ["6.6.6.6"].into_iter()), ip("203.0.113.9"));
        // Through the proxy: the rightmost address it did not append itself.
        assert_eq!(lb.client(ip("10.0.0.1"), ["6.6.6.6", "198.51.100.7"].into_iter()), ip("198.51.100.7"));
        // Through two proxies of ours.
        assert_eq!(lb.client(ip("10.0.0.1"), ["198.51.100.7", "10.1.1.1"].into_iter()), ip("198.51.100.7"));
        // A proxy that sends no header: the proxy itself.
        assert_eq!(lb.client(ip("::1"), std::iter::empty()), ip("::1"));
        // Garbage stops the walk.
        assert_eq!(lb.client(ip("10.0.0.1"), ["198.51.100.7", "junk"].into_iter()), ip("10.0.0.1"));
        assert!(TrustedProxies::parse(&["not-an-ip".into()]).is_err());
    }
}

//! IP networks of the allowlist (`10.0.0.0/8`, `::1`, a hostname's addresses).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// One network: an address and a prefix length (32/128 for a single address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// Why an allowlist entry is not a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("'{0}' is not a network (address/prefix)")]
    NotANetwork(String),
    #[error("'{network}': '{addr}' is not an IP address")]
    NotAnAddress { network: String, addr: String },
    #[error("'{network}': prefix must be 0..={max}")]
    Prefix { network: String, max: u8 },
}

impl IpNet {
    pub fn host(addr: IpAddr) -> IpNet {
        let addr = addr.to_canonical();
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        IpNet { addr, prefix }
    }

    /// `addr/prefix`; host bits may be set (Patroni parses with `strict=False`).
    pub fn parse_cidr(text: &str) -> Result<IpNet, CidrError> {
        let (addr_text, prefix) = text
            .split_once('/')
            .ok_or_else(|| CidrError::NotANetwork(text.to_string()))?;
        let addr: IpAddr = addr_text
            .trim()
            .parse()
            .map_err(|_| CidrError::NotAnAddress {
                network: text.to_string(),
                addr: addr_text.to_string(),
            })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .trim()
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| CidrError::Prefix {
                network: text.to_string(),
                max,
            })?;
        Ok(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr.to_canonical(), ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(net: &[u8], ip: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if net[..full] != ip[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    net[full] & mask == ip[full] & mask
}

/// Every address `host` resolves to (an IP literal resolves to itself).
pub fn resolve(host: &str, port: u16) -> std::io::Result<Vec<IpNet>> {
    let host = host.trim().trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![IpNet::host(ip)]);
    }
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    Ok(addrs.into_iter().map(|a| IpNet::host(a.ip())).collect())
}

/// Host and port of an `http[s]://host[:port]/...` URL (a member's `api_url`).
pub fn url_host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), port.parse().ok()?)),
        None => Some((authority.to_string(), default_port)),
    }
    .filter(|(host, _)| !host.is_empty())
}

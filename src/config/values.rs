//! The rules for single values of a configuration, one place each: keys, resolvers, MTUs, networks. The JSON
//! check, the file parser and the Python boundary all use these.

use std::net::IpAddr;

use ipnet::IpNet;

use super::MIN_MTU;
use crate::error::Error;
use crate::keys;

/// The reason a key does not decode.
pub(super) fn key_error(text: &str) -> Option<String> {
    match keys::decode("", text) {
        Ok(_) => None,
        Err(Error::InvalidKey { reason, .. }) => Some(reason),
        Err(e) => Some(e.to_string()),
    }
}

/// A resolver address or search domain, as wg-quick takes them; the reason otherwise.
pub(super) fn check_dns_entry(entry: &str) -> std::result::Result<(), String> {
    let domain = !entry.is_empty()
        && entry.len() <= 253
        && entry.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if domain || entry.parse::<IpAddr>().is_ok() {
        Ok(())
    } else {
        Err(format!("{entry:?} is neither an IP address nor a domain"))
    }
}

/// The entries of a comma-separated list of resolvers and search domains.
pub(crate) fn parse_dns(text: &str) -> std::result::Result<Vec<String>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| check_dns_entry(e).map(|()| e.to_string()))
        .collect()
}

/// An MTU: `MIN_MTU` to 65535; the reason otherwise.
pub(crate) fn check_mtu(mtu: i64) -> std::result::Result<u16, String> {
    u16::try_from(mtu)
        .ok()
        .filter(|m| *m >= MIN_MTU)
        .ok_or_else(|| not_an_mtu(mtu))
}

/// An MTU written as text.
pub(super) fn parse_mtu(text: &str) -> std::result::Result<u16, String> {
    check_mtu(text.parse().map_err(|_| not_an_mtu(format!("{text:?}")))?)
}

fn not_an_mtu(value: impl std::fmt::Display) -> String {
    format!("{value} is not an MTU ({MIN_MTU} to 65535)")
}

/// A comma-separated list of addresses or networks (see `parse_net`).
pub(crate) fn parse_nets(text: &str) -> std::result::Result<Vec<IpNet>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_net)
        .collect()
}

/// An address with or without a prefix length (without: a single host).
fn parse_net(text: &str) -> std::result::Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not an IP address or network (like 10.0.0.2/32)"))
}

pub(super) fn join<T: ToString>(items: &[T]) -> String {
    items.iter().map(T::to_string).collect::<Vec<_>>().join(", ")
}

/// An Endpoint, `host:port` or `[v6]:port`, as given (a host name is resolved when the tunnel starts).
pub(crate) fn parse_endpoint(text: &str) -> std::result::Result<String, String> {
    let text = text.trim();
    let bad = || format!("{text:?} is not host:port (an IPv6 address in brackets: [fd00::1]:51820)");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let host = match host.strip_prefix('[') {
        Some(rest) => {
            let v6 = rest.strip_suffix(']').ok_or_else(bad)?;
            v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
            v6
        }
        None if host.contains(':') => return Err(bad()),
        None => host,
    };
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(text.to_string()),
        _ => Err(format!("{port:?} is not a port (1 to 65535)")),
    }
}

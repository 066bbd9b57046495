//! Tunnel addresses for new peers; see the configuration's documentation.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;

use super::{default_address, join, Configuration};

/// Hands out tunnel addresses to new peers: host number n of each of the server's networks, lowest free first.
pub(super) struct Allocator {
    /// One network per address family.
    networks: Vec<IpNet>,
    hosts: HashSet<IpAddr>,
    /// Taken networks that are more than one host.
    ranges: Vec<IpNet>,
    next: u128,
}

impl Allocator {
    pub(super) fn new(config: &Configuration) -> Self {
        let server = if config.address.is_empty() {
            default_address()
        } else {
            config.address.clone()
        };
        let mut networks: Vec<IpNet> = vec![];
        for net in &server {
            if !networks
                .iter()
                .any(|n| n.addr().is_ipv4() == net.addr().is_ipv4())
            {
                networks.push(net.trunc());
            }
        }
        let mut hosts: HashSet<IpAddr> = server.iter().map(IpNet::addr).collect();
        hosts.extend(config.dns.iter().filter_map(|d| d.parse::<IpAddr>().ok()));
        let mut ranges = vec![];
        for net in config.peers.iter().flat_map(|p| &p.allowed_ips) {
            if net.prefix_len() == net.max_prefix_len() {
                hosts.insert(net.addr());
            } else {
                ranges.push(net.trunc());
            }
        }
        Allocator {
            networks,
            hosts,
            ranges,
            next: 1,
        }
    }

    /// Host numbers of a network are below this: IPv4 keeps the last address for broadcast.
    fn host_limit(net: &IpNet) -> u128 {
        let bits = u32::from(net.max_prefix_len() - net.prefix_len());
        let size = 1u128.checked_shl(bits).unwrap_or(u128::MAX);
        match net {
            IpNet::V4(_) => size.saturating_sub(1),
            IpNet::V6(_) => size,
        }
    }

    fn host(net: &IpNet, n: u128) -> IpAddr {
        match net {
            IpNet::V4(v4) => IpAddr::V4((u32::from(v4.network()) + n as u32).into()),
            IpNet::V6(v6) => IpAddr::V6((u128::from(v6.network()) + n).into()),
        }
    }

    fn is_free(&self, addr: IpAddr) -> bool {
        !self.hosts.contains(&addr) && !self.ranges.iter().any(|r| r.contains(&addr))
    }

    pub(super) fn next(&mut self) -> std::result::Result<Vec<IpNet>, String> {
        let limit = self.networks.iter().map(Self::host_limit).min().unwrap_or(0);
        while self.next < limit {
            let n = self.next;
            self.next += 1;
            let addrs: Vec<IpAddr> = self.networks.iter().map(|net| Self::host(net, n)).collect();
            if addrs.iter().all(|a| self.is_free(*a)) {
                self.hosts.extend(&addrs);
                return Ok(addrs.into_iter().map(IpNet::from).collect());
            }
        }
        Err(format!("no free tunnel address left in {}", join(&self.networks)))
    }
}

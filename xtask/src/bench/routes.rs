//! The one route table the HTTP benchmark serves, from which every proxy's config is generated.
//!
//! 100 virtual hosts `h000.bench.example` .. `h099.bench.example`, each with 10 prefix
//! routes `/r0/` .. `/r9/` and nothing else, all to one backend pool. Every proxy does the
//! same host + prefix lookup for every request; only the syntax differs.

use std::net::{Ipv4Addr, SocketAddrV4};

/// Domain under which the virtual hosts live.
pub const DOMAIN: &str = "bench.example";

/// The routing table: `hosts` virtual hosts with `prefixes` prefix routes each.
#[derive(Clone, Debug)]
pub struct RouteTable {
    /// Number of virtual hosts.
    pub hosts: usize,
    /// Number of prefix routes per virtual host.
    pub prefixes: usize,
    /// The backend pool every route goes to (`ip:port` of each endpoint).
    pub backends: Vec<SocketAddrV4>,
}

impl RouteTable {
    /// The benchmark's table: 100 hosts x 10 prefixes to `backends`.
    pub fn standard(backends: Vec<SocketAddrV4>) -> Self {
        Self {
            hosts: 100,
            prefixes: 10,
            backends,
        }
    }

    /// Host name of virtual host `i` (`h007.bench.example`).
    pub fn host(&self, i: usize) -> String {
        format!("h{i:03}.{DOMAIN}")
    }

    /// Path prefix of route `j` (`/r7/`).
    pub fn prefix(&self, j: usize) -> String {
        format!("/r{j}/")
    }

    /// All host names, in order.
    pub fn host_names(&self) -> Vec<String> {
        (0..self.hosts).map(|i| self.host(i)).collect()
    }

    /// All prefixes of one virtual host, in order.
    pub fn prefix_list(&self) -> Vec<String> {
        (0..self.prefixes).map(|j| self.prefix(j)).collect()
    }

    /// Every `(host, path)` request the load generator sends: one per route, with a
    /// suffix after the prefix so that only prefix matching can route it.
    pub fn requests(&self) -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(self.hosts * self.prefixes);
        for i in 0..self.hosts {
            for j in 0..self.prefixes {
                out.push((self.host(i), format!("{}item", self.prefix(j))));
            }
        }
        out
    }

    /// The backend endpoint addresses (without ports).
    pub fn backend_ips(&self) -> Vec<Ipv4Addr> {
        self.backends.iter().map(|a| *a.ip()).collect()
    }

    /// The port every backend endpoint listens on (the first one's; they share it).
    pub fn backend_port(&self) -> u16 {
        self.backends.first().map_or(8080, |a| a.port())
    }
}

#[cfg(test)]
pub(crate) fn sample() -> RouteTable {
    RouteTable::standard(vec![
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 10), 8080),
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 11), 8080),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thousand_distinct_routed_requests() {
        let table = sample();
        let requests = table.requests();
        assert_eq!(requests.len(), 1000);
        let unique: std::collections::HashSet<_> = requests.iter().collect();
        assert_eq!(unique.len(), 1000);
        assert_eq!(
            requests[0],
            ("h000.bench.example".into(), "/r0/item".into())
        );
        assert_eq!(
            requests[999],
            ("h099.bench.example".into(), "/r9/item".into())
        );
    }
}

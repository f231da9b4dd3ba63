//! The route tables the HTTP benchmark serves, from which every proxy's config is generated.
//!
//! The standard table: 100 virtual hosts `h000.bench.example` .. `h099.bench.example`, each
//! with 10 prefix routes `/r0/` .. `/r9/` and nothing else, all to one backend pool. The
//! large ones ([`RouteTable::large`]): 1,000 or 10,000 virtual hosts (`h0000` .. `h9999`)
//! with 3 prefix routes each. Every proxy does the same host + prefix lookup for every
//! request; only the syntax differs.

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

    /// A table of many virtual hosts with [`LARGE_PREFIXES`] prefix routes each.
    pub fn large(hosts: usize, backends: Vec<SocketAddrV4>) -> Self {
        Self {
            hosts,
            prefixes: LARGE_PREFIXES,
            backends,
        }
    }

    /// `100 hosts x 10 routes`.
    pub fn describe(&self) -> String {
        format!("{} hosts x {} routes", thousands(self.hosts), self.prefixes)
    }

    /// Number of routes (hosts x prefixes).
    pub fn routes(&self) -> usize {
        self.hosts * self.prefixes
    }

    /// Host name of virtual host `i` (`h007.bench.example`; zero-padded to the width of
    /// the largest number, at least 3 digits).
    pub fn host(&self, i: usize) -> String {
        let width = self.hosts.saturating_sub(1).to_string().len().max(3);
        format!("h{i:0width$}.{DOMAIN}")
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

    /// One routed request per virtual host, the prefix cycling with the host number: what
    /// the routing check sends for tables too large to request every route.
    pub fn request_per_host(&self) -> Vec<(String, String)> {
        (0..self.hosts)
            .map(|i| {
                (
                    self.host(i),
                    format!("{}item", self.prefix(i % self.prefixes.max(1))),
                )
            })
            .collect()
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

/// Prefix routes per virtual host in the large tables.
pub const LARGE_PREFIXES: usize = 3;

/// `10000` -> `10,000`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
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

    #[test]
    fn large_tables_pad_host_names_and_check_one_route_per_host() {
        let table = RouteTable::large(10_000, sample().backends);
        assert_eq!(table.host(0), "h0000.bench.example");
        assert_eq!(table.host(9999), "h9999.bench.example");
        assert_eq!(table.routes(), 30_000);
        assert_eq!(table.requests().len(), 30_000);
        let per_host = table.request_per_host();
        assert_eq!(per_host.len(), 10_000);
        assert_eq!(
            per_host[4],
            ("h0004.bench.example".into(), "/r1/item".into())
        );
        assert_eq!(table.describe(), "10,000 hosts x 3 routes");
        assert_eq!(
            RouteTable::large(1000, vec![]).host(7),
            "h007.bench.example"
        );
        assert_eq!(sample().describe(), "100 hosts x 10 routes");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}

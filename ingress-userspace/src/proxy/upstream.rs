//! Data path, upstream side: choosing a cluster by weight and an endpoint
//! round-robin, the pooled HTTP clients, and per-endpoint stats.
//!
//! Balancing state lives here keyed by cluster name rather than in the
//! snapshot, so a config swap does not reset round-robin positions or stats.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::snapshot::{Cluster, Endpoint, UpstreamProtocol, WeightedCluster};

use super::forward::UpstreamBody;

/// Picks one of `clusters` in proportion to its weight. `roll` is a uniform
/// random number. A zero total weight picks the first cluster.
pub fn choose_weighted(clusters: &[WeightedCluster], roll: u64) -> Option<&WeightedCluster> {
    let total: u64 = clusters.iter().map(|c| u64::from(c.weight)).sum();
    if total == 0 {
        return clusters.first();
    }
    let mut point = roll % total;
    for cluster in clusters {
        let weight = u64::from(cluster.weight);
        if point < weight {
            return Some(cluster);
        }
        point -= weight;
    }
    clusters.last()
}

/// A uniform random u64; not cryptographic, only for load balancing.
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded randomly per thread and its keys advance with
    // every `new()`, which is enough spread for a weighted choice.
    std::collections::hash_map::RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Counters of one endpoint of one cluster, shown by `/clusters`.
#[derive(Debug, Default)]
pub struct EndpointStats {
    pub cx_active: AtomicI64,
    pub cx_total: AtomicU64,
    pub cx_connect_fail: AtomicU64,
    pub rq_active: AtomicI64,
    pub rq_total: AtomicU64,
    pub rq_success: AtomicU64,
    pub rq_error: AtomicU64,
    pub rq_timeout: AtomicU64,
}

/// Balancing state and stats of one cluster.
#[derive(Debug, Default)]
pub struct ClusterState {
    next: AtomicUsize,
    endpoints: RwLock<HashMap<SocketAddr, Arc<EndpointStats>>>,
    pub rq_total: AtomicU64,
    pub rq_active: AtomicI64,
    pub rq_timeout: AtomicU64,
    pub cx_connect_fail: AtomicU64,
    pub cx_none_healthy: AtomicU64,
    pub rq_2xx: AtomicU64,
    pub rq_3xx: AtomicU64,
    pub rq_4xx: AtomicU64,
    pub rq_5xx: AtomicU64,
    pub cx_tx_bytes: AtomicU64,
    pub cx_rx_bytes: AtomicU64,
    /// `upstream_rq_retry`, `upstream_rq_retry_success`,
    /// `upstream_rq_retry_limit_exceeded`.
    pub rq_retry: AtomicU64,
    pub rq_retry_success: AtomicU64,
    pub rq_retry_limit_exceeded: AtomicU64,
}

impl ClusterState {
    /// The next serving endpoint of `cluster`, round-robin; `None` when no
    /// endpoint is serving.
    pub fn choose_endpoint<'c>(&self, cluster: &'c Cluster) -> Option<&'c Endpoint> {
        let serving = cluster.endpoints.iter().filter(|e| e.serving).count();
        if serving == 0 {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed) % serving;
        cluster.endpoints.iter().filter(|e| e.serving).nth(n)
    }

    /// Like [`ClusterState::choose_endpoint`], but prefers endpoints not in
    /// `avoid` (Envoy's `previous_hosts` retry predicate); falls back to any
    /// serving endpoint when all were tried.
    pub fn choose_endpoint_avoiding<'c>(
        &self,
        cluster: &'c Cluster,
        avoid: &[SocketAddr],
    ) -> Option<&'c Endpoint> {
        if avoid.is_empty() {
            return self.choose_endpoint(cluster);
        }
        let fresh = || {
            cluster
                .endpoints
                .iter()
                .filter(|e| e.serving && !avoid.contains(&e.address))
        };
        let count = fresh().count();
        if count == 0 {
            return self.choose_endpoint(cluster);
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed) % count;
        fresh().nth(n)
    }

    /// The stats of the endpoint at `address`.
    pub fn endpoint(&self, address: SocketAddr) -> Arc<EndpointStats> {
        if let Some(stats) = self
            .endpoints
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&address)
        {
            return stats.clone();
        }
        self.endpoints
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(address)
            .or_default()
            .clone()
    }

    /// Stats of `address` if any request or connection used it.
    pub fn endpoint_if_used(&self, address: SocketAddr) -> Option<Arc<EndpointStats>> {
        self.endpoints
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&address)
            .cloned()
    }

    /// Counts a response status class.
    pub fn count_status(&self, status: u16) {
        let counter = match status {
            200..=299 => &self.rq_2xx,
            300..=399 => &self.rq_3xx,
            400..=499 => &self.rq_4xx,
            _ => &self.rq_5xx,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Cluster states by cluster name.
#[derive(Debug, Default)]
pub struct Balancer {
    clusters: RwLock<HashMap<String, Arc<ClusterState>>>,
}

impl Balancer {
    /// The state of `cluster`, created on first use.
    pub fn state(&self, cluster: &str) -> Arc<ClusterState> {
        if let Some(state) = self
            .clusters
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(cluster)
        {
            return state.clone();
        }
        self.clusters
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(cluster.to_owned())
            .or_default()
            .clone()
    }

    /// The state of `cluster` if it was ever used.
    pub fn state_if_used(&self, cluster: &str) -> Option<Arc<ClusterState>> {
        self.clusters
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(cluster)
            .cloned()
    }

    /// Forgets clusters that are no longer configured.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.clusters
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|name, _| keep(name));
    }
}

/// The upstream client type: pooled keep-alive connections over TCP.
pub type HttpClient = Client<HttpConnector, UpstreamBody>;

/// One pooled client per (connect timeout, protocol): the connect timeout is
/// a property of the connector, so clusters that differ in it cannot share.
#[derive(Debug, Default)]
pub struct UpstreamClients {
    clients: RwLock<HashMap<(Duration, bool), HttpClient>>,
}

impl UpstreamClients {
    /// The client for `cluster`.
    pub fn for_cluster(&self, cluster: &Cluster) -> HttpClient {
        let http2 = cluster.protocol == UpstreamProtocol::Http2;
        let key = (cluster.connect_timeout, http2);
        if let Some(client) = self
            .clients
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
        {
            return client.clone();
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cluster.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .http2_only(http2)
            .build(connector);
        self.clients
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key)
            .or_insert(client)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Discovery;

    fn weighted(weights: &[u32]) -> Vec<WeightedCluster> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| WeightedCluster {
                name: format!("c{i}"),
                weight,
                headers: None,
            })
            .collect()
    }

    #[test]
    fn weighted_choice_follows_weights() {
        let clusters = weighted(&[75, 25]);
        let picks: Vec<&str> = (0..100)
            .map(|roll| choose_weighted(&clusters, roll).unwrap().name.as_str())
            .collect();
        assert_eq!(picks.iter().filter(|&&n| n == "c0").count(), 75);
        assert_eq!(picks.iter().filter(|&&n| n == "c1").count(), 25);
        assert_eq!(choose_weighted(&clusters, 74).unwrap().name, "c0");
        assert_eq!(choose_weighted(&clusters, 75).unwrap().name, "c1");
        // u64::MAX % 100 == 15
        assert_eq!(choose_weighted(&clusters, u64::MAX).unwrap().name, "c0");
        assert_eq!(choose_weighted(&weighted(&[0, 0]), 5).unwrap().name, "c0");
        assert!(choose_weighted(&[], 5).is_none());
    }

    #[test]
    fn random_choice_is_roughly_proportional() {
        let clusters = weighted(&[90, 10]);
        let c0 = (0..10_000)
            .filter(|_| choose_weighted(&clusters, random_u64()).unwrap().name == "c0")
            .count();
        assert!((8_500..9_500).contains(&c0), "{c0}");
    }

    fn cluster(endpoints: &[(&str, bool)]) -> Cluster {
        Cluster {
            name: "outbound|80||a.default.svc.cluster.local".into(),
            host: "a.default.svc.cluster.local".into(),
            port: 80,
            subset: String::new(),
            discovery: Discovery::Service {
                namespace: "default".into(),
                name: "a".into(),
            },
            endpoints: endpoints
                .iter()
                .map(|(addr, serving)| Endpoint {
                    address: addr.parse().unwrap(),
                    serving: *serving,
                    target: None,
                })
                .collect(),
            protocol: UpstreamProtocol::Http1,
            connect_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn round_robin_skips_endpoints_that_are_not_serving() {
        let c = cluster(&[
            ("198.18.1.1:80", true),
            ("198.18.1.2:80", false),
            ("198.18.1.3:80", true),
        ]);
        let state = ClusterState::default();
        let picks: Vec<String> = (0..4)
            .map(|_| state.choose_endpoint(&c).unwrap().address.to_string())
            .collect();
        assert_eq!(
            picks,
            [
                "198.18.1.1:80",
                "198.18.1.3:80",
                "198.18.1.1:80",
                "198.18.1.3:80"
            ]
        );
        assert!(
            state
                .choose_endpoint(&cluster(&[("198.18.1.1:80", false)]))
                .is_none()
        );
        assert!(state.choose_endpoint(&cluster(&[])).is_none());
    }

    #[test]
    fn balancer_state_survives_lookups_by_name() {
        let balancer = Balancer::default();
        let c = cluster(&[("198.18.1.1:80", true), ("198.18.1.2:80", true)]);
        let first = balancer.state(&c.name).choose_endpoint(&c).unwrap().address;
        let second = balancer.state(&c.name).choose_endpoint(&c).unwrap().address;
        assert_ne!(first, second);
        balancer.retain(|_| false);
        assert!(balancer.state_if_used(&c.name).is_none());
    }
}

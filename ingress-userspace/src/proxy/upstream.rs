//! Data path, upstream side: choosing a cluster by weight and an endpoint
//! round-robin, per-endpoint stats and connection pools (`pool.rs`), and the
//! pooled HTTP/2 clients.
//!
//! Balancing state lives here keyed by cluster name rather than in the
//! snapshot, so a config swap does not reset round-robin positions or stats.

use rustc_hash::FxHashMap as HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::Semaphore;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::snapshot::policy::LbPolicy;
use crate::snapshot::{Cluster, Endpoint, WeightedCluster};
use crate::stats::DestinationLabels;

use super::forward::UpstreamBody;
use super::pool::{DEFAULT_IDLE_TIMEOUT, EndpointPool};

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

/// A stable 64-bit identity of an endpoint address (the kernel's
/// `ip << 16 | port` for IPv4).
fn address_identity(address: &SocketAddr) -> u64 {
    match address {
        SocketAddr::V4(a) => u64::from(u32::from(*a.ip())) << 16 | u64::from(a.port()),
        SocketAddr::V6(a) => {
            let ip = u128::from(*a.ip());
            ((ip >> 64) as u64 ^ ip as u64).rotate_left(16) ^ u64::from(a.port())
        }
    }
}

/// A uniform random u64; not cryptographic, only for load balancing.
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded randomly per thread and its keys advance with
    // every `new()`, which is enough spread for a weighted choice.
    std::collections::hash_map::RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Counters of one endpoint of one cluster, shown by `/clusters`, and its
/// outlier-detection state.
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
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// Milliseconds since [`epoch`] until which the endpoint is ejected.
    ejected_until_ms: AtomicU64,
    times_ejected: AtomicU32,
    /// Idle HTTP/1.1 connections to the endpoint.
    pub pool: EndpointPool,
}

impl EndpointStats {
    /// Whether outlier detection has this endpoint out right now.
    pub fn is_ejected(&self) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms()
    }
}

/// How one try at an endpoint ended, for outlier detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TryOutcome {
    Status(u16),
    /// Connect failure, reset or timeout: no answer.
    LocalFailure,
}

/// The clock of ejection deadlines: looked at for every endpoint a request
/// may pick, so the coarse one.
pub(super) fn now_ms() -> u64 {
    super::clock::coarse_ms()
}

/// Envoy's `max_ejection_time` default.
const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
/// Slots of a consistent-hash table (Envoy's Maglev default).
const HASH_TABLE_SIZE: u64 = 65_537;

/// What a request brings to endpoint selection.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pick<'a> {
    /// The consistent-hash key's hash, when the cluster hashes and the
    /// request has the key.
    pub hash: Option<u64>,
    /// Endpoints already tried (retries prefer others).
    pub avoid: &'a [SocketAddr],
}

/// A consistent-hash table and the endpoint addresses it was built for.
type HashTable = (Vec<SocketAddr>, Arc<Vec<u32>>);

/// What decides which pooled HTTP/2 client a cluster uses: connect
/// timeout, idle timeout.
type ClientKey = (Duration, Option<Duration>);

/// Balancing state and stats of one cluster.
#[derive(Debug, Default)]
pub struct ClusterState {
    next: AtomicUsize,
    endpoints: RwLock<HashMap<SocketAddr, Arc<EndpointStats>>>,
    /// The consistent-hash table and the endpoint set it was built for.
    hash_table: Mutex<Option<HashTable>>,
    /// `tcp.maxConnections` as a semaphore (and its size).
    connections: Mutex<Option<(u32, Arc<Semaphore>)>>,
    pub rq_pending: AtomicU64,
    pub retries_active: AtomicU64,
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
    /// `upstream_rq_retry_limit_exceeded`, `upstream_rq_retry_overflow`.
    pub rq_retry: AtomicU64,
    pub rq_retry_success: AtomicU64,
    pub rq_retry_limit_exceeded: AtomicU64,
    pub rq_retry_overflow: AtomicU64,
    /// `upstream_rq_pending_overflow`: requests refused by the circuit breakers.
    pub rq_pending_overflow: AtomicU64,
    /// `outlier_detection.ejections_enforced_total`.
    pub ejections_total: AtomicU64,
    /// The metric labels of the cluster version last seen (kept with it, so
    /// a new snapshot's cluster gets its own).
    labels: Mutex<Option<(Arc<Cluster>, Arc<DestinationLabels>)>>,
}

impl ClusterState {
    /// The `destination_*` metric labels of `cluster`, built once per
    /// cluster version.
    pub fn labels(&self, cluster: &Arc<Cluster>) -> Arc<DestinationLabels> {
        let mut cached = self
            .labels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((seen, labels)) = cached.as_ref()
            && Arc::ptr_eq(seen, cluster)
        {
            return labels.clone();
        }
        let labels = Arc::new(DestinationLabels::of(cluster));
        *cached = Some((cluster.clone(), labels.clone()));
        labels
    }

    /// The next endpoint for a request without a hash key (TCP connections,
    /// mirrors).
    pub fn choose_endpoint<'c>(&self, cluster: &'c Cluster) -> Option<&'c Endpoint> {
        self.choose(cluster, Pick::default())
    }

    /// An endpoint by the cluster's load-balancing policy, among the
    /// serving endpoints that outlier detection has not ejected, preferring
    /// ones not in `pick.avoid`; `None` when none is available.
    pub fn choose<'c>(&self, cluster: &'c Cluster, pick: Pick<'_>) -> Option<&'c Endpoint> {
        // Counted and indexed in place: no list of candidates is built per request.
        let eligible = |e: &&Endpoint| {
            e.serving
                && (cluster.policy.outlier.is_none()
                    || !self
                        .endpoint_if_used(e.address)
                        .is_some_and(|s| s.is_ejected()))
        };
        let fresh = |e: &&Endpoint| eligible(e) && !pick.avoid.contains(&e.address);
        let count = |filter: &dyn Fn(&&Endpoint) -> bool| {
            cluster.endpoints.iter().filter(|e| filter(e)).count()
        };
        let all = count(&eligible);
        if all == 0 {
            return None;
        }
        let unused = if pick.avoid.is_empty() {
            0
        } else {
            count(&fresh)
        };
        let (filter, n): (&dyn Fn(&&Endpoint) -> bool, usize) = if unused > 0 {
            (&fresh, unused)
        } else {
            (&eligible, all)
        };
        let nth = |i: usize| cluster.endpoints.iter().filter(|e| filter(e)).nth(i);
        let index = match (&cluster.policy.lb, pick.hash) {
            (LbPolicy::ConsistentHash(_), Some(hash)) if pick.avoid.is_empty() => {
                let table = self.hash_table(cluster.endpoints.iter().filter(|e| filter(e)), n);
                (table[(hash % HASH_TABLE_SIZE) as usize] as usize).saturating_sub(1)
            }
            (LbPolicy::RoundRobin, _) => self.next.fetch_add(1, Ordering::Relaxed) % n,
            (LbPolicy::Random | LbPolicy::ConsistentHash(_), _) => {
                (random_u64() % n as u64) as usize
            }
            (LbPolicy::LeastRequest, _) => {
                if n == 1 {
                    0
                } else {
                    // Power of two choices: the less loaded of two random picks.
                    let a = (random_u64() % n as u64) as usize;
                    let b = (a + 1 + (random_u64() % (n as u64 - 1)) as usize) % n;
                    let load = |i: usize| {
                        nth(i)
                            .and_then(|e| self.endpoint_if_used(e.address))
                            .map_or(0, |s| s.rq_active.load(Ordering::Relaxed))
                    };
                    if load(b) < load(a) { b } else { a }
                }
            }
        };
        nth(index)
    }

    /// The Maglev table over the `n` `candidates` (cached while they stay
    /// the same; compared in place, so a hit allocates nothing).
    fn hash_table<'c>(
        &self,
        candidates: impl Iterator<Item = &'c Endpoint> + Clone,
        n: usize,
    ) -> Arc<Vec<u32>> {
        let mut cached = self
            .hash_table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((built_for, table)) = cached.as_ref()
            && built_for.len() == n
            && built_for.iter().eq(candidates.clone().map(|e| &e.address))
        {
            return table.clone();
        }
        let addresses: Vec<SocketAddr> = candidates.map(|e| e.address).collect();
        let members: Vec<(u64, u64)> = addresses.iter().map(|a| (address_identity(a), 1)).collect();
        let table = Arc::new(crate::maglev::table(&members, HASH_TABLE_SIZE));
        *cached = Some((addresses, table.clone()));
        table
    }

    /// Counts a try's outcome at `endpoint` and ejects it when outlier
    /// detection says so (never more than `max_ejection_percent` of the
    /// cluster, but always at least one endpoint).
    pub fn record_outcome(&self, cluster: &Cluster, endpoint: &EndpointStats, outcome: TryOutcome) {
        let Some(policy) = &cluster.policy.outlier else {
            return;
        };
        let (is_5xx, is_gateway) = match outcome {
            TryOutcome::Status(s) => ((500..=599).contains(&s), matches!(s, 502..=504)),
            TryOutcome::LocalFailure => (true, true),
        };
        let bump = |counter: &AtomicU32, hit: bool| {
            if hit {
                counter.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                counter.store(0, Ordering::Relaxed);
                0
            }
        };
        let fives = bump(&endpoint.consecutive_5xx, is_5xx);
        let gateways = bump(&endpoint.consecutive_gateway, is_gateway);
        let tripped = (policy.consecutive_5xx > 0 && fives >= policy.consecutive_5xx)
            || (policy.consecutive_gateway_errors > 0
                && gateways >= policy.consecutive_gateway_errors);
        if !tripped || endpoint.is_ejected() {
            return;
        }
        let total = cluster.endpoints.len();
        let ejected = cluster
            .endpoints
            .iter()
            .filter(|e| {
                self.endpoint_if_used(e.address)
                    .is_some_and(|s| s.is_ejected())
            })
            .count();
        let allowed = (total * policy.max_ejection_percent as usize / 100).max(1);
        if ejected >= allowed {
            return;
        }
        let times = endpoint.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
        let period = policy
            .base_ejection_time
            .saturating_mul(times)
            .min(MAX_EJECTION_TIME.max(policy.base_ejection_time));
        endpoint
            .ejected_until_ms
            .store(now_ms() + period.as_millis() as u64, Ordering::Relaxed);
        endpoint.consecutive_5xx.store(0, Ordering::Relaxed);
        endpoint.consecutive_gateway.store(0, Ordering::Relaxed);
        self.ejections_total.fetch_add(1, Ordering::Relaxed);
    }

    /// The `tcp.maxConnections` semaphore for `limit` (replaced when the
    /// limit changes; requests holding the old one finish on it).
    pub fn connection_slots(&self, limit: u32) -> Arc<Semaphore> {
        let mut slot = self
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match slot.as_ref() {
            Some((size, semaphore)) if *size == limit => semaphore.clone(),
            _ => {
                let semaphore = Arc::new(Semaphore::new(limit as usize));
                *slot = Some((limit, semaphore.clone()));
                semaphore
            }
        }
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

/// The HTTP/2 upstream client type: one multiplexed connection per endpoint.
pub type Http2Client = Client<HttpConnector, UpstreamBody>;

/// One pooled HTTP/2 client per (connect timeout, idle timeout): those are
/// properties of the connector and the pool, so clusters that differ in
/// them cannot share. (HTTP/1.1 goes through the per-endpoint pools.)
#[derive(Debug, Default)]
pub struct UpstreamClients {
    clients: RwLock<HashMap<ClientKey, Http2Client>>,
}

impl UpstreamClients {
    /// The HTTP/2 client for `cluster`.
    pub fn http2(&self, cluster: &Cluster) -> Http2Client {
        let idle = cluster.policy.limits.idle_timeout;
        let key = (cluster.connect_timeout, idle);
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
            .pool_idle_timeout(idle.unwrap_or(DEFAULT_IDLE_TIMEOUT))
            .http2_only(true)
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
    use crate::snapshot::{Discovery, UpstreamProtocol};

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
            policy: Default::default(),
        }
    }

    #[test]
    fn round_robin_skips_endpoints_that_are_not_serving() {
        let mut c = cluster(&[
            ("198.18.1.1:80", true),
            ("198.18.1.2:80", false),
            ("198.18.1.3:80", true),
        ]);
        c.policy.lb = LbPolicy::RoundRobin;
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
    fn least_request_prefers_the_less_loaded_endpoint() {
        let c = cluster(&[("198.18.1.1:80", true), ("198.18.1.2:80", true)]);
        let state = ClusterState::default();
        let busy: SocketAddr = "198.18.1.1:80".parse().unwrap();
        state.endpoint(busy).rq_active.store(5, Ordering::Relaxed);
        for _ in 0..50 {
            assert_ne!(state.choose_endpoint(&c).unwrap().address, busy);
        }
    }

    #[test]
    fn consistent_hash_is_stable_and_spreads() {
        let mut c = cluster(&[
            ("198.18.1.1:80", true),
            ("198.18.1.2:80", true),
            ("198.18.1.3:80", true),
        ]);
        c.policy.lb = LbPolicy::ConsistentHash(crate::snapshot::policy::HashKey::SourceIp);
        let state = ClusterState::default();
        let pick_in = |c: &Cluster, hash: u64| {
            state
                .choose(
                    c,
                    Pick {
                        hash: Some(hash),
                        avoid: &[],
                    },
                )
                .unwrap()
                .address
        };
        let pick = |hash: u64| pick_in(&c, hash);
        let mut seen = std::collections::BTreeSet::new();
        for key in 0..300u64 {
            let hash = crate::maglev::mix(key, 7);
            let first = pick(hash);
            assert_eq!(pick(hash), first, "same key, same endpoint");
            seen.insert(first);
        }
        assert_eq!(seen.len(), 3, "keys spread over every endpoint");
        // Removing one endpoint moves only the keys that were on it.
        let moved_before: Vec<SocketAddr> = (0..300u64)
            .map(|k| pick(crate::maglev::mix(k, 7)))
            .collect();
        let mut c2 = cluster(&[
            ("198.18.1.1:80", true),
            ("198.18.1.2:80", true),
            ("198.18.1.3:80", false),
        ]);
        c2.policy.lb = c.policy.lb.clone();
        let gone: SocketAddr = "198.18.1.3:80".parse().unwrap();
        for (k, before) in moved_before.iter().enumerate() {
            let now = pick_in(&c2, crate::maglev::mix(k as u64, 7));
            if *before != gone {
                assert_eq!(now, *before, "key {k} stayed");
            }
        }
    }

    #[test]
    fn outlier_detection_ejects_and_returns() {
        let mut c = cluster(&[("198.18.1.1:80", true), ("198.18.1.2:80", true)]);
        c.policy.outlier = Some(crate::snapshot::policy::OutlierPolicy {
            consecutive_5xx: 2,
            base_ejection_time: Duration::from_millis(200),
            ..Default::default()
        });
        let state = ClusterState::default();
        let bad: SocketAddr = "198.18.1.1:80".parse().unwrap();
        let other: SocketAddr = "198.18.1.2:80".parse().unwrap();
        let stats = state.endpoint(bad);
        state.record_outcome(&c, &stats, TryOutcome::Status(503));
        assert!(!stats.is_ejected(), "one failure is not enough");
        state.record_outcome(&c, &stats, TryOutcome::Status(200));
        state.record_outcome(&c, &stats, TryOutcome::Status(503));
        assert!(!stats.is_ejected(), "a success resets the count");
        state.record_outcome(&c, &stats, TryOutcome::LocalFailure);
        assert!(stats.is_ejected());
        for _ in 0..20 {
            assert_eq!(state.choose_endpoint(&c).unwrap().address, other);
        }
        // At most 10% (but at least one) may be out: the other stays in.
        let other_stats = state.endpoint(other);
        for _ in 0..4 {
            state.record_outcome(&c, &other_stats, TryOutcome::Status(500));
        }
        assert!(!other_stats.is_ejected());
        std::thread::sleep(Duration::from_millis(250));
        assert!(!stats.is_ejected(), "back after the ejection time");
        assert_eq!(state.ejections_total.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn balancer_state_survives_lookups_by_name() {
        let balancer = Balancer::default();
        let mut c = cluster(&[("198.18.1.1:80", true), ("198.18.1.2:80", true)]);
        c.policy.lb = LbPolicy::RoundRobin;
        let first = balancer.state(&c.name).choose_endpoint(&c).unwrap().address;
        let second = balancer.state(&c.name).choose_endpoint(&c).unwrap().address;
        assert_ne!(first, second);
        balancer.retain(|_| false);
        assert!(balancer.state_if_used(&c.name).is_none());
    }
}

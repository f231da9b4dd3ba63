//! Model stage: host names as Istio understands them.
//!
//! A host is a DNS name, optionally wildcarded in its left-most label only
//! (`*.example.com`), or `*`. Two hosts *match* when one covers the other;
//! one is a *subset* of another when it is at least as specific. These are
//! the rules of Istio's `pkg/config/host.Name`, and binding a VirtualService
//! to a Gateway server keeps the more specific side of the intersection.

use std::fmt;

/// A validated, lower-case host name: `*`, `*.suffix` or an exact name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Host(String);

/// Why a host name is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Empty string.
    #[error("host must not be empty")]
    Empty,
    /// `*` anywhere but as the whole left-most label.
    #[error("wildcard '*' is only allowed as the whole left-most label (e.g. *.example.com)")]
    Wildcard,
    /// A label that is not a DNS label.
    #[error(
        "invalid DNS label {0:?}: labels are 1-63 letters, digits or '-', not starting or ending with '-'"
    )]
    Label(String),
    /// Longer than 255 characters.
    #[error("host longer than 255 characters")]
    TooLong,
}

impl Host {
    /// Parses and validates a host, lower-casing it.
    pub fn parse(s: &str) -> Result<Self, HostError> {
        if s.is_empty() {
            return Err(HostError::Empty);
        }
        if s.len() > 255 {
            return Err(HostError::TooLong);
        }
        let lower = s.to_ascii_lowercase();
        if lower == "*" {
            return Ok(Host(lower));
        }
        let (labels, wildcard) = match lower.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (lower.as_str(), false),
        };
        let _ = wildcard;
        for label in labels.split('.') {
            if label.contains('*') {
                return Err(HostError::Wildcard);
            }
            let valid = !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !valid {
                return Err(HostError::Label(label.to_owned()));
            }
        }
        Ok(Host(lower))
    }

    /// A host known to be valid (from a previous parse); used for names the
    /// compiler builds itself such as `svc.ns.svc.cluster.local`.
    pub fn from_trusted(s: impl Into<String>) -> Self {
        Host(s.into().to_ascii_lowercase())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with('*')
    }

    /// The part after the `*` of a wildcard (`.example.com`, or empty for `*`).
    fn wildcard_suffix(&self) -> &str {
        &self.0[1..]
    }

    /// Whether the two names overlap: equal, or one wildcard covers the other.
    pub fn matches(&self, other: &Host) -> bool {
        match (self.is_wildcard(), other.is_wildcard()) {
            (true, true) => {
                let (short, long) = if self.0.len() < other.0.len() {
                    (self, other)
                } else {
                    (other, self)
                };
                long.wildcard_suffix().ends_with(short.wildcard_suffix())
            }
            (true, false) => other.0.ends_with(self.wildcard_suffix()),
            (false, true) => self.0.ends_with(other.wildcard_suffix()),
            (false, false) => self.0 == other.0,
        }
    }

    /// Whether every name `self` covers is covered by `other` (`self` is at
    /// least as specific).
    pub fn subset_of(&self, other: &Host) -> bool {
        match (self.is_wildcard(), other.is_wildcard()) {
            (true, true) => {
                self.0.len() >= other.0.len()
                    && self.wildcard_suffix().ends_with(other.wildcard_suffix())
            }
            (true, false) => false,
            (false, true) => self.0.ends_with(other.wildcard_suffix()),
            (false, false) => self.0 == other.0,
        }
    }

    /// The intersection Istio uses for a virtual host: the more specific of
    /// the two names, or `None` when they do not overlap.
    pub fn intersect(server: &Host, virtual_service: &Host) -> Option<Host> {
        if !server.matches(virtual_service) {
            return None;
        }
        if virtual_service.subset_of(server) {
            Some(virtual_service.clone())
        } else {
            Some(server.clone())
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Resolves a short name to a Kubernetes FQDN in `namespace`, as Istio's
/// `ResolveShortnameToFQDN`: names without a dot get
/// `.<namespace>.svc.<domain>`; `*`, IP addresses and names with dots are kept.
pub fn resolve_short_name(name: &str, namespace: &str, domain: &str) -> String {
    if name == "*" || name.contains('.') || name.parse::<std::net::IpAddr>().is_ok() {
        return name.to_ascii_lowercase();
    }
    format!("{name}.{namespace}.svc.{domain}").to_ascii_lowercase()
}

/// Resolves a VirtualService `gateways[]` entry to `namespace/name` (or
/// `mesh`), as Istio's `resolveGatewayName`: `name` and `./name` are in the
/// VirtualService's namespace; legacy `name.ns[.svc.cluster.local]` means
/// `ns/name`.
pub fn resolve_gateway_name(gateway: &str, namespace: &str) -> String {
    if gateway == "mesh" {
        return gateway.to_owned();
    }
    match gateway.split_once('/') {
        Some((".", name)) => format!("{namespace}/{name}"),
        Some(_) => gateway.to_owned(),
        None => match gateway.split_once('.') {
            None => format!("{namespace}/{gateway}"),
            Some((name, rest)) => {
                let ns = rest.split_once('.').map_or(rest, |(ns, _)| ns);
                format!("{ns}/{name}")
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Host {
        Host::parse(s).unwrap()
    }

    #[test]
    fn parse_accepts_and_rejects() {
        for ok in [
            "*",
            "*.example.com",
            "example.com",
            "a-b.c",
            "COUNTER.lab.example.com",
            "localhost",
        ] {
            assert!(Host::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(h("Foo.COM").as_str(), "foo.com");
        let bad = [
            ("", HostError::Empty),
            ("foo.*.bar.com", HostError::Wildcard),
            ("*foo.com", HostError::Wildcard),
            ("foo.*", HostError::Wildcard),
            ("**.com", HostError::Wildcard),
            ("-a.com", HostError::Label("-a".into())),
            ("a..com", HostError::Label(String::new())),
            ("a_b.com", HostError::Label("a_b".into())),
        ];
        for (input, want) in bad {
            assert_eq!(Host::parse(input), Err(want), "{input:?}");
        }
    }

    /// The examples of Istio's `host.Name.Matches` documentation.
    #[test]
    fn matches_table() {
        let cases = [
            ("foo.com", "foo.com", true),
            ("foo.com", "bar.com", false),
            ("*.com", "foo.com", true),
            ("bar.com", "*.com", true),
            ("*.foo.com", "foo.com", false),
            ("*", "foo.com", true),
            ("*", "*.com", true),
            ("*.foo.com", "*.bar.foo.com", true),
            ("*.bar.foo.com", "*.foo.com", true),
            ("*.foo.com", "*.bar.com", false),
            ("a.b.foo.com", "*.foo.com", true),
        ];
        for (a, b, want) in cases {
            assert_eq!(h(a).matches(&h(b)), want, "{a} matches {b}");
            assert_eq!(h(b).matches(&h(a)), want, "matches is symmetric: {b} {a}");
        }
    }

    /// The examples of Istio's `host.Name.SubsetOf` documentation.
    #[test]
    fn subset_of_table() {
        let cases = [
            ("foo.com", "foo.com", true),
            ("foo.com", "bar.com", false),
            ("*.com", "foo.com", false),
            ("bar.com", "*.com", true),
            ("*.foo.com", "foo.com", false),
            ("*", "foo.com", false),
            ("foo.com", "*", true),
            ("*.bar.foo.com", "*.foo.com", true),
            ("*.foo.com", "*.bar.foo.com", false),
            ("*", "*", true),
        ];
        for (a, b, want) in cases {
            assert_eq!(h(a).subset_of(&h(b)), want, "{a} subset of {b}");
        }
    }

    #[test]
    fn intersection_keeps_the_more_specific_side() {
        let cases = [
            ("*.example.com", "dev.example.com", Some("dev.example.com")),
            ("dev.example.com", "*.example.com", Some("dev.example.com")),
            ("*.example.com", "example.com", None),
            (
                "*",
                "counter.lab.example.com",
                Some("counter.lab.example.com"),
            ),
            (
                "counter.lab.example.com",
                "*",
                Some("counter.lab.example.com"),
            ),
            ("*", "*", Some("*")),
            ("*.a.com", "*.b.a.com", Some("*.b.a.com")),
            ("*.b.a.com", "*.a.com", Some("*.b.a.com")),
            ("a.com", "b.com", None),
        ];
        for (server, vs, want) in cases {
            assert_eq!(
                Host::intersect(&h(server), &h(vs))
                    .as_ref()
                    .map(Host::as_str),
                want,
                "server {server} ∩ vs {vs}"
            );
        }
    }

    #[test]
    fn short_names_resolve_in_the_namespace() {
        assert_eq!(
            resolve_short_name("counter", "default", "cluster.local"),
            "counter.default.svc.cluster.local"
        );
        assert_eq!(
            resolve_short_name("counter.lab.example.com", "default", "cluster.local"),
            "counter.lab.example.com"
        );
        assert_eq!(resolve_short_name("*", "default", "cluster.local"), "*");
        assert_eq!(
            resolve_short_name("10.0.0.1", "default", "cluster.local"),
            "10.0.0.1"
        );
    }

    #[test]
    fn gateway_names_resolve_like_istio() {
        let cases = [
            ("default-gateway", "default", "default/default-gateway"),
            ("./default-gateway", "apps", "apps/default-gateway"),
            (
                "istio-system/default-gateway",
                "default",
                "istio-system/default-gateway",
            ),
            (
                "default-gateway.istio-system.svc.cluster.local",
                "default",
                "istio-system/default-gateway",
            ),
            (
                "default-gateway.istio-system",
                "default",
                "istio-system/default-gateway",
            ),
            ("mesh", "default", "mesh"),
        ];
        for (input, ns, want) in cases {
            assert_eq!(resolve_gateway_name(input, ns), want, "{input} in {ns}");
        }
    }
}

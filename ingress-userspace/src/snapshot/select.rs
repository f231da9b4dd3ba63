//! Compiled stage: choosing a virtual host and a route for a request, the way
//! Envoy does for the route configurations Istio generates.
//!
//! The proxy and `ingressd explain` both call these functions, so `explain`
//! can never disagree with the data path.

use std::collections::HashMap;

use http::HeaderMap;

use super::{PathMatch, Route, RouteConfig, RouteMatch, StringMatcher, VirtualHost};

/// What route selection looks at in a request.
#[derive(Clone, Copy, Debug)]
pub struct RequestAttributes<'a> {
    pub method: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// `:authority` / `Host`, possibly with a port.
    pub authority: &'a str,
    /// Path and query, as in the request line.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

impl RequestAttributes<'_> {
    fn path_without_query(&self) -> &str {
        self.path
            .split_once('?')
            .map_or(self.path, |(path, _)| path)
    }

    fn query(&self) -> &str {
        self.path.split_once('?').map_or("", |(_, query)| query)
    }

    /// A header value for matching; pseudo-headers come from the request
    /// line. Several values of one header are joined with `,` as Envoy does.
    fn header(&self, name: &str) -> Option<String> {
        match name {
            ":method" => return Some(self.method.to_owned()),
            ":authority" | "host" => return Some(self.authority.to_owned()),
            ":scheme" => return Some(self.scheme.to_owned()),
            ":path" => return Some(self.path.to_owned()),
            _ => {}
        }
        let mut values = self
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok());
        let first = values.next()?;
        let mut joined = first.to_owned();
        for value in values {
            joined.push(',');
            joined.push_str(value);
        }
        Some(joined)
    }
}

/// Domain lookup for one route configuration: exact names, then suffix
/// wildcards longest first, then `*` (Envoy's order).
#[derive(Debug, Default)]
pub struct VirtualHostIndex {
    exact: HashMap<String, usize>,
    /// (`.example.com` for `*.example.com`, vhost index), longest suffix first.
    suffixes: Vec<(String, usize)>,
    any: Option<usize>,
}

impl VirtualHostIndex {
    /// Indexes the domains of `virtual_hosts`. Ports in domains (`host:*`)
    /// are ignored: matching ignores the port of the request's authority.
    /// When two virtual hosts claim one domain, the first keeps it.
    pub fn build(virtual_hosts: &[VirtualHost]) -> Self {
        let mut index = VirtualHostIndex::default();
        for (i, vhost) in virtual_hosts.iter().enumerate() {
            for domain in &vhost.domains {
                let domain = domain
                    .strip_suffix(":*")
                    .unwrap_or(domain)
                    .to_ascii_lowercase();
                if domain == "*" {
                    index.any.get_or_insert(i);
                } else if let Some(suffix) = domain.strip_prefix('*') {
                    if !index.suffixes.iter().any(|(s, _)| s == suffix) {
                        index.suffixes.push((suffix.to_owned(), i));
                    }
                } else {
                    index.exact.entry(domain).or_insert(i);
                }
            }
        }
        index
            .suffixes
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        index
    }

    /// The index of the virtual host for `authority`.
    pub fn find(&self, authority: &str) -> Option<usize> {
        let host = host_without_port(authority).to_ascii_lowercase();
        if let Some(&i) = self.exact.get(&host) {
            return Some(i);
        }
        // A wildcard must stand for at least one character: `*.a.com` does
        // not match `.a.com`, nor `a.com`.
        self.suffixes
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map(|&(_, i)| i)
            .or(self.any)
    }
}

/// `authority` without a trailing `:port` (IPv6 literals keep their brackets).
pub fn host_without_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

impl RouteConfig {
    /// The virtual host that serves `authority`, if any. There is no
    /// fall-through: once chosen, a virtual host without a matching route
    /// answers 404.
    pub fn select_virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        self.index.find(authority).map(|i| &self.virtual_hosts[i])
    }
}

impl VirtualHost {
    /// The first route whose match holds for `request`.
    pub fn select_route(&self, request: &RequestAttributes<'_>) -> Option<&Route> {
        self.routes
            .iter()
            .find(|route| route.matcher.matches(request))
    }
}

impl RouteMatch {
    /// Whether every condition of this match holds for `request`.
    pub fn matches(&self, request: &RequestAttributes<'_>) -> bool {
        self.path_matches(request)
            && self.headers.iter().all(|h| {
                let holds = request.header(&h.name).is_some_and(|v| h.kind.matches(&v));
                holds != h.invert
            })
            && self
                .query_params
                .iter()
                .all(|q| query_param(request.query(), &q.name).is_some_and(|v| q.kind.matches(v)))
    }

    fn path_matches(&self, request: &RequestAttributes<'_>) -> bool {
        match &self.path {
            PathMatch::Prefix(prefix) => {
                let path = request.path;
                if self.ignore_case {
                    path.len() >= prefix.len()
                        && path.is_char_boundary(prefix.len())
                        && path[..prefix.len()].eq_ignore_ascii_case(prefix)
                } else {
                    path.starts_with(prefix.as_str())
                }
            }
            PathMatch::Exact(exact) => {
                let path = request.path_without_query();
                if self.ignore_case {
                    path.eq_ignore_ascii_case(exact)
                } else {
                    path == exact
                }
            }
            PathMatch::Regex(pattern) => pattern.is_match(request.path_without_query()),
        }
    }
}

/// The raw value of the first `name` parameter in `query` (`a=1&b`; a
/// parameter without `=` has the empty value).
fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

impl StringMatcher {
    /// Short description for `explain` and the admin API.
    pub fn describe(&self) -> String {
        match self {
            StringMatcher::Exact(s) => format!("exact:{s}"),
            StringMatcher::Prefix(s) => format!("prefix:{s}"),
            StringMatcher::Regex(p) => format!("regex:{}", p.source),
            StringMatcher::Present => "present".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{HeaderMatcher, Pattern, RouteAction};

    fn vhost(name: &str, domains: &[&str]) -> VirtualHost {
        VirtualHost {
            name: name.to_owned(),
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            routes: Vec::new(),
            require_tls: false,
        }
    }

    fn request<'a>(
        authority: &'a str,
        path: &'a str,
        headers: &'a HeaderMap,
    ) -> RequestAttributes<'a> {
        RequestAttributes {
            method: "GET",
            scheme: "http",
            authority,
            path,
            headers,
        }
    }

    #[test]
    fn domain_precedence_exact_then_longest_suffix_then_any() {
        let vhosts = vec![
            vhost("*:80", &["*"]),
            vhost("*.example.com:80", &["*.example.com", "*.example.com:*"]),
            vhost(
                "*.dev.example.com:80",
                &["*.dev.example.com", "*.dev.example.com:*"],
            ),
            vhost(
                "api.dev.example.com:80",
                &["api.dev.example.com", "api.dev.example.com:*"],
            ),
        ];
        let index = VirtualHostIndex::build(&vhosts);
        let cases = [
            ("api.dev.example.com", Some(3)),
            ("API.Dev.Example.com:8080", Some(3)),
            ("web.dev.example.com", Some(2)),
            ("a.b.dev.example.com", Some(2)),
            ("dev.example.com", Some(1)),
            ("example.com", Some(0)),
            (".example.com", Some(0)),
            ("other.org", Some(0)),
        ];
        for (authority, want) in cases {
            assert_eq!(index.find(authority), want, "authority {authority}");
        }
    }

    #[test]
    fn no_star_means_no_virtual_host() {
        let index = VirtualHostIndex::build(&[vhost("a.com:80", &["a.com", "a.com:*"])]);
        assert_eq!(index.find("a.com:1234"), Some(0));
        assert_eq!(index.find("b.com"), None);
    }

    #[test]
    fn port_is_stripped_from_authority() {
        assert_eq!(host_without_port("a.com:80"), "a.com");
        assert_eq!(host_without_port("a.com"), "a.com");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
    }

    #[test]
    fn path_matching() {
        let headers = HeaderMap::new();
        let m = |path: PathMatch, ignore_case: bool| RouteMatch {
            path,
            ignore_case,
            ..RouteMatch::default()
        };
        let cases: Vec<(RouteMatch, &str, bool)> = vec![
            (m(PathMatch::Prefix("/api".into()), false), "/apiv2", true),
            (m(PathMatch::Prefix("/api".into()), false), "/API", false),
            (m(PathMatch::Prefix("/api".into()), true), "/API/x", true),
            (m(PathMatch::Exact("/a".into()), false), "/a?x=1", true),
            (m(PathMatch::Exact("/a".into()), false), "/a/", false),
            (m(PathMatch::Exact("/a".into()), true), "/A", true),
            (
                m(
                    PathMatch::Regex(Pattern::full_match("/v[0-9]+/.*").unwrap()),
                    false,
                ),
                "/v1/x",
                true,
            ),
            (
                m(
                    PathMatch::Regex(Pattern::full_match("/v[0-9]+").unwrap()),
                    false,
                ),
                "/v1/x",
                false,
            ),
            (
                m(
                    PathMatch::Regex(Pattern::full_match("/v[0-9]+").unwrap()),
                    false,
                ),
                "/v12?q",
                true,
            ),
        ];
        for (i, (matcher, path, want)) in cases.iter().enumerate() {
            assert_eq!(
                matcher.matches(&request("h", path, &headers)),
                *want,
                "case {i}: {path}"
            );
        }
    }

    #[test]
    fn header_and_query_matching() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user", "alice".parse().unwrap());
        headers.append("x-multi", "a".parse().unwrap());
        headers.append("x-multi", "b".parse().unwrap());
        let header = |name: &str, kind: StringMatcher, invert: bool| HeaderMatcher {
            name: name.to_owned(),
            kind,
            invert,
        };
        let with = |h: Vec<HeaderMatcher>| RouteMatch {
            headers: h,
            ..RouteMatch::default()
        };
        let cases: Vec<(RouteMatch, bool)> = vec![
            (
                with(vec![header(
                    "x-user",
                    StringMatcher::Exact("alice".into()),
                    false,
                )]),
                true,
            ),
            (
                with(vec![header(
                    "x-user",
                    StringMatcher::Exact("bob".into()),
                    false,
                )]),
                false,
            ),
            (
                with(vec![header(
                    "x-user",
                    StringMatcher::Prefix("al".into()),
                    false,
                )]),
                true,
            ),
            (
                with(vec![header("x-user", StringMatcher::Present, false)]),
                true,
            ),
            (
                with(vec![header("x-none", StringMatcher::Present, false)]),
                false,
            ),
            (
                with(vec![header("x-none", StringMatcher::Present, true)]),
                true,
            ),
            (
                with(vec![header(
                    "x-multi",
                    StringMatcher::Exact("a,b".into()),
                    false,
                )]),
                true,
            ),
            (
                with(vec![header(
                    ":method",
                    StringMatcher::Exact("GET".into()),
                    false,
                )]),
                true,
            ),
            (
                with(vec![header(
                    ":authority",
                    StringMatcher::Regex(Pattern::full_match("h(:[0-9]+)?").unwrap()),
                    false,
                )]),
                true,
            ),
        ];
        for (i, (matcher, want)) in cases.iter().enumerate() {
            assert_eq!(
                matcher.matches(&request("h", "/", &headers)),
                *want,
                "case {i}"
            );
        }
        assert_eq!(query_param("a=1&b=2&c", "b"), Some("2"));
        assert_eq!(query_param("a=1&b=2&c", "c"), Some(""));
        assert_eq!(query_param("a=1", "z"), None);
    }

    #[test]
    fn first_matching_route_wins() {
        let headers = HeaderMap::new();
        let route = |name: &str, path: PathMatch| Route {
            name: name.to_owned(),
            matcher: RouteMatch {
                path,
                ..RouteMatch::default()
            },
            action: RouteAction::DirectResponse {
                status: 200,
                body: bytes::Bytes::new(),
            },
            policy: Default::default(),
            origin: None,
        };
        let mut v = vhost("a", &["*"]);
        v.routes = vec![
            route("exact", PathMatch::Exact("/a".into())),
            route("prefix", PathMatch::Prefix("/".into())),
            route("never", PathMatch::Exact("/b".into())),
        ];
        assert_eq!(
            v.select_route(&request("h", "/a", &headers)).unwrap().name,
            "exact"
        );
        assert_eq!(
            v.select_route(&request("h", "/b", &headers)).unwrap().name,
            "prefix"
        );
    }
}

//! Reading the daemon's access log (its stdout) as tests see it: Envoy's default text
//! line as Istio configures it (plus three TLS fields at the end), or one JSON object
//! per line with `--access-log-format json`.

use anyhow::{Context, Result, bail};

/// The fields of one access-log line that tests assert on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessEntry {
    /// `%REQ(:METHOD)%`.
    pub method: String,
    /// `%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%`: the path as the client sent it.
    pub path: String,
    /// `%PROTOCOL%` (`HTTP/1.1`, `HTTP/2`).
    pub protocol: String,
    /// `%RESPONSE_CODE%`.
    pub status: u16,
    /// `%RESPONSE_FLAGS%` (`-` when none).
    pub flags: String,
    /// `%RESPONSE_CODE_DETAILS%`.
    pub details: String,
    /// `%REQ(:AUTHORITY)%`.
    pub authority: String,
    /// `%UPSTREAM_HOST%`.
    pub upstream_host: String,
    /// `%UPSTREAM_CLUSTER_RAW%`.
    pub upstream_cluster: String,
    /// `%ROUTE_NAME%`.
    pub route_name: String,
    /// `%BYTES_RECEIVED%`, `%BYTES_SENT%` (body bytes; for an upgrade, what the
    /// tunnel carried each way).
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// `%DURATION%`, milliseconds.
    pub duration_ms: u64,
}

/// Splits a text line into fields: `[...]` and `"..."` are one field each (quotes
/// removed), everything else is separated by single spaces.
fn fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        let (field, tail) = match rest.as_bytes()[0] {
            b'[' => match rest.find(']') {
                Some(end) => (&rest[1..end], &rest[end + 1..]),
                None => (rest, ""),
            },
            b'"' => match rest[1..].find('"') {
                Some(end) => (&rest[1..=end], &rest[end + 2..]),
                None => (rest, ""),
            },
            _ => match rest.find(' ') {
                Some(end) => (&rest[..end], &rest[end..]),
                None => (rest, ""),
            },
        };
        out.push(field.to_owned());
        rest = tail.trim_start();
    }
    out
}

/// Parses one line of the text format (see `ingress-userspace/src/proxy/access_log.rs`).
pub fn parse_text(line: &str) -> Result<AccessEntry> {
    let f = fields(line);
    // start, request, code, flags, details, termination, failure, rx, tx, duration,
    // service time, xff, user agent, request id, authority, upstream host, cluster,
    // upstream local, downstream local, downstream remote, sni, route, + 3 TLS fields.
    if f.len() != 25 {
        bail!("{} fields, expected 25: {line}", f.len());
    }
    let mut request = f[1].split(' ');
    let method = request.next().unwrap_or_default().to_owned();
    let path = request.next().unwrap_or_default().to_owned();
    let protocol = request.next().unwrap_or_default().to_owned();
    Ok(AccessEntry {
        method,
        path,
        protocol,
        status: f[2]
            .parse()
            .with_context(|| format!("status {:?} in {line}", f[2]))?,
        flags: f[3].clone(),
        details: f[4].clone(),
        authority: f[14].clone(),
        upstream_host: f[15].clone(),
        upstream_cluster: f[16].clone(),
        route_name: f[21].clone(),
        bytes_received: f[7].parse().unwrap_or_default(),
        bytes_sent: f[8].parse().unwrap_or_default(),
        duration_ms: f[9].parse().unwrap_or_default(),
    })
}

/// Parses one line of the JSON format.
pub fn parse_json(line: &str) -> Result<AccessEntry> {
    let v: serde_json::Value =
        serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
    let text = |key: &str| match &v[key] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    Ok(AccessEntry {
        method: text("method"),
        path: text("path"),
        protocol: text("protocol"),
        status: v["response_code"]
            .as_u64()
            .and_then(|c| u16::try_from(c).ok())
            .with_context(|| format!("no response_code in {line}"))?,
        flags: text("response_flags"),
        details: text("response_code_details"),
        authority: text("authority"),
        upstream_host: text("upstream_host"),
        upstream_cluster: text("upstream_cluster"),
        route_name: text("route_name"),
        bytes_received: v["bytes_received"].as_u64().unwrap_or_default(),
        bytes_sent: v["bytes_sent"].as_u64().unwrap_or_default(),
        duration_ms: v["duration"].as_u64().unwrap_or_default(),
    })
}

/// Every parseable line of `stdout` (text or JSON, detected per line).
pub fn parse_all(stdout: &str) -> Vec<AccessEntry> {
    stdout
        .lines()
        .filter_map(|line| {
            if line.starts_with('{') {
                parse_json(line).ok()
            } else {
                parse_text(line).ok()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_text_line() {
        let line = r#"[2026-11-27T13:00:00.000Z] "GET /retry?x=1 HTTP/1.1" 503 URX via_upstream - "-" 0 120 30 12 "198.18.0.2" "curl/8.0" "a-b" "retry.lab.example.com" "198.18.1.10:8080" outbound|80||counter.default.svc.cluster.local 198.18.1.1:40000 198.18.0.1:8080 198.18.0.2:5000 - retry-route - - "-""#;
        let e = parse_text(line).unwrap();
        assert_eq!(e.method, "GET");
        assert_eq!(e.path, "/retry?x=1");
        assert_eq!(e.protocol, "HTTP/1.1");
        assert_eq!(e.status, 503);
        assert_eq!(e.flags, "URX");
        assert_eq!(e.authority, "retry.lab.example.com");
        assert_eq!(e.upstream_host, "198.18.1.10:8080");
        assert_eq!(
            e.upstream_cluster,
            "outbound|80||counter.default.svc.cluster.local"
        );
        assert_eq!(e.route_name, "retry-route");
    }

    #[test]
    fn parses_a_json_line() {
        let line = r#"{"method":"GET","path":"/x","response_code":504,"response_flags":"UT","authority":"a","upstream_host":null,"upstream_cluster":"c","route_name":"r","response_code_details":"response_timeout"}"#;
        let e = parse_json(line).unwrap();
        assert_eq!(e.status, 504);
        assert_eq!(e.flags, "UT");
        assert_eq!(e.upstream_host, "-");
        assert_eq!(parse_all(line), vec![e]);
    }
}

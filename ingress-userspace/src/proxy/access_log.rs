//! Data path, observability: one access-log line per HTTP request or TCP
//! connection, in the text format Istio configures for Envoy (or JSON).
//!
//! ```text
//! [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE%
//! %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS%
//! "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
//! %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
//! "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW%
//! %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS%
//! %REQUESTED_SERVER_NAME% %ROUTE_NAME%
//! %DOWNSTREAM_TLS_VERSION% %DOWNSTREAM_TLS_CIPHER% "%DOWNSTREAM_PEER_SUBJECT%"
//! ```
//!
//! The last three fields are appended to Istio's default line (everything
//! before them is at the same position), so the TLS session of a request is
//! in the log without a custom format.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// How access-log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// Envoy's default text format, as Istio configures it.
    #[default]
    Text,
    /// One JSON object per line with the same fields.
    Json,
    /// No access log.
    Off,
}

/// Writes records to stdout.
#[derive(Clone, Copy, Debug, Default)]
pub struct AccessLog {
    pub format: AccessLogFormat,
}

impl AccessLog {
    /// Whether lines are written at all (request fields are only copied
    /// into the record when they are).
    pub fn enabled(&self) -> bool {
        self.format != AccessLogFormat::Off
    }

    /// Writes one line for `record`. Write errors (a closed stdout) are ignored:
    /// the access log must never take the data path down.
    pub fn write(&self, record: &AccessRecord) {
        let line = match self.format {
            AccessLogFormat::Text => record.to_text(),
            AccessLogFormat::Json => record.to_json(),
            AccessLogFormat::Off => return,
        };
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(line.as_bytes());
        let _ = stdout.write_all(b"\n");
    }
}

/// Everything one access-log line says. `None` prints as `-`.
#[derive(Clone, Debug)]
pub struct AccessRecord {
    pub start: SystemTime,
    /// `None` for TCP connections.
    pub method: Option<http::Method>,
    /// The original path (before any rewrite), with query.
    pub path: Option<String>,
    /// `HTTP/1.1`, `HTTP/2`; `None` for TCP.
    pub protocol: Option<&'static str>,
    /// 0 for TCP connections.
    pub status: u16,
    /// `-` when none.
    pub flags: &'static str,
    pub details: Option<&'static str>,
    pub termination_details: Option<&'static str>,
    pub upstream_failure: Option<String>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration_ms: u64,
    pub upstream_service_time_ms: Option<u64>,
    pub forwarded_for: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub authority: Option<String>,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: Option<String>,
    pub upstream_local: Option<SocketAddr>,
    pub downstream_local: SocketAddr,
    pub downstream_remote: SocketAddr,
    pub server_name: Option<String>,
    pub route_name: Option<String>,
    /// `%DOWNSTREAM_TLS_VERSION%`, `%DOWNSTREAM_TLS_CIPHER%`,
    /// `%DOWNSTREAM_PEER_SUBJECT%`.
    pub tls_version: Option<&'static str>,
    pub tls_cipher: Option<&'static str>,
    pub peer_subject: Option<String>,
}

impl AccessRecord {
    /// A record with only the connection filled in.
    pub fn new(
        start: SystemTime,
        downstream_local: SocketAddr,
        downstream_remote: SocketAddr,
    ) -> Self {
        Self {
            start,
            method: None,
            path: None,
            protocol: None,
            status: 0,
            flags: "-",
            details: None,
            termination_details: None,
            upstream_failure: None,
            bytes_received: 0,
            bytes_sent: 0,
            duration_ms: 0,
            upstream_service_time_ms: None,
            forwarded_for: None,
            user_agent: None,
            request_id: None,
            authority: None,
            upstream_host: None,
            upstream_cluster: None,
            upstream_local: None,
            downstream_local,
            downstream_remote,
            server_name: None,
            route_name: None,
            tls_version: None,
            tls_cipher: None,
            peer_subject: None,
        }
    }

    /// Fills the TLS fields from the connection's session.
    pub fn set_tls(&mut self, tls: &super::TlsConnInfo) {
        self.server_name = tls.sni.clone();
        self.tls_version = tls.version;
        self.tls_cipher = tls.cipher;
        self.peer_subject = tls.peer_subject.clone();
    }

    /// Envoy's default text line (without the newline).
    pub fn to_text(&self) -> String {
        fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
            match v {
                Some(v) => v.to_string(),
                None => "-".to_owned(),
            }
        }
        let mut out = String::with_capacity(256);
        let _ = write!(
            out,
            "[{}] \"{} {} {}\" {} {} {} {} \"{}\" {} {} {} {} \"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {} {} {} {} {} {} {} {} \"{}\"",
            format_start_time(self.start),
            opt(&self.method),
            opt(&self.path),
            self.protocol.unwrap_or("-"),
            self.status,
            self.flags,
            opt(&self.details),
            opt(&self.termination_details),
            opt(&self.upstream_failure),
            self.bytes_received,
            self.bytes_sent,
            self.duration_ms,
            opt(&self.upstream_service_time_ms),
            opt(&self.forwarded_for),
            opt(&self.user_agent),
            opt(&self.request_id),
            opt(&self.authority),
            opt(&self.upstream_host),
            opt(&self.upstream_cluster),
            opt(&self.upstream_local),
            self.downstream_local,
            self.downstream_remote,
            opt(&self.server_name),
            self.route_name
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or("-"),
            self.tls_version.unwrap_or("-"),
            self.tls_cipher.unwrap_or("-"),
            opt(&self.peer_subject),
        );
        out
    }

    /// The same fields as one JSON object, named as in Istio's JSON encoding.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "start_time": format_start_time(self.start),
            "method": self.method.as_ref().map(http::Method::as_str),
            "path": self.path,
            "protocol": self.protocol,
            "response_code": self.status,
            "response_flags": self.flags,
            "response_code_details": self.details,
            "connection_termination_details": self.termination_details,
            "upstream_transport_failure_reason": self.upstream_failure,
            "bytes_received": self.bytes_received,
            "bytes_sent": self.bytes_sent,
            "duration": self.duration_ms,
            "upstream_service_time": self.upstream_service_time_ms,
            "x_forwarded_for": self.forwarded_for,
            "user_agent": self.user_agent,
            "request_id": self.request_id,
            "authority": self.authority,
            "upstream_host": self.upstream_host.map(|a| a.to_string()),
            "upstream_cluster": self.upstream_cluster,
            "upstream_local_address": self.upstream_local.map(|a| a.to_string()),
            "downstream_local_address": self.downstream_local.to_string(),
            "downstream_remote_address": self.downstream_remote.to_string(),
            "requested_server_name": self.server_name,
            "route_name": self.route_name,
            "downstream_tls_version": self.tls_version,
            "downstream_tls_cipher": self.tls_cipher,
            "downstream_peer_subject": self.peer_subject,
        })
        .to_string()
    }
}

/// `%START_TIME%` as Envoy prints it: `2024-05-01T12:00:00.123Z` (UTC).
pub fn format_start_time(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let millis = since_epoch.subsec_millis();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn start_time_is_rfc3339_millis_utc() {
        assert_eq!(format_start_time(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_123);
        assert_eq!(format_start_time(t), "2024-02-29T23:59:59.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(format_start_time(t), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn http_line_matches_envoy_default_format() {
        let mut r = AccessRecord::new(
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_000),
            "198.18.0.2:8080".parse().unwrap(),
            "198.18.0.1:40000".parse().unwrap(),
        );
        r.method = Some(http::Method::GET);
        r.path = Some("/api?x=1".into());
        r.protocol = Some("HTTP/1.1");
        r.status = 200;
        r.details = Some("via_upstream");
        r.bytes_sent = 12;
        r.duration_ms = 5;
        r.upstream_service_time_ms = Some(4);
        r.forwarded_for = Some("198.18.0.1".into());
        r.user_agent = Some("curl/8".into());
        r.request_id = Some("id-1".into());
        r.authority = Some("counter.example.com".into());
        r.upstream_host = Some("198.18.1.10:8080".parse().unwrap());
        r.upstream_cluster = Some("outbound|80||counter.default.svc.cluster.local".into());
        r.upstream_local = Some("198.18.1.1:50000".parse().unwrap());
        r.route_name = Some("counter".into());
        assert_eq!(
            r.to_text(),
            "[2023-11-14T22:13:20.000Z] \"GET /api?x=1 HTTP/1.1\" 200 - via_upstream - \"-\" 0 12 5 4 \
             \"198.18.0.1\" \"curl/8\" \"id-1\" \"counter.example.com\" \"198.18.1.10:8080\" \
             outbound|80||counter.default.svc.cluster.local 198.18.1.1:50000 198.18.0.2:8080 \
             198.18.0.1:40000 - counter - - \"-\""
        );
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["response_code"], 200);
        assert_eq!(json["upstream_host"], "198.18.1.10:8080");
    }

    #[test]
    fn tcp_line_has_dashes_for_http_fields() {
        let mut r = AccessRecord::new(
            UNIX_EPOCH,
            "198.18.0.2:3306".parse().unwrap(),
            "198.18.0.1:40000".parse().unwrap(),
        );
        r.flags = "UF";
        r.upstream_failure = Some("connection refused".into());
        assert_eq!(
            r.to_text(),
            "[1970-01-01T00:00:00.000Z] \"- - -\" 0 UF - - \"connection refused\" 0 0 0 - \"-\" \"-\" \"-\" \"-\" \"-\" - - 198.18.0.2:3306 198.18.0.1:40000 - - - - \"-\""
        );
    }
}

//! HTTP clients for tests: real curl in a namespace, and a tiny GET for polling.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::proc::run_bounded;
use crate::topology::{Ns, Topology};

/// Upper bound for one curl run in [`Topology::curl`] (curl's own `--max-time` is lower).
const CURL_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed HTTP response.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header names (lower-cased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body as text (lossy UTF-8).
    pub body: String,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("response body is not JSON: {:?}", self.body))
    }
}

/// What one curl run produced.
#[derive(Clone, Debug)]
pub struct CurlResult {
    /// curl's exit code (0 = transfer done; 7 = connection refused; 28 = timeout).
    pub exit_code: Option<i32>,
    /// The response, when curl got one.
    pub response: Option<HttpResponse>,
    /// What curl printed on stderr.
    pub stderr: String,
}

impl CurlResult {
    /// The response, or an error that says what curl reported instead.
    pub fn ok(self) -> Result<HttpResponse> {
        match self.response {
            Some(r) if self.exit_code == Some(0) => Ok(r),
            _ => bail!(
                "curl failed (exit {:?}): {}",
                self.exit_code,
                self.stderr.trim()
            ),
        }
    }

    /// The status code, or 0 when there was no response.
    pub fn status(&self) -> u16 {
        self.response.as_ref().map_or(0, |r| r.status)
    }
}

impl Topology {
    /// Runs `curl -sS --max-time 10 <args>` in `ns` for a single URL and parses what it got.
    ///
    /// `args` are passed as given (URL, `-H`, `-X`, ...). A refused connection is not an
    /// error here: it shows up as `exit_code == Some(7)` and no response.
    pub fn curl(&self, ns: Ns, args: &[&str]) -> Result<CurlResult> {
        let dir = tempfile::tempdir().context("creating curl temp dir")?;
        let head = dir.path().join("head");
        let body = dir.path().join("body");
        let mut cmd = self.exec_command(ns, "curl", ["-sS", "--max-time", "10"]);
        cmd.arg("-D").arg(&head).arg("-o").arg(&body).args(args);
        let out = run_bounded(&mut cmd, CURL_TIMEOUT)?;
        let response = if head.exists() {
            let head = std::fs::read_to_string(&head).unwrap_or_default();
            parse_head(&head).map(|(status, headers)| HttpResponse {
                status,
                headers,
                body: read_lossy(&body),
            })
        } else {
            None
        };
        Ok(CurlResult {
            exit_code: out.status.code(),
            response,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// `curl` from the client namespace with a `Host` header: the usual test request.
    pub fn get(&self, url: &str, host: &str) -> Result<CurlResult> {
        let host_header = format!("Host: {host}");
        self.curl(Ns::Client, &["-H", &host_header, url])
    }

    /// One curl process in `ns` that fetches every `(url, host)` in order over keep-alive
    /// connections, at most `rate_per_sec` requests per second; returns each status
    /// (0 for a transfer that failed) and curl's stderr.
    ///
    /// The whole run is bounded by `timeout`.
    pub fn curl_many(
        &self,
        ns: Ns,
        requests: &[(String, String)],
        rate_per_sec: u32,
        timeout: Duration,
    ) -> Result<(Vec<u16>, String)> {
        let dir = tempfile::tempdir().context("creating curl temp dir")?;
        let config = dir.path().join("curl.conf");
        let mut text = String::new();
        for (i, (url, host)) in requests.iter().enumerate() {
            if i > 0 {
                text.push_str("next\n");
            }
            text.push_str(&format!(
                "url = \"{url}\"\noutput = \"/dev/null\"\nheader = \"Host: {host}\"\nsilent\nshow-error\nmax-time = 10\nwrite-out = \"%{{http_code}}\\n\"\n"
            ));
        }
        std::fs::write(&config, text).context("writing curl config")?;
        let mut cmd = self.exec_command(ns, "curl", ["--rate"]);
        cmd.arg(format!("{rate_per_sec}/s")).arg("-K").arg(&config);
        let out = run_bounded(&mut cmd, timeout)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let codes = stdout
            .lines()
            .map(|l| l.trim().parse::<u16>().unwrap_or(0))
            .collect();
        Ok((codes, String::from_utf8_lossy(&out.stderr).into_owned()))
    }

    /// A minimal `GET path` from `ns` with `Connection: close` (no curl process), for
    /// polling status endpoints.
    pub fn http_get(&self, ns: Ns, addr: SocketAddr, path: &str) -> Result<HttpResponse> {
        let path = path.to_owned();
        self.in_ns(ns, move || raw_get(addr, &path))?
    }

    /// Polls `GET path` on `addr` from `ns` until it answers `status`, at most `timeout`.
    pub fn wait_http_status(
        &self,
        ns: Ns,
        addr: SocketAddr,
        path: &str,
        status: u16,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.http_get(ns, addr, path) {
                Ok(r) if r.status == status => return Ok(()),
                Ok(r) => format!("status {}", r.status),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!("GET {addr}{path} did not answer {status} within {timeout:?} (last: {last})");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub(crate) fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Parses the last header block of a curl `-D` dump (earlier ones are 1xx responses).
pub(crate) fn parse_head(text: &str) -> Option<(u16, Vec<(String, String)>)> {
    let start = text.rfind("HTTP/")?;
    parse_status_and_headers(&text[start..])
}

fn parse_status_and_headers(text: &str) -> Option<(u16, Vec<(String, String)>)> {
    let mut lines = text.split("\r\n").flat_map(|l| l.split('\n'));
    let status_line = lines.next()?;
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            Some((n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect();
    Some((status, headers))
}

fn raw_get(addr: SocketAddr, path: &str) -> Result<HttpResponse> {
    let timeout = Duration::from_secs(5);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: ingressd-tests\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading response from {addr}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers in response")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let (status, headers) = parse_status_and_headers(&head).context("bad status line")?;
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body).context("bad chunked body")?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_last_header_block() {
        let text = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nX-A: b\r\n\r\n";
        let (status, headers) = parse_head(text).unwrap();
        assert_eq!(status, 404);
        assert_eq!(headers[0], ("content-type".into(), "text/plain".into()));
        assert_eq!(headers.len(), 2);
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
        assert!(dechunk(b"5\r\nab").is_none());
    }
}

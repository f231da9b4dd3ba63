//! TLS at the gateway, test side: certificates made at test time (rcgen), PEM files in
//! each private-key encoding, Kubernetes Secrets, the Secret-volume `..data` symlink
//! swap, Gateway/VirtualService YAML with `tls`, a running gateway for the TLS tests,
//! and the real clients and servers that talk TLS in the namespaces (`curl`,
//! `openssl s_client`, `openssl s_server`).
//!
//! Every client run is bounded in time, like everything else in the harness.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SignatureAlgorithm,
};

use crate::config::{ConfigDir, gateway_service, service_with_endpoints};
use crate::fixture::{COUNTER_A, COUNTER_B, COUNTER_PORT, TCP_ECHO, sock};
use crate::kernel::kernel_mode;
use crate::proc::{Proc, run_bounded, run_ok};
use crate::topology::{NODE_ADDR, Ns, Topology};

/// Upper bound for one `curl` or `openssl` client run (their own timeouts are lower).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// The key algorithm of a generated certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAlg {
    /// ECDSA on P-256, signed with SHA-256.
    EcdsaP256,
    /// RSA 2048, PKCS#1 v1.5 signatures with SHA-256.
    Rsa2048,
}

impl KeyAlg {
    fn signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyAlg::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlg::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
        }
    }

    fn generate(self) -> Result<KeyPair> {
        KeyPair::generate_for(self.signature_algorithm())
            .with_context(|| format!("generating a {self:?} key"))
    }
}

/// How a private key is written to PEM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFormat {
    /// PKCS#8, `-----BEGIN PRIVATE KEY-----` (any algorithm; what rcgen writes).
    Pkcs8,
    /// PKCS#1, `-----BEGIN RSA PRIVATE KEY-----` (RSA only).
    Pkcs1,
    /// SEC1, `-----BEGIN EC PRIVATE KEY-----` (ECDSA only).
    Sec1,
}

impl KeyFormat {
    fn pem_label(self) -> &'static str {
        match self {
            KeyFormat::Pkcs8 => "PRIVATE KEY",
            KeyFormat::Pkcs1 => "RSA PRIVATE KEY",
            KeyFormat::Sec1 => "EC PRIVATE KEY",
        }
    }
}

/// A certificate authority for the test: signs server and client certificates.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A self-signed CA with common name `cn`.
    pub fn new(cn: &str, alg: KeyAlg) -> Result<Self> {
        let key = alg.generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params
            .self_signed(&key)
            .with_context(|| format!("self-signing CA {cn}"))?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// An intermediate CA with common name `cn`, signed by this one.
    pub fn intermediate(&self, cn: &str, alg: KeyAlg) -> Result<Self> {
        let key = alg.generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("signing intermediate CA {cn}"))?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes the CA certificate to `dir/<file>`.
    pub fn write(&self, dir: &Path, file: &str) -> Result<PathBuf> {
        write_file(&dir.join(file), &self.cert_pem)
    }

    /// A server certificate for the DNS names `names` (the first is also the common
    /// name; `*.example.com` wildcards are fine), valid from 1975 to 4096.
    pub fn server_cert(&self, names: &[&str], alg: KeyAlg) -> Result<Leaf> {
        self.issue(
            names[0],
            names,
            ExtendedKeyUsagePurpose::ServerAuth,
            alg,
            false,
        )
    }

    /// A client certificate with common name `cn` and DNS SANs `sans`.
    pub fn client_cert(&self, cn: &str, sans: &[&str], alg: KeyAlg) -> Result<Leaf> {
        self.issue(cn, sans, ExtendedKeyUsagePurpose::ClientAuth, alg, false)
    }

    /// A server certificate for `names` that expired in 2021.
    pub fn expired_server_cert(&self, names: &[&str], alg: KeyAlg) -> Result<Leaf> {
        self.issue(
            names[0],
            names,
            ExtendedKeyUsagePurpose::ServerAuth,
            alg,
            true,
        )
    }

    fn issue(
        &self,
        cn: &str,
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
        alg: KeyAlg,
        expired: bool,
    ) -> Result<Leaf> {
        let key = alg.generate()?;
        let mut params =
            CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .with_context(|| format!("certificate names {sans:?}"))?;
        params.distinguished_name = name(cn);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if alg == KeyAlg::Rsa2048 {
            // TLS 1.2 RSA key exchange is never offered by the gateway, but OpenSSL
            // clients check the usage bits against what the certificate may do.
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("signing the certificate for {cn}"))?;
        Ok(Leaf {
            cn: cn.to_owned(),
            cert_pem: cert.pem(),
            key,
            alg,
        })
    }
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// An end-entity certificate and its private key.
pub struct Leaf {
    /// The subject's common name.
    pub cn: String,
    /// The certificate, PEM.
    pub cert_pem: String,
    key: KeyPair,
    /// The key algorithm.
    pub alg: KeyAlg,
}

impl Leaf {
    /// The private key in `format` (PKCS#8 from rcgen; PKCS#1 and SEC1 converted by
    /// `openssl pkey -traditional`, the way people produce those files).
    pub fn key_pem(&self, format: KeyFormat) -> Result<String> {
        let pkcs8 = self.key.serialize_pem();
        let pem = match (format, self.alg) {
            (KeyFormat::Pkcs8, _) => pkcs8,
            (KeyFormat::Pkcs1, KeyAlg::Rsa2048) | (KeyFormat::Sec1, KeyAlg::EcdsaP256) => {
                let dir = tempfile::tempdir().context("temp dir for key conversion")?;
                let input = write_file(&dir.path().join("key.pem"), &pkcs8)?;
                let out = run_ok(
                    Command::new("openssl")
                        .args(["pkey", "-traditional", "-in"])
                        .arg(&input),
                    Duration::from_secs(20),
                )
                .context("converting the key with openssl pkey -traditional")?;
                String::from_utf8(out.stdout).context("openssl printed non-UTF-8")?
            }
            (format, alg) => bail!("a {alg:?} key cannot be written as {format:?}"),
        };
        let begin = format!("-----BEGIN {}-----", format.pem_label());
        if !pem.starts_with(&begin) {
            bail!("expected a PEM starting with {begin}, got:\n{pem}");
        }
        Ok(pem)
    }

    /// Writes `dir/<stem>.crt` and `dir/<stem>.key` (key in `format`); returns both paths.
    pub fn write(&self, dir: &Path, stem: &str, format: KeyFormat) -> Result<(PathBuf, PathBuf)> {
        let cert = write_file(&dir.join(format!("{stem}.crt")), &self.cert_pem)?;
        let key = write_file(&dir.join(format!("{stem}.key")), &self.key_pem(format)?)?;
        Ok((cert, key))
    }

    /// The serial number as lowercase hex without leading zeros (from `openssl x509`).
    pub fn serial_hex(&self) -> Result<String> {
        let dir = tempfile::tempdir().context("temp dir for openssl x509")?;
        let input = write_file(&dir.path().join("cert.pem"), &self.cert_pem)?;
        let out = run_ok(
            Command::new("openssl")
                .args(["x509", "-noout", "-serial", "-in"])
                .arg(&input),
            Duration::from_secs(20),
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        let hex = text
            .trim()
            .strip_prefix("serial=")
            .with_context(|| format!("unexpected openssl x509 -serial output: {text}"))?;
        Ok(normalize_serial(hex))
    }

    /// Whether `pem` (a certificate a client received) is this certificate.
    pub fn is(&self, pem: &str) -> bool {
        pem_body(pem) == pem_body(&self.cert_pem)
    }
}

/// A serial number in hex (any case, with or without `:`), lowercase without
/// separators and leading zeros, for comparing how different tools print it.
pub fn normalize_serial(hex: &str) -> String {
    let digits: String = hex
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// The base64 body of the first PEM block in `pem`, without line breaks.
fn pem_body(pem: &str) -> String {
    pem.lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .map(str::trim)
        .collect()
}

/// Writes `contents` to `path` (creating the parent directory).
pub fn write_file(path: &Path, contents: &str) -> Result<PathBuf> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_owned())
}

/// Replaces `path` by writing a hidden sibling and renaming it over (what `mv`,
/// editors and config management do).
pub fn rename_over(path: &Path, contents: &str) -> Result<()> {
    let file_name = path
        .file_name()
        .context("path has no file name")?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{file_name}.new"));
    write_file(&tmp, contents)?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming over {}", path.display()))
}

// ---------------------------------------------------------------------------
// Kubernetes Secrets and Secret volumes
// ---------------------------------------------------------------------------

/// Namespace of the gateway workload: where `credentialName` Secrets are looked up.
pub const GATEWAY_NAMESPACE: &str = "istio-system";

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
}

fn secret(name: &str, kind: &str, data: &[(&str, &str)]) -> String {
    let mut yaml = format!(
        "\
apiVersion: v1
kind: Secret
metadata:
  name: {name}
  namespace: {GATEWAY_NAMESPACE}
type: {kind}
data:
"
    );
    for (key, value) in data {
        let _ = writeln!(yaml, "  {key}: {}", b64(value));
    }
    yaml
}

/// A `kubernetes.io/tls` Secret: `tls.crt`, `tls.key` and optionally `ca.crt`.
pub fn tls_secret(name: &str, cert_pem: &str, key_pem: &str, ca_pem: Option<&str>) -> String {
    let mut data = vec![("tls.crt", cert_pem), ("tls.key", key_pem)];
    if let Some(ca) = ca_pem {
        data.push(("ca.crt", ca));
    }
    secret(name, "kubernetes.io/tls", &data)
}

/// A generic (`Opaque`) Secret with Istio's keys `cert`, `key` and optionally `cacert`.
pub fn generic_secret(name: &str, cert_pem: &str, key_pem: &str, ca_pem: Option<&str>) -> String {
    let mut data = vec![("cert", cert_pem), ("key", key_pem)];
    if let Some(ca) = ca_pem {
        data.push(("cacert", ca));
    }
    secret(name, "Opaque", &data)
}

/// The separate CA Secret of a credential: `<credential>-cacert` holding the CA under
/// `key` (`ca.crt` or `cacert`).
pub fn cacert_secret(credential: &str, key: &str, ca_pem: &str) -> String {
    secret(&format!("{credential}-cacert"), "Opaque", &[(key, ca_pem)])
}

/// A directory laid out the way the kubelet projects a Secret volume:
///
/// ```text
/// dir/..2026_11_27_12_00_00.<n>/tls.crt    the files of one generation
/// dir/..data -> ..2026_11_27_12_00_00.<n>  swapped atomically (rename of a new symlink)
/// dir/tls.crt -> ..data/tls.crt            what the config points at, never changes
/// ```
pub struct SecretVolume {
    dir: PathBuf,
    generation: u32,
    current: PathBuf,
}

impl SecretVolume {
    /// Creates the volume in `dir` (which must not hold one yet) with `files`.
    pub fn create(dir: &Path, files: &[(&str, &str)]) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let current = Self::write_generation(dir, 1, files)?;
        let data = dir.join("..data");
        std::os::unix::fs::symlink(current.file_name().context("generation dir")?, &data)
            .with_context(|| format!("linking {}", data.display()))?;
        for (name, _) in files {
            let link = dir.join(name);
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            generation: 1,
            current,
        })
    }

    /// The path a config names for `file` (`dir/<file>`, a symlink through `..data`).
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Publishes a new generation holding `files`, the kubelet's way: write the new
    /// directory, point `..data_tmp` at it, rename `..data_tmp` over `..data`, then
    /// remove the old directory.
    pub fn swap(&mut self, files: &[(&str, &str)]) -> Result<()> {
        self.generation += 1;
        let next = Self::write_generation(&self.dir, self.generation, files)?;
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(next.file_name().context("generation dir")?, &tmp)
            .with_context(|| format!("linking {}", tmp.display()))?;
        std::fs::rename(&tmp, self.dir.join("..data")).context("swapping ..data")?;
        std::fs::remove_dir_all(&self.current)
            .with_context(|| format!("removing {}", self.current.display()))?;
        self.current = next;
        Ok(())
    }

    fn write_generation(dir: &Path, generation: u32, files: &[(&str, &str)]) -> Result<PathBuf> {
        let gen_dir = dir.join(format!("..2026_11_27_12_00_{generation:02}.{generation}"));
        for (name, contents) in files {
            write_file(&gen_dir.join(name), contents)?;
        }
        Ok(gen_dir)
    }
}

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

/// The gateway Service of the TLS tests: the seed's ports (443 -> 8443, nodePort
/// 30443) plus `tls-alt` 9443 -> 9443 (nodePort 31443) for a second TLS port.
pub fn tls_gateway_service() -> String {
    let mut yaml = gateway_service();
    yaml.push_str(
        "  - name: tls-alt
    port: 9443
    targetPort: 9443
    nodePort: 31443
    protocol: TCP
",
    );
    yaml
}

/// One entry of a Gateway's `servers`. `tls` is `None` for no `tls` block, else its
/// fields as `(key, YAML value)` (`[a, b]` for lists; empty gives `tls: {}`).
pub fn server(
    port: u16,
    name: &str,
    protocol: &str,
    hosts: &[&str],
    tls: Option<&[(&str, &str)]>,
) -> String {
    let mut yaml = String::from("  - hosts:\n");
    for host in hosts {
        let _ = writeln!(yaml, "    - '{host}'");
    }
    let _ = write!(
        yaml,
        "    port:\n      name: {name}\n      number: {port}\n      protocol: {protocol}\n"
    );
    match tls {
        None => {}
        Some([]) => yaml.push_str("    tls: {}\n"),
        Some(fields) => {
            yaml.push_str("    tls:\n");
            for (key, value) in fields {
                let _ = writeln!(yaml, "      {key}: {value}");
            }
        }
    }
    yaml
}

/// The Gateway `istio-system/default-gateway` (what the harness's VirtualServices bind
/// to) with `servers`, in order (so `spec.servers[i]` is `servers[i]`).
pub fn gateway(servers: &[String]) -> String {
    let mut yaml = String::from(
        "\
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: default-gateway
  namespace: istio-system
spec:
  selector:
    istio: ingressgateway
  servers:
",
    );
    for s in servers {
        yaml.push_str(s);
    }
    yaml
}

/// A `tls:` route for [`passthrough_virtual_service`]: SNI hosts on a gateway port to a
/// destination Service.
pub struct SniRoute<'a> {
    /// The gateway port (`match[].port`).
    pub port: u16,
    /// `match[].sniHosts`.
    pub sni_hosts: &'a [&'a str],
    /// Destination Service (short name, in `default`).
    pub dest: &'a str,
    /// Destination port.
    pub dest_port: u16,
}

/// A VirtualService `name` with `tls:` routes (TLS passthrough by SNI).
pub fn passthrough_virtual_service(name: &str, hosts: &[&str], routes: &[SniRoute<'_>]) -> String {
    let mut yaml = format!(
        "\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: {name}
  namespace: default
spec:
  gateways:
  - default-gateway.istio-system.svc.cluster.local
  hosts:
"
    );
    for host in hosts {
        let _ = writeln!(yaml, "  - '{host}'");
    }
    yaml.push_str("  tls:\n");
    for r in routes {
        let _ = write!(
            yaml,
            "  - match:\n    - port: {}\n      sniHosts:\n",
            r.port
        );
        for sni in r.sni_hosts {
            let _ = writeln!(yaml, "      - '{sni}'");
        }
        let _ = write!(
            yaml,
            "    route:\n    - destination:\n        host: {}\n        port:\n          number: {}\n",
            r.dest, r.dest_port
        );
    }
    yaml
}

/// A VirtualService `name` with one `tcp:` route: gateway `port` to `dest:dest_port`.
pub fn tcp_virtual_service(name: &str, port: u16, dest: &str, dest_port: u16) -> String {
    format!(
        "\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: {name}
  namespace: default
spec:
  gateways:
  - default-gateway.istio-system.svc.cluster.local
  hosts:
  - '*'
  tcp:
  - match:
    - port: {port}
    route:
    - destination:
        host: {dest}
        port:
          number: {dest_port}
"
    )
}

// ---------------------------------------------------------------------------
// The gateway under test
// ---------------------------------------------------------------------------

/// Passthrough backends (`openssl s_server`) live here and at [`PASS_B`].
pub const PASS_A: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 30);
/// The second passthrough backend.
pub const PASS_B: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 31);
/// The port the passthrough backends listen on.
pub const PASS_PORT: u16 = 9443;

/// A running gateway for one TLS test. Fields drop in order: the daemon first, the
/// topology last.
pub struct TlsGateway {
    /// `ingressd run --config <config>` with `$INGRESSD_TEST_KERNEL`'s mode.
    pub daemon: Proc,
    /// Counters on [`COUNTER_A`] and [`COUNTER_B`], the TCP echo on [`TCP_ECHO`]:3306.
    pub backends: Vec<Proc>,
    /// The watched config directory.
    pub config: ConfigDir,
    /// The namespaces (pods also get [`PASS_A`] and [`PASS_B`]).
    pub topo: Topology,
}

impl TlsGateway {
    /// The files every TLS test's config starts with: the gateway Service
    /// ([`tls_gateway_service`]), `counter` (port 80 -> the two counters), `echo`
    /// (port 3306 -> the TCP echo).
    pub fn base_files() -> Vec<(String, String)> {
        vec![
            ("gateway-service.yaml".to_owned(), tls_gateway_service()),
            (
                "counter-service.yaml".to_owned(),
                service_with_endpoints(
                    "counter",
                    "http",
                    80,
                    COUNTER_PORT,
                    &[COUNTER_A, COUNTER_B],
                ),
            ),
            (
                "echo-service.yaml".to_owned(),
                service_with_endpoints("echo", "tcp", 3306, 3306, &[TCP_ECHO]),
            ),
        ]
    }

    /// Builds the topology, starts the backends, writes [`TlsGateway::base_files`] and
    /// `files`, and starts the daemon (`extra` appended to its arguments), waiting
    /// until it is ready.
    pub fn start(files: &[(String, String)], extra: &[&str]) -> Result<Self> {
        let topo = Topology::builder()
            .pod_addrs([COUNTER_A, COUNTER_B, TCP_ECHO, PASS_A, PASS_B])
            .build()?;
        let backends = vec![
            topo.start_counter(sock(COUNTER_A, COUNTER_PORT), "counter-a")?,
            topo.start_counter(sock(COUNTER_B, COUNTER_PORT), "counter-b")?,
            topo.start_tcp_echo(sock(TCP_ECHO, 3306), "tcp-echo")?,
        ];
        let config = ConfigDir::temp()?;
        config.write_all(&Self::base_files())?;
        config.write_all(files)?;
        let mut args: Vec<String> = kernel_mode().daemon_args();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let daemon = topo.start_ingressd(config.path(), &args)?;
        Ok(Self {
            daemon,
            backends,
            config,
            topo,
        })
    }
}

// ---------------------------------------------------------------------------
// Clients and servers in the namespaces
// ---------------------------------------------------------------------------

/// What one `curl https://...` run produced.
#[derive(Clone, Debug)]
pub struct HttpsResult {
    /// curl's exit code (0: done; 35: handshake failed; 56: the peer failed the
    /// connection, e.g. a TLS alert after the handshake; 60: certificate not trusted).
    pub exit_code: Option<i32>,
    /// The response status (0 when there was no response).
    pub status: u16,
    /// `1.1`, `2`, ... (empty when there was no response).
    pub http_version: String,
    /// The body (lossy UTF-8).
    pub body: String,
    /// What curl printed on stderr.
    pub stderr: String,
}

impl HttpsResult {
    /// Whether curl got a response.
    pub fn ok(&self) -> bool {
        self.exit_code == Some(0) && self.status != 0
    }

    /// The body parsed as JSON (the counter backend answers JSON).
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("response body is not JSON: {self:?}"))
    }
}

/// What a [`Topology::curl_https_many`] loop saw.
#[derive(Clone, Debug)]
pub struct RequestLoop {
    /// Each request's status, in order (0 for a transfer that failed).
    pub statuses: Vec<u16>,
    /// How many connections curl opened in all (1 when every request rode one
    /// keep-alive connection).
    pub connects: u32,
    /// What curl printed on stderr.
    pub stderr: String,
}

/// What one `openssl s_client` run printed, parsed.
#[derive(Clone, Debug)]
pub struct SClient {
    /// The exit code.
    pub exit_code: Option<i32>,
    /// Stdout: the session report and whatever the server sent.
    pub stdout: String,
    /// Stderr: errors and alerts (`... SSL alert number 112`).
    pub stderr: String,
}

impl SClient {
    /// `(protocol, cipher)` from `New, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384`,
    /// `None` when no handshake completed (`New, (NONE), Cipher is (NONE)`).
    pub fn negotiated(&self) -> Option<(String, String)> {
        let line = self.stdout.lines().find(|l| l.starts_with("New, "))?;
        let rest = line.strip_prefix("New, ")?;
        let (protocol, cipher) = rest.split_once(", Cipher is ")?;
        if protocol.contains("(NONE)") {
            return None;
        }
        Some((protocol.trim().to_owned(), cipher.trim().to_owned()))
    }

    /// Whether the handshake completed and s_client ended normally.
    ///
    /// The `New, ...` line alone does not say so: in TLS 1.2 the client has its
    /// cipher once it sent its Finished, and prints it even when the server then
    /// answers with an alert (e.g. a missing client certificate); s_client exits 1 then.
    pub fn handshake_ok(&self) -> bool {
        self.exit_code == Some(0) && self.negotiated().is_some()
    }

    /// The negotiated protocol version (`TLSv1.3`).
    pub fn protocol(&self) -> Option<String> {
        self.negotiated().map(|(p, _)| p)
    }

    /// The negotiated cipher suite (OpenSSL's name).
    pub fn cipher(&self) -> Option<String> {
        self.negotiated().map(|(_, c)| c)
    }

    /// `h2` from `ALPN protocol: h2`; `None` for `No ALPN negotiated`.
    pub fn alpn(&self) -> Option<String> {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix("ALPN protocol: "))
            .map(|p| p.trim().to_owned())
    }

    /// The server's certificate (PEM) as printed under `Server certificate`.
    pub fn leaf_pem(&self) -> Option<String> {
        let start = self.stdout.find("-----BEGIN CERTIFICATE-----")?;
        let end_marker = "-----END CERTIFICATE-----";
        let end = self.stdout[start..].find(end_marker)? + start + end_marker.len();
        Some(self.stdout[start..end].to_owned())
    }

    /// The server certificate's subject line (`subject=CN = a.example.com`).
    pub fn subject(&self) -> Option<String> {
        self.stdout
            .lines()
            .find(|l| l.starts_with("subject="))
            .map(str::to_owned)
    }

    /// Whether the server presented `leaf`.
    pub fn presented(&self, leaf: &Leaf) -> bool {
        self.leaf_pem().is_some_and(|pem| leaf.is(&pem))
    }

    /// Stdout and stderr, for failure messages (the certificate PEM left out).
    pub fn report(&self) -> String {
        let mut out = String::new();
        let mut in_pem = false;
        for line in self.stdout.lines() {
            if line.starts_with("-----BEGIN") {
                in_pem = true;
                out.push_str("[PEM]\n");
            }
            if !in_pem {
                out.push_str(line);
                out.push('\n');
            }
            if line.starts_with("-----END") {
                in_pem = false;
            }
        }
        format!(
            "exit {:?}\n--- s_client stdout ---\n{out}--- s_client stderr ---\n{}",
            self.exit_code, self.stderr
        )
    }
}

impl Topology {
    /// `curl https://<host>:<port><path>` from the client namespace, with `host`
    /// resolved to the node ([`NODE_ADDR`]), so SNI and `Host` are `host`; `args` add
    /// `--cacert`, `--cert`/`--key`, `--http2`, ...
    pub fn curl_https(
        &self,
        host: &str,
        port: u16,
        path: &str,
        args: &[&str],
    ) -> Result<HttpsResult> {
        let dir = tempfile::tempdir().context("creating curl temp dir")?;
        let body = dir.path().join("body");
        let resolve = format!("{host}:{port}:{NODE_ADDR}");
        let url = format!("https://{host}:{port}{path}");
        let mut cmd = self.exec_command(
            Ns::Client,
            "curl",
            ["-sS", "--max-time", "10", "--resolve", &resolve],
        );
        cmd.arg("-o")
            .arg(&body)
            .args(["-w", "%{response_code} %{http_version}"])
            .args(args)
            .arg(&url);
        let out = run_bounded(&mut cmd, CLIENT_TIMEOUT)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut fields = stdout.split_whitespace();
        let status = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let http_version = match fields.next() {
            Some("0") | None => String::new(),
            Some(v) => v.to_owned(),
        };
        Ok(HttpsResult {
            exit_code: out.status.code(),
            status,
            http_version,
            body: std::fs::read(&body)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// One curl process that fetches `https://<host>:<port><path>` for every path, at
    /// most `rate_per_sec` per second, over one keep-alive connection (h2 by ALPN), or
    /// with HTTP/1.1 and `Connection: close` (a new, full TLS handshake per request)
    /// when `new_connections`.
    ///
    /// `args` are long options without the dashes, applied to every request
    /// (`("cacert", "/path/ca.pem")`). The whole run is bounded by `timeout`.
    #[expect(clippy::too_many_arguments, reason = "one request loop, spelled out")]
    pub fn curl_https_many(
        &self,
        host: &str,
        port: u16,
        paths: &[String],
        args: &[(&str, &str)],
        new_connections: bool,
        rate_per_sec: u32,
        timeout: Duration,
    ) -> Result<RequestLoop> {
        let dir = tempfile::tempdir().context("creating curl temp dir")?;
        let config = dir.path().join("curl.conf");
        let mut text = String::new();
        for (i, path) in paths.iter().enumerate() {
            if i > 0 {
                text.push_str("next\n");
            }
            let _ = write!(
                text,
                "url = \"https://{host}:{port}{path}\"\nresolve = \"{host}:{port}:{NODE_ADDR}\"\noutput = \"/dev/null\"\nsilent\nshow-error\nmax-time = 10\nwrite-out = \"%{{http_code}} %{{num_connects}}\\n\"\n"
            );
            if new_connections {
                // HTTP/1.1: h2 (what curl negotiates by ALPN) has no Connection header
                // and would multiplex every request on one connection. No session
                // resumption: each handshake is a full one, certificate included.
                text.push_str("http1.1\nheader = \"Connection: close\"\nno-sessionid\n");
            }
            for (key, value) in args {
                let _ = writeln!(text, "{key} = \"{value}\"");
            }
        }
        std::fs::write(&config, text).context("writing curl config")?;
        let mut cmd = self.exec_command(Ns::Client, "curl", ["--rate"]);
        cmd.arg(format!("{rate_per_sec}/s")).arg("-K").arg(&config);
        let out = run_bounded(&mut cmd, timeout)?;
        let mut result = RequestLoop {
            statuses: Vec::new(),
            connects: 0,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut fields = line.split_whitespace();
            result
                .statuses
                .push(fields.next().and_then(|f| f.parse().ok()).unwrap_or(0));
            result.connects += fields
                .next()
                .and_then(|f| f.parse::<u32>().ok())
                .unwrap_or(0);
        }
        Ok(result)
    }

    /// `openssl s_client -connect 198.18.0.1:<port> <args>` from the client namespace.
    ///
    /// Its stdin gets `input`, then stays open for `linger` before the end of input
    /// (which makes s_client close the connection): long enough to print what the
    /// server answers, or the alert it sends after the handshake (TLS 1.3 reports a
    /// missing client certificate only then). With no input and no linger this is the
    /// usual `s_client ... </dev/null`.
    pub fn s_client(
        &self,
        port: u16,
        args: &[&str],
        input: &str,
        linger: Duration,
    ) -> Result<SClient> {
        let dir = tempfile::tempdir().context("creating s_client temp dir")?;
        let input_file = write_file(&dir.path().join("input"), input)?;
        let connect = format!("{NODE_ADDR}:{port}");
        let linger = format!("{:.3}", linger.as_secs_f64());
        let script = r#"input=$1; linger=$2; shift 2; { cat "$input"; sleep "$linger"; } | exec openssl s_client "$@""#;
        let mut cmd = self.exec_command(Ns::Client, "sh", ["-c", script, "sh"]);
        // -nocommands: else a chunk of input that starts with Q, R, k or K is taken
        // as a command (quit, renegotiate, key update) instead of being sent.
        cmd.arg(&input_file)
            .arg(&linger)
            .args(["-connect", &connect, "-nocommands"])
            .args(args);
        let out = run_bounded(&mut cmd, CLIENT_TIMEOUT)?;
        Ok(SClient {
            exit_code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Starts `openssl s_server -www` on `addr` in the pods namespace with `cert`/`key`
    /// and waits until it accepts connections. Its `-www` page echoes its command line,
    /// so a body shows which backend answered.
    pub fn start_s_server(
        &self,
        addr: SocketAddr,
        cert: &Path,
        key: &Path,
        name: &str,
    ) -> Result<Proc> {
        let accept = addr.to_string();
        let args: Vec<&std::ffi::OsStr> = vec![
            "s_server".as_ref(),
            "-accept".as_ref(),
            accept.as_ref(),
            "-cert".as_ref(),
            cert.as_os_str(),
            "-key".as_ref(),
            key.as_os_str(),
            "-www".as_ref(),
        ];
        let proc = self.spawn(Ns::Pods, name, "openssl", args)?;
        self.wait_tcp(Ns::Pods, addr, Duration::from_secs(10))
            .with_context(|| format!("{name} did not start\n{}", proc.log_tail(20)))?;
        Ok(proc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_and_key_formats() {
        let ca = Ca::new("test CA", KeyAlg::EcdsaP256).unwrap();
        let ec = ca
            .server_cert(&["a.example.com"], KeyAlg::EcdsaP256)
            .unwrap();
        assert!(ec.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(ec.is(&ec.cert_pem));
        assert!(ec.key_pem(KeyFormat::Pkcs8).is_ok());
        assert!(ec.key_pem(KeyFormat::Sec1).is_ok());
        assert!(ec.key_pem(KeyFormat::Pkcs1).is_err());
        let rsa = ca.server_cert(&["b.example.com"], KeyAlg::Rsa2048).unwrap();
        assert!(rsa.key_pem(KeyFormat::Pkcs1).is_ok());
        assert!(!rsa.is(&ec.cert_pem));
    }

    #[test]
    fn serials_compare_across_formats() {
        assert_eq!(normalize_serial("00:8A:bc"), "8abc");
        assert_eq!(normalize_serial("008abc"), "8abc");
        assert_eq!(normalize_serial("0"), "0");
    }

    #[test]
    fn secret_data_is_base64() {
        let yaml = tls_secret("cred", "C", "K", Some("A"));
        assert!(yaml.contains("type: kubernetes.io/tls"), "{yaml}");
        assert!(yaml.contains("  tls.crt: Qw==\n"), "{yaml}");
        assert!(yaml.contains("  ca.crt: QQ==\n"), "{yaml}");
        let yaml = generic_secret("cred", "C", "K", None);
        assert!(yaml.contains("  cert: Qw==\n  key: Sw==\n"), "{yaml}");
        assert!(cacert_secret("cred", "cacert", "A").contains("name: cred-cacert"));
    }

    #[test]
    fn secret_volume_swaps_data_link() {
        let dir = tempfile::tempdir().unwrap();
        let vol_dir = dir.path().join("vol");
        let mut vol = SecretVolume::create(&vol_dir, &[("tls.crt", "one")]).unwrap();
        assert_eq!(std::fs::read_to_string(vol.path("tls.crt")).unwrap(), "one");
        vol.swap(&[("tls.crt", "two")]).unwrap();
        assert_eq!(std::fs::read_to_string(vol.path("tls.crt")).unwrap(), "two");
        let entries: Vec<_> = std::fs::read_dir(&vol_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(entries.len(), 3, "{entries:?}");
    }

    #[test]
    fn parses_s_client_output() {
        let s = SClient {
            exit_code: Some(0),
            stdout: "CONNECTED(00000003)\n---\nServer certificate\n-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\nsubject=CN = a.example.com\n---\nNew, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384\nALPN protocol: h2\n".into(),
            stderr: String::new(),
        };
        assert_eq!(s.protocol().as_deref(), Some("TLSv1.3"));
        assert_eq!(s.cipher().as_deref(), Some("TLS_AES_256_GCM_SHA384"));
        assert_eq!(s.alpn().as_deref(), Some("h2"));
        assert_eq!(s.subject().as_deref(), Some("subject=CN = a.example.com"));
        assert_eq!(pem_body(&s.leaf_pem().unwrap()), "QUJD");
        let failed = SClient {
            exit_code: Some(1),
            stdout: "New, (NONE), Cipher is (NONE)\n".into(),
            stderr: String::new(),
        };
        assert!(!failed.handshake_ok());
    }
}

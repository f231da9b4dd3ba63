//! Key material: PEM -> a validated rustls `CertifiedKey` (or CA roots),
//! with the facts the admin API and logs show. Nothing here does I/O.
//!
//! A certificate is refused, never served, when the key does not match it,
//! when it is expired or not yet valid, or when the PEM holds no usable
//! block. Keys: RSA and ECDSA (and Ed25519), PKCS#1, PKCS#8 or SEC1 PEM.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

/// What a loaded certificate is, for `/certs` and log lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// RFC 2253 order, as Envoy prints it: `CN=a.example.com,O=Example`.
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    /// `DNS:a.example.com`, `URI:spiffe://...`, `IP:198.18.0.1`, `email:...`.
    pub subject_alt_names: Vec<String>,
    /// Seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
}

impl CertInfo {
    /// Whole days until expiry (negative once expired).
    pub fn days_until_expiry(&self, now: SystemTime) -> i64 {
        (self.not_after - unix(now)).div_euclid(86_400)
    }
}

fn unix(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// A certificate chain and its key, checked and ready to serve.
#[derive(Clone, Debug)]
pub struct Material {
    pub certified: Arc<CertifiedKey>,
    pub info: CertInfo,
}

/// Parses and checks a certificate chain and its private key.
pub fn load_certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<Material, String> {
    let certs = parse_certificates(cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            "no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block in the key".to_owned()
        }
        other => format!("invalid private key: {other}"),
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unusable private key: {e}"))?;
    let info = describe(&certs[0])?;
    let now_secs = unix(now);
    if info.not_after < now_secs {
        return Err(format!(
            "certificate {} expired at {}",
            info.subject,
            crate::proxy::access_log::format_start_time(UNIX_EPOCH + secs(info.not_after))
        ));
    }
    if info.not_before > now_secs {
        return Err(format!(
            "certificate {} is not valid before {}",
            info.subject,
            crate::proxy::access_log::format_start_time(UNIX_EPOCH + secs(info.not_before))
        ));
    }
    let certified = CertifiedKey::new(certs, signing_key);
    certified
        .keys_match()
        .map_err(|e| format!("the private key does not match the certificate: {e}"))?;
    Ok(Material {
        certified: Arc::new(certified),
        info,
    })
}

fn secs(s: i64) -> std::time::Duration {
    std::time::Duration::from_secs(s.max(0) as u64)
}

/// Parses CA certificates into a root store (for client certificates).
pub fn load_roots(pem: &[u8]) -> Result<(RootCertStore, Vec<CertInfo>), String> {
    let certs = parse_certificates(pem)?;
    let mut roots = RootCertStore::empty();
    let mut infos = Vec::new();
    for cert in certs {
        infos.push(describe(&cert)?);
        roots
            .add(cert)
            .map_err(|e| format!("unusable CA certificate: {e}"))?;
    }
    Ok((roots, infos))
}

fn parse_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("invalid certificate PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block".to_owned());
    }
    Ok(certs)
}

/// Subject, issuer, SANs and validity of a DER certificate.
pub fn describe(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("invalid certificate: {e}"))?;
    let validity = cert.validity();
    Ok(CertInfo {
        subject: rfc2253(cert.subject()),
        issuer: rfc2253(cert.issuer()),
        serial: cert.raw_serial_as_string().replace(':', ""),
        subject_alt_names: subject_alt_names(&cert),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
    })
}

/// The SANs of a certificate as `DNS:`/`URI:`/`IP:`/`email:` strings.
pub fn subject_alt_names(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(d) => Some(format!("DNS:{d}")),
            GeneralName::URI(u) => Some(format!("URI:{u}")),
            GeneralName::RFC822Name(e) => Some(format!("email:{e}")),
            GeneralName::IPAddress(bytes) => ip_string(bytes).map(|ip| format!("IP:{ip}")),
            _ => None,
        })
        .collect()
}

fn ip_string(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?).to_string()),
        16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?).to_string()),
        _ => None,
    }
}

/// A distinguished name in RFC 2253 order (last RDN first), `,`-joined, as
/// Envoy's `%DOWNSTREAM_PEER_SUBJECT%`.
pub fn rfc2253(name: &X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let key = x509_parser::objects::oid2abbrev(attr.attr_type(), registry)
                        .map(str::to_owned)
                        .unwrap_or_else(|_| attr.attr_type().to_id_string());
                    let value = attr.as_str().unwrap_or("?");
                    format!("{key}={}", escape_rdn(value))
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn escape_rdn(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The subject and SANs of a peer's end-entity certificate.
pub fn peer_identity(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some((rfc2253(cert.subject()), subject_alt_names(&cert)))
}

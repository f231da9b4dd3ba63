//! TLS names users write in Gateways (`cipherSuites`, protocol versions) and
//! the names logs print, mapped to what rustls implements. Pure: no I/O.
//!
//! Istio passes `cipherSuites` to Envoy as OpenSSL/BoringSSL names
//! (`ECDHE-ECDSA-AES128-GCM-SHA256`), which only restrict TLS 1.2; the IANA
//! names are accepted too. rustls implements AEAD suites with ECDHE only, so
//! every CBC, RSA-key-exchange, 3DES, RC4 or NULL suite is "known but not
//! supported": reported by `check` and left out, never silently served.

use rustls::CipherSuite;

/// One TLS 1.2 suite rustls serves: its OpenSSL and IANA names.
struct Suite {
    openssl: &'static str,
    iana: &'static str,
    suite: CipherSuite,
}

const TLS12_SUITES: [Suite; 6] = [
    Suite {
        openssl: "ECDHE-ECDSA-AES128-GCM-SHA256",
        iana: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        suite: CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    },
    Suite {
        openssl: "ECDHE-ECDSA-AES256-GCM-SHA384",
        iana: "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        suite: CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    },
    Suite {
        openssl: "ECDHE-ECDSA-CHACHA20-POLY1305",
        iana: "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        suite: CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    },
    Suite {
        openssl: "ECDHE-RSA-AES128-GCM-SHA256",
        iana: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        suite: CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    },
    Suite {
        openssl: "ECDHE-RSA-AES256-GCM-SHA384",
        iana: "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        suite: CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    },
    Suite {
        openssl: "ECDHE-RSA-CHACHA20-POLY1305",
        iana: "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        suite: CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    },
];

/// TLS 1.3 suites: always all enabled (as in Envoy, `cipherSuites` does
/// not apply to TLS 1.3).
const TLS13_SUITES: [(&str, CipherSuite); 3] = [
    (
        "TLS_AES_128_GCM_SHA256",
        CipherSuite::TLS13_AES_128_GCM_SHA256,
    ),
    (
        "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_AES_256_GCM_SHA384,
    ),
    (
        "TLS_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    ),
];

/// What a `cipherSuites` entry means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CipherName {
    /// A TLS 1.2 suite the gateway serves; the canonical (OpenSSL) name.
    Tls12(&'static str),
    /// A TLS 1.3 suite: always on, the entry changes nothing.
    Tls13(&'static str),
    /// A real suite the gateway refuses to serve (weak or not implemented).
    Unsupported,
    /// Not a cipher suite name at all.
    Unknown,
}

/// Classifies one `cipherSuites` entry (case-insensitive; OpenSSL or IANA).
pub fn classify_cipher(name: &str) -> CipherName {
    let upper = name.trim().to_ascii_uppercase();
    if let Some(s) = TLS12_SUITES
        .iter()
        .find(|s| s.openssl == upper || s.iana == upper)
    {
        return CipherName::Tls12(s.openssl);
    }
    if let Some((n, _)) = TLS13_SUITES.iter().find(|(n, _)| *n == upper) {
        return CipherName::Tls13(n);
    }
    let looks_like_suite = upper.starts_with("TLS_")
        || upper.starts_with("SSL_")
        || ["RSA", "ECDHE", "DHE", "AES", "DES", "RC4", "NULL", "PSK"]
            .iter()
            .any(|p| upper.contains(p));
    if looks_like_suite && !upper.contains(' ') {
        // A real suite name (CBC, static RSA, 3DES, RC4, ...) that rustls
        // does not implement, or a name of that shape we do not know.
        return CipherName::Unsupported;
    }
    CipherName::Unknown
}

/// The rustls suite of a canonical TLS 1.2 name from [`classify_cipher`].
pub fn tls12_suite(openssl_name: &str) -> Option<CipherSuite> {
    TLS12_SUITES
        .iter()
        .find(|s| s.openssl == openssl_name)
        .map(|s| s.suite)
}

/// The name Envoy prints for a negotiated suite (`%DOWNSTREAM_TLS_CIPHER%`):
/// OpenSSL names for TLS 1.2, IANA names for TLS 1.3.
pub fn cipher_log_name(suite: CipherSuite) -> &'static str {
    if let Some(s) = TLS12_SUITES.iter().find(|s| s.suite == suite) {
        return s.openssl;
    }
    TLS13_SUITES
        .iter()
        .find(|(_, s)| *s == suite)
        .map_or("-", |(n, _)| n)
}

/// `TLSv1.2` / `TLSv1.3`, as Envoy's `%DOWNSTREAM_TLS_VERSION%`.
pub fn version_log_name(version: rustls::ProtocolVersion) -> &'static str {
    match version {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "-",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_names_are_classified() {
        let cases = [
            (
                "ECDHE-ECDSA-AES128-GCM-SHA256",
                CipherName::Tls12("ECDHE-ECDSA-AES128-GCM-SHA256"),
            ),
            (
                "tls_ecdhe_rsa_with_aes_256_gcm_sha384",
                CipherName::Tls12("ECDHE-RSA-AES256-GCM-SHA384"),
            ),
            (
                "TLS_AES_128_GCM_SHA256",
                CipherName::Tls13("TLS_AES_128_GCM_SHA256"),
            ),
            ("DES-CBC3-SHA", CipherName::Unsupported),
            ("AES128-SHA", CipherName::Unsupported),
            ("ECDHE-RSA-AES128-SHA", CipherName::Unsupported),
            ("RC4-MD5", CipherName::Unsupported),
            ("TLS_RSA_WITH_AES_128_CBC_SHA", CipherName::Unsupported),
            ("AES256-GCM-SHA384", CipherName::Unsupported),
            ("NOT A CIPHER", CipherName::Unknown),
            ("banana", CipherName::Unknown),
        ];
        for (name, want) in cases {
            assert_eq!(classify_cipher(name), want, "{name}");
        }
    }

    #[test]
    fn log_names_follow_envoy() {
        assert_eq!(
            cipher_log_name(CipherSuite::TLS13_AES_256_GCM_SHA384),
            "TLS_AES_256_GCM_SHA384"
        );
        assert_eq!(
            cipher_log_name(CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
            "ECDHE-RSA-AES128-GCM-SHA256"
        );
        assert_eq!(
            tls12_suite("ECDHE-ECDSA-CHACHA20-POLY1305"),
            Some(CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256)
        );
        assert_eq!(
            version_log_name(rustls::ProtocolVersion::TLSv1_3),
            "TLSv1.3"
        );
    }
}

//! The live TLS state of the daemon: one rustls `ServerConfig` per
//! terminating server, rebuilt when its settings change (a new snapshot)
//! or when its key material changes (files rewritten, renamed, or swapped
//! behind a Secret volume's `..data` symlink; Secrets in the config).
//!
//! New handshakes read the current config; established connections keep
//! the one they were made with. A change that does not load (unreadable,
//! key mismatch, expired, no CA) is logged and the previous material keeps
//! serving. Files are re-checked on inotify events in their directories
//! (debounced) and every [`POLL_INTERVAL`] as a safety net.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use notify::{RecursiveMode, Watcher};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ProducesTickets, ServerConfig, ServerSessionMemoryCache, StoresServerSessions,
    WebPkiClientVerifier,
};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme, SupportedCipherSuite};
use tracing::{error, info, warn};

use super::certs::{self, CertInfo, Material};
use super::names::tls12_suite;
use crate::snapshot::{
    CaSource, CertificateSource, ClientAuth, ListenerKind, Snapshot, TlsContext, TlsVersion,
};

/// How often file-based material is re-read even without an inotify event.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Events closer together than this are handled once.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Sessions kept for TLS 1.2 session-id and TLS 1.3 stateful resumption.
const SESSION_CACHE_SIZE: usize = 16_384;

/// What `/certs` shows for one terminating server.
#[derive(Clone, Debug)]
pub struct ContextReport {
    pub name: String,
    pub source: String,
    pub certificate: Option<CertInfo>,
    pub ca: Vec<CertInfo>,
    pub loaded_at: Option<SystemTime>,
    pub error: Option<String>,
}

/// The raw bytes a config was built from, to tell whether anything changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Inputs {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
}

#[derive(Debug, Default)]
struct Status {
    inputs: Option<Inputs>,
    certificate: Option<CertInfo>,
    ca: Vec<CertInfo>,
    loaded_at: Option<SystemTime>,
    error: Option<String>,
}

/// One terminating server's live state.
#[derive(Debug)]
pub struct ContextState {
    spec: TlsContext,
    config: ArcSwapOption<ServerConfig>,
    status: Mutex<Status>,
}

impl ContextState {
    /// The config for the next handshake; `None` while nothing valid loaded.
    pub fn config(&self) -> Option<Arc<ServerConfig>> {
        self.config.load_full()
    }

    /// Why there is no config (or why the latest change was refused).
    pub fn error(&self) -> Option<String> {
        lock(&self.status).error.clone()
    }

    pub fn spec(&self) -> &TlsContext {
        &self.spec
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Everything TLS the daemon shares across listeners.
pub struct TlsRuntime {
    provider: Arc<CryptoProvider>,
    ticketer: Option<Arc<dyn ProducesTickets>>,
    sessions: Arc<dyn StoresServerSessions>,
    contexts: ArcSwap<HashMap<String, Arc<ContextState>>>,
    watch: Mutex<WatchState>,
}

impl std::fmt::Debug for TlsRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsRuntime")
            .field("contexts", &self.contexts.load().len())
            .finish()
    }
}

#[derive(Default)]
struct WatchState {
    watcher: Option<notify::RecommendedWatcher>,
    dirs: BTreeSet<PathBuf>,
    events: Option<tokio::sync::mpsc::UnboundedSender<()>>,
}

impl Default for TlsRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl TlsRuntime {
    pub fn new() -> Self {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        // Stateless session tickets (one key set for the process, rotated by
        // rustls every 6 hours) so resumption survives config rebuilds.
        let ticketer = match rustls::crypto::aws_lc_rs::Ticketer::new() {
            Ok(t) => Some(t),
            Err(e) => {
                warn!("TLS session tickets disabled: {e}");
                None
            }
        };
        Self {
            provider,
            ticketer,
            sessions: ServerSessionMemoryCache::new(SESSION_CACHE_SIZE),
            contexts: ArcSwap::default(),
            watch: Mutex::default(),
        }
    }

    /// The crypto provider's name, for logs and benchmarks.
    pub fn provider_name() -> &'static str {
        "aws-lc-rs"
    }

    /// The live state of the terminating server `name`.
    pub fn context(&self, name: &str) -> Option<Arc<ContextState>> {
        self.contexts.load().get(name).cloned()
    }

    /// Makes the live state match `snapshot`: unchanged servers keep their
    /// state, changed ones are rebuilt (keeping the old material if the new
    /// does not load), removed ones are dropped.
    pub fn apply(&self, snapshot: &Snapshot) {
        let old = self.contexts.load_full();
        let mut next = HashMap::new();
        for spec in tls_contexts(snapshot) {
            if let Some(state) = old.get(&spec.name)
                && state.spec == **spec
            {
                next.insert(spec.name.clone(), state.clone());
                continue;
            }
            let state = Arc::new(ContextState {
                spec: (**spec).clone(),
                config: ArcSwapOption::empty(),
                status: Mutex::default(),
            });
            if let Some(previous) = old.get(&spec.name) {
                // Serve the old material until the new one proves good.
                state.config.store(previous.config());
                let prev = lock(&previous.status);
                let mut status = lock(&state.status);
                status.certificate = prev.certificate.clone();
                status.ca = prev.ca.clone();
                status.loaded_at = prev.loaded_at;
            }
            self.refresh(&state, true);
            next.insert(spec.name.clone(), state);
        }
        self.contexts.store(Arc::new(next));
        self.update_watches();
    }

    /// Re-reads the material of every server; rebuilds where it changed.
    pub fn refresh_all(&self) {
        for state in self.contexts.load().values() {
            self.refresh(state, false);
        }
    }

    /// Loads and checks the material of `spec` without serving it
    /// (`ingressd check`): the certificate's facts, or why it would not load.
    pub fn probe(&self, spec: &TlsContext) -> Result<CertInfo, String> {
        let inputs = read_inputs(spec)?;
        self.build(spec, &inputs)
            .map(|(_, material, _)| material.info)
    }

    /// What `/certs` shows.
    pub fn report(&self) -> Vec<ContextReport> {
        let mut out: Vec<ContextReport> = self
            .contexts
            .load()
            .values()
            .map(|state| {
                let status = lock(&state.status);
                ContextReport {
                    name: state.spec.name.clone(),
                    source: state.spec.certificate.sds_name(),
                    certificate: status.certificate.clone(),
                    ca: status.ca.clone(),
                    loaded_at: status.loaded_at,
                    error: status.error.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Loads `state`'s inputs; when they differ from what is served, builds
    /// and swaps in a new config, or logs why not.
    fn refresh(&self, state: &ContextState, initial: bool) {
        let name = &state.spec.name;
        let inputs = match read_inputs(&state.spec) {
            Ok(inputs) => inputs,
            Err(reason) => {
                let mut status = lock(&state.status);
                if status.error.as_deref() != Some(reason.as_str()) {
                    if state.config.load().is_some() {
                        error!(server = %name, source = %state.spec.certificate.sds_name(), "TLS material not reloaded: {reason}; the previous certificate keeps serving");
                    } else {
                        error!(server = %name, source = %state.spec.certificate.sds_name(), "TLS material not loaded: {reason}; handshakes for this server fail");
                    }
                    status.error = Some(reason);
                }
                return;
            }
        };
        {
            let status = lock(&state.status);
            if status.inputs.as_ref() == Some(&inputs) {
                return;
            }
        }
        let built = self.build(&state.spec, &inputs);
        let mut status = lock(&state.status);
        // Whatever the outcome, these inputs have been judged.
        status.inputs = Some(inputs);
        match built {
            Ok((config, material, ca)) => {
                let rotated = !initial || state.config.load().is_some();
                state.config.store(Some(config));
                info!(server = %name, subject = %material.info.subject, serial = %material.info.serial,
                    rotated, "TLS certificate loaded; new handshakes use it");
                status.certificate = Some(material.info);
                status.ca = ca;
                status.loaded_at = Some(SystemTime::now());
                status.error = None;
            }
            Err(reason) => {
                if state.config.load().is_some() {
                    error!(server = %name, source = %state.spec.certificate.sds_name(), "TLS material refused: {reason}; the previous certificate keeps serving");
                } else {
                    error!(server = %name, source = %state.spec.certificate.sds_name(), "TLS material refused: {reason}; handshakes for this server fail");
                }
                status.error = Some(reason);
            }
        }
    }

    fn build(
        &self,
        spec: &TlsContext,
        inputs: &Inputs,
    ) -> Result<(Arc<ServerConfig>, Material, Vec<CertInfo>), String> {
        let material = certs::load_certified_key(
            &inputs.cert,
            &inputs.key,
            &self.provider,
            SystemTime::now(),
        )?;
        let mut provider = (*self.provider).clone();
        if !spec.cipher_suites.is_empty() {
            provider.cipher_suites.retain(|suite| match suite {
                SupportedCipherSuite::Tls13(_) => true,
                SupportedCipherSuite::Tls12(_) => spec
                    .cipher_suites
                    .iter()
                    .any(|n| tls12_suite(n) == Some(suite.suite())),
            });
        }
        let provider = Arc::new(provider);
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
            (TlsVersion::V1_2, &rustls::version::TLS12),
            (TlsVersion::V1_3, &rustls::version::TLS13),
        ]
        .into_iter()
        .filter(|(v, _)| spec.min_version <= *v && *v <= spec.max_version)
        .map(|(_, p)| p)
        .collect();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| format!("TLS settings: {e}"))?;
        let mut ca_infos = Vec::new();
        let builder = match spec.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Required | ClientAuth::Optional => {
                let pem = inputs
                    .ca
                    .as_deref()
                    .ok_or("client certificates are asked for but no CA is configured")?;
                let (roots, infos) = certs::load_roots(pem).map_err(|e| format!("CA: {e}"))?;
                ca_infos = infos;
                let mut verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                if spec.client_auth == ClientAuth::Optional {
                    verifier = verifier.allow_unauthenticated();
                }
                let verifier = verifier
                    .build()
                    .map_err(|e| format!("client certificate verifier: {e}"))?;
                let verifier: Arc<dyn ClientCertVerifier> = if spec.subject_alt_names.is_empty() {
                    verifier
                } else {
                    Arc::new(SanVerifier {
                        inner: verifier,
                        allowed: spec.subject_alt_names.clone(),
                    })
                };
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(
            rustls::sign::SingleCertAndKey::from((*material.certified).clone()),
        ));
        config.alpn_protocols = spec.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        config.ignore_client_order = true;
        config.session_storage = self.sessions.clone();
        if let Some(ticketer) = &self.ticketer {
            config.ticketer = ticketer.clone();
        }
        Ok((Arc::new(config), material, ca_infos))
    }

    /// Watches the directories of every file the servers read.
    fn update_watches(&self) {
        let wanted: BTreeSet<PathBuf> = self
            .contexts
            .load()
            .values()
            .flat_map(|s| files_of(&s.spec))
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        let mut guard = lock(&self.watch);
        let watch = &mut *guard;
        if watch.dirs == wanted {
            return;
        }
        let old = std::mem::take(&mut watch.dirs);
        let Some(watcher) = watch.watcher.as_mut() else {
            return;
        };
        let mut kept = BTreeSet::new();
        for dir in old.difference(&wanted) {
            let _ = watcher.unwatch(dir);
        }
        for dir in &wanted {
            if old.contains(dir) {
                kept.insert(dir.clone());
                continue;
            }
            match watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    kept.insert(dir.clone());
                }
                // Polling still covers it (e.g. the directory appears later).
                Err(e) => warn!(dir = %dir.display(), "cannot watch certificate directory: {e}"),
            }
        }
        watch.dirs = kept;
    }

    /// Starts watching certificate files: inotify events (debounced) and a
    /// periodic re-check both call [`TlsRuntime::refresh_all`].
    pub fn spawn_watcher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        {
            let mut watch = lock(&self.watch);
            let events = tx.clone();
            match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Our own reads of the files are access events: reacting to
                // them would reload in a loop.
                if let Ok(event) = event
                    && !matches!(event.kind, notify::EventKind::Access(_))
                {
                    let _ = events.send(());
                }
            }) {
                Ok(w) => watch.watcher = Some(w),
                Err(e) => warn!("cannot watch certificate files (polling only): {e}"),
            }
            watch.events = Some(tx);
            watch.dirs.clear();
        }
        self.update_watches();
        let runtime = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    got = rx.recv() => {
                        if got.is_none() {
                            return;
                        }
                        tokio::time::sleep(DEBOUNCE).await;
                        while rx.try_recv().is_ok() {}
                    }
                    _ = tick.tick() => {}
                }
                let runtime = runtime.clone();
                let _ = tokio::task::spawn_blocking(move || runtime.refresh_all()).await;
            }
        })
    }
}

/// Every terminating server of `snapshot`.
pub fn tls_contexts(snapshot: &Snapshot) -> impl Iterator<Item = &Arc<TlsContext>> {
    snapshot.listeners.iter().flat_map(|l| match &l.kind {
        ListenerKind::Tls(tls) => tls
            .chains
            .iter()
            .filter_map(|c| c.action.tls_context())
            .collect::<Vec<_>>(),
        _ => Vec::new(),
    })
}

fn files_of(spec: &TlsContext) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let CertificateSource::Files { cert, key } = &spec.certificate {
        out.push(cert.clone());
        out.push(key.clone());
    }
    if let Some(CaSource::File(ca)) = &spec.ca {
        out.push(ca.clone());
    }
    out
}

fn read_inputs(spec: &TlsContext) -> Result<Inputs, String> {
    let read = |path: &Path, what: &str| {
        std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
    };
    let (cert, key) = match &spec.certificate {
        CertificateSource::Files { cert, key } => {
            (read(cert, "serverCertificate")?, read(key, "privateKey")?)
        }
        CertificateSource::Secret { cert, key, .. } => (cert.clone(), key.clone()),
        CertificateSource::Missing(reason) => return Err(reason.clone()),
    };
    let ca = match &spec.ca {
        None => None,
        Some(CaSource::File(path)) => Some(read(path, "caCertificates")?),
        Some(CaSource::Secret { pem, .. }) => Some(pem.clone()),
        Some(CaSource::Missing(reason)) => return Err(reason.clone()),
    };
    Ok(Inputs { cert, key, ca })
}

/// `subjectAltNames`: the client certificate, once verified against the CA,
/// must also carry one of these names (DNS, URI, IP or email SAN; exact).
#[derive(Debug)]
struct SanVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

impl ClientCertVerifier for SanVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let sans = certs::peer_identity(end_entity)
            .map(|(_, sans)| sans)
            .unwrap_or_default();
        let ok = sans.iter().any(|san| {
            let value = san.split_once(':').map_or(san.as_str(), |(_, v)| v);
            self.allowed.iter().any(|a| a == value)
        });
        if ok {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

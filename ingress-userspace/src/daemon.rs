//! Wiring of `ingressd run`: config dir -> pipeline -> snapshot swap ->
//! listeners, admin/status servers, the kernel program, live reload and
//! graceful shutdown.
//!
//! Threads and tasks: the tokio runtime runs one accept task per listener, one
//! task per connection, the admin and status servers, and the reload loop;
//! `notify` watches the config dir on its own thread; pipeline runs, kernel
//! map writes and map scans go to the blocking pool; conntrack reaping runs
//! on its own thread (`conntrack-reaper`).
//!
//! Kernel path on every snapshot swap: plan (pure) -> bind/unbind userspace
//! listeners (nodePorts the kernel takes are not bound) -> register the
//! steered listeners' sockets -> write the plan's ordered diff.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::admin::{self, Admin, KernelDump, ListenerInfo, ServerState, State};
use crate::kernel::manager::{self as kernel_manager, KernelManager, KernelOptions, XdpMode};
use crate::kernel::{AttachMode, PortCounterProgram};
use crate::pipeline::{self, Options};
use crate::proxy::access_log::AccessLog;
use crate::proxy::{self, ConnInfo, Context, ListenerStats};
use crate::snapshot::{GatewayIdentity, Snapshot};
use crate::source::kubernetes::{KubeOptions, KubeSource, SourceStatus};
use crate::stats::{Metrics, SourceIdentity};

/// `--kernel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelMode {
    /// Try the kernel path; fall back to userspace alone when it cannot load.
    Auto,
    /// Require the kernel path.
    On,
    /// Userspace only.
    Off,
}

/// Where `ingressd run` reads its config.
#[derive(Clone, Debug)]
pub enum SourceOptions {
    /// `--config DIR` (watched).
    Directory(PathBuf),
    /// `--source kubernetes`.
    Kubernetes(KubeOptions),
}

/// Everything `ingressd run` is told on its command line.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub source: SourceOptions,
    /// `--host-ip`: this node's address (downward API `status.hostIP`); with
    /// the Node's addresses it picks the interfaces to attach to.
    pub host_ip: Option<IpAddr>,
    pub gateway: GatewayIdentity,
    pub admin_addr: SocketAddr,
    pub status_addr: SocketAddr,
    /// `--metrics-addr`: `/stats/prometheus` alone (none: off).
    pub metrics_addr: Option<SocketAddr>,
    pub drain_timeout: Duration,
    pub kernel: KernelMode,
    pub interfaces: Vec<String>,
    /// `--xdp`: forwarding hook choice.
    pub xdp: XdpMode,
    /// `--bpffs-root`: where the kernel path pins.
    pub pin_root: PathBuf,
    /// `--max-services`: TCP services the kernel maps hold.
    pub max_services: u32,
    /// XDP attach mode of the port counter.
    pub port_counter_mode: AttachMode,
    pub access_log: AccessLog,
    /// For `/server_info`.
    pub command_line: Vec<String>,
}

/// A running config source.
enum ConfigSource {
    Directory {
        dir: PathBuf,
        changes: mpsc::Receiver<()>,
        _watcher: notify::RecommendedWatcher,
    },
    Kubernetes {
        source: Box<KubeSource>,
        changes: watch::Receiver<u64>,
    },
}

impl ConfigSource {
    async fn start(options: &RunOptions) -> anyhow::Result<Self> {
        Ok(match &options.source {
            SourceOptions::Directory(dir) => {
                // Watch before the first read: an edit in between is not lost.
                let (tx, changes) = mpsc::channel::<()>(1);
                let watcher = watch_config(dir, tx)?;
                Self::Directory {
                    dir: dir.clone(),
                    changes,
                    _watcher: watcher,
                }
            }
            SourceOptions::Kubernetes(kube) => {
                let source = KubeSource::start(kube, &options.gateway.namespace).await?;
                let changes = source.subscribe();
                Self::Kubernetes {
                    source: Box::new(source),
                    changes,
                }
            }
        })
    }

    /// The Kubernetes watches' state (none for a directory).
    fn status(&self) -> Option<Arc<SourceStatus>> {
        match self {
            Self::Directory { .. } => None,
            Self::Kubernetes { source, .. } => Some(source.status()),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Directory { dir, .. } => dir.display().to_string(),
            Self::Kubernetes { .. } => "kubernetes".to_owned(),
        }
    }

    /// The first snapshot. A directory with errors stops the daemon (a
    /// person is starting it and can fix them); the Kubernetes source waits
    /// for its initial lists, meanwhile `/healthz/ready` says 503.
    async fn initial(&mut self, options: &Options) -> anyhow::Result<Snapshot> {
        match self {
            Self::Directory { dir, .. } => match build(dir, options).await? {
                Ok(snapshot) => Ok(snapshot),
                Err(errors) => bail!(
                    "the config in {} has {errors} error(s); not starting",
                    dir.display()
                ),
            },
            Self::Kubernetes { source, .. } => {
                info!("kubernetes source: waiting for the initial lists");
                let outcome = source.first_build(options).await?;
                source.report(&outcome);
                // Per-object compiling always yields a snapshot.
                outcome
                    .snapshot
                    .context("the Kubernetes source compiled no snapshot")
            }
        }
    }

    /// Waits for the next change, letting a burst settle (the directory
    /// watcher debounces by itself; API events are coalesced here: 100 ms of
    /// quiet, at most 1 s).
    async fn changed(&mut self) -> bool {
        match self {
            Self::Directory { changes, .. } => changes.recv().await.is_some(),
            Self::Kubernetes { changes, .. } => {
                if changes.changed().await.is_err() {
                    return false;
                }
                let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
                while tokio::time::Instant::now() < deadline {
                    match tokio::time::timeout(Duration::from_millis(100), changes.changed()).await
                    {
                        Ok(Ok(())) => continue,
                        _ => break,
                    }
                }
                true
            }
        }
    }

    /// A new snapshot, `Ok(None)` when the source saw nothing new, `Err(n)`
    /// inside when the config has `n` errors (directory only).
    async fn rebuild(
        &mut self,
        options: &Options,
    ) -> anyhow::Result<Option<Result<Snapshot, usize>>> {
        match self {
            Self::Directory { dir, .. } => build(dir, options).await.map(Some),
            Self::Kubernetes { source, .. } => {
                let Some(outcome) = source.build(options).await? else {
                    return Ok(None);
                };
                source.report(&outcome);
                Ok(outcome.snapshot.map(Ok))
            }
        }
    }

    /// Interfaces holding this node's addresses (the Node object's and
    /// `--host-ip`), for the kernel path when `--interfaces` is not given.
    async fn node_interfaces(&self, options: &RunOptions) -> Vec<String> {
        let mut addresses: Vec<IpAddr> = options.host_ip.into_iter().collect();
        if let (Self::Kubernetes { source, .. }, SourceOptions::Kubernetes(kube)) =
            (self, &options.source)
            && let Some(node) = &kube.node_name
        {
            addresses.extend(source.node_addresses(node).await);
        }
        let v4: Vec<Ipv4Addr> = addresses
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        if v4.is_empty() {
            return Vec::new();
        }
        match kernel_manager::interfaces_with_addresses(&v4) {
            Ok(names) => {
                info!(addresses = ?v4, interfaces = ?names, "node interfaces");
                names
            }
            Err(error) => {
                warn!("listing interfaces: {error}");
                Vec::new()
            }
        }
    }
}

/// Runs the daemon until SIGTERM/SIGINT (or `POST /quitquitquit`) and a
/// bounded drain.
pub async fn run(mut options: RunOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let pipeline_options = Options {
        gateway: options.gateway.clone(),
    };
    // The status port answers (503) while the first config loads: with the
    // Kubernetes source that is the initial sync, which can take a while.
    let state = Arc::new(ServerState::default());
    let status_listener = TcpListener::bind(options.status_addr)
        .await
        .with_context(|| format!("binding the status port {}", options.status_addr))?;
    let status_task = tokio::spawn(admin::serve_status(status_listener, state.clone()));

    let mut source = ConfigSource::start(&options).await?;
    if options.interfaces.is_empty() && options.kernel != KernelMode::Off {
        options.interfaces = source.node_interfaces(&options).await;
    }
    let snapshot = source.initial(&pipeline_options).await?;

    let lb = setup_lb(&options)?;
    let kernel = setup_kernel(&options)?;
    let mut kernel_line = match &lb {
        Some(manager) => format!(
            "forwarding on {:?}, sk_lookup_steer on the netns, pins in {}{}",
            manager
                .hooks()
                .iter()
                .map(|h| format!("{} ({})", h.name, h.hook))
                .collect::<Vec<_>>(),
            options.pin_root.display(),
            if manager.adopted() { " (adopted)" } else { "" }
        ),
        None => "off (userspace only)".to_owned(),
    };
    if let Some(program) = &kernel {
        kernel_line.push_str(&format!(
            "; xdp_port_counter attached to {:?}",
            program.interfaces()
        ));
    }
    let kernel = Arc::new(Mutex::new(kernel));
    let lb_enabled = lb.is_some();
    let lb = Arc::new(Mutex::new(lb));
    let mut hooks: Vec<Box<dyn Collector>> = vec![Box::new(KernelCollector {
        program: kernel.clone(),
        lb: lb.clone(),
    })];
    let source_status = source.status();
    if let Some(status) = &source_status {
        hooks.push(Box::new(SourceCollector(status.clone())));
    }
    let metrics = Arc::new(Metrics::new(
        SourceIdentity::from_gateway(&options.gateway),
        hooks,
    ));
    let ctx = Arc::new(Context::new(
        Arc::new(snapshot),
        metrics.clone(),
        options.access_log,
    ));
    // Certificates load before the first listener opens; then their files
    // are watched for rotation.
    ctx.tls.apply(&ctx.snapshot.load());
    let _tls_watcher = ctx.tls.spawn_watcher();
    let quit = Arc::new(Notify::new());
    let admin = Arc::new(Admin {
        ctx: ctx.clone(),
        state: state.clone(),
        started,
        command_line: options.command_line.clone(),
        listeners: Mutex::new(Vec::new()),
        quit: quit.clone(),
        kernel: kernel_line,
        config_source: source_status,
        kernel_dump: lb_enabled.then(|| {
            let lb = lb.clone();
            KernelDump(Arc::new(move || {
                lock(&lb)
                    .as_ref()
                    .map_or(serde_json::Value::Null, KernelManager::dump)
            }))
        }),
    });

    let admin_listener = TcpListener::bind(options.admin_addr)
        .await
        .with_context(|| format!("binding the admin port {}", options.admin_addr))?;
    info!(status = %options.status_addr, admin = %options.admin_addr, "admin and status servers listening");
    let admin_task = tokio::spawn(admin::serve_admin(admin_listener, admin.clone()));
    let metrics_task = match options.metrics_addr {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics port {addr}"))?;
            info!(metrics = %addr, "Prometheus metrics listening (GET /stats/prometheus)");
            Some(tokio::spawn(admin::serve_metrics(listener, admin.clone())))
        }
        None => None,
    };

    let mut listeners = Listeners::new(ctx.clone(), options.drain_timeout);
    apply_snapshot(&lb, &mut listeners, &ctx.snapshot.load_full(), true).await?;
    let reaper = lb_enabled.then(|| spawn_reaper(lb.clone()));
    admin.listeners_update(listeners.info());
    state.set(State::Live);
    info!(
        listeners = listeners.tasks.len(),
        config = %source.describe(),
        "ready"
    );

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            true = source.changed() => {
                reload(&ctx, &mut source, &pipeline_options, &mut listeners, &lb).await;
                admin.listeners_update(listeners.info());
            }
            _ = sigterm.recv() => { info!("SIGTERM: draining"); break; }
            _ = tokio::signal::ctrl_c() => { info!("SIGINT: draining"); break; }
            () = quit.notified() => { info!("quitquitquit: draining"); break; }
        }
    }

    state.set(State::Draining);
    let drained = listeners.shutdown().await;
    if drained {
        info!("drained");
    } else {
        warn!(timeout = ?options.drain_timeout, "drain timeout: closing remaining connections");
    }
    admin_task.abort();
    if let Some(task) = metrics_task {
        task.abort();
    }
    status_task.abort();
    if let Some((stop, handle)) = reaper {
        drop(stop);
        let _ = handle.join();
    }
    if lock(&lb).take().is_some() {
        info!(
            pins = %options.pin_root.display(),
            "kernel path stays attached (pinned) for established flows; `ingressd cleanup` removes it"
        );
    }
    // Detach the XDP program before exiting.
    if let Some(program) = kernel
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
    {
        info!(interfaces = ?program.interfaces(), "detaching xdp_port_counter");
        drop(program);
    }
    Ok(())
}

impl Admin {
    fn listeners_update(&self, info: Vec<ListenerInfo>) {
        *self
            .listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = info;
    }
}

/// Runs the pipeline on the blocking pool and logs its diagnostics. `Err(n)`
/// when the config has `n` errors.
async fn build(dir: &Path, options: &Options) -> anyhow::Result<Result<Snapshot, usize>> {
    let dir = dir.to_owned();
    let options = options.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let outcome = pipeline::build_from_dir(&dir, &options);
        crate::release_freed_memory();
        outcome
    })
    .await
    .context("the config pipeline panicked")?;
    for diagnostic in outcome.diagnostics.iter() {
        if diagnostic.is_error() {
            error!("{diagnostic}");
        } else {
            warn!("{diagnostic}");
        }
    }
    Ok(match outcome.snapshot {
        Some(snapshot) if !outcome.diagnostics.has_errors() => Ok(snapshot),
        _ => Err(outcome.diagnostics.errors().count().max(1)),
    })
}

async fn reload(
    ctx: &Arc<Context>,
    source: &mut ConfigSource,
    pipeline_options: &Options,
    listeners: &mut Listeners,
    lb: &SharedManager,
) {
    match source.rebuild(pipeline_options).await {
        Ok(None) => {}
        Ok(Some(Ok(snapshot))) => {
            let snapshot = Arc::new(snapshot);
            // New TLS configs are ready before the snapshot naming them is.
            ctx.tls.apply(&snapshot);
            ctx.snapshot.store(snapshot.clone());
            ctx.balancer
                .retain(|name| snapshot.clusters.contains_key(name));
            if let Err(error) = apply_snapshot(lb, listeners, &snapshot, false).await {
                error!("applying the snapshot: {error:#}");
            }
            ctx.metrics.config_reload(true);
            info!(
                listeners = snapshot.listeners.len(),
                clusters = snapshot.clusters.len(),
                "config reloaded"
            );
        }
        Ok(Some(Err(errors))) => {
            ctx.metrics.config_reload(false);
            error!(
                errors,
                "config change rejected; still serving the last good config"
            );
        }
        Err(error) => {
            ctx.metrics.config_reload(false);
            error!("config reload failed: {error:#}");
        }
    }
}

/// The kernel manager, shared by the reload loop, the reaper, the admin
/// API and the metrics collector.
type SharedManager = Arc<Mutex<Option<KernelManager>>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `--kernel` for the forwarding and steering path: load (or adopt) and
/// attach, or say why not. `off` removes whatever an earlier run pinned.
fn setup_lb(options: &RunOptions) -> anyhow::Result<Option<KernelManager>> {
    let kernel_options = KernelOptions {
        pin_root: options.pin_root.clone(),
        interfaces: options.interfaces.clone(),
        xdp: options.xdp,
        max_services: options.max_services,
    };
    let started = match options.kernel {
        KernelMode::Off => {
            match kernel_manager::cleanup(&options.pin_root) {
                Ok(removed) if removed.is_empty() => {}
                Ok(removed) => info!(?removed, "--kernel off: removed the pinned kernel path"),
                Err(error) => warn!(
                    "--kernel off: removing {}: {}",
                    options.pin_root.display(),
                    crate::kernel::chain(&error)
                ),
            }
            info!("kernel path off (--kernel off): serving in userspace only");
            return Ok(None);
        }
        KernelMode::On => KernelManager::start(&kernel_options)
            .map_err(anyhow::Error::new)
            .context("--kernel on: setting up the kernel path")?,
        KernelMode::Auto => match KernelManager::start(&kernel_options) {
            Ok(manager) => manager,
            Err(error) => {
                warn!(
                    "kernel path unavailable, serving everything in userspace: {}",
                    crate::kernel::chain(&error)
                );
                return Ok(None);
            }
        },
    };
    for hook in started.hooks() {
        info!(
            interface = %hook.name,
            ifindex = hook.ifindex,
            snat = %hook.address,
            driver = hook.driver.as_deref().unwrap_or("unknown"),
            link = hook.link,
            "hook {}: {}", hook.hook, hook.reason
        );
    }
    info!(
        pins = %options.pin_root.display(),
        adopted = started.adopted(),
        "kernel path ready: tc_ingress/xdp_ingress forward TCP services, sk_lookup_steer steers HTTP nodePorts"
    );
    Ok(Some(started))
}

/// One snapshot swap for the kernel path and the listeners: plan, bind
/// (without the nodePorts the kernel takes), register steered sockets,
/// write the plan's diff.
async fn apply_snapshot(
    lb: &SharedManager,
    listeners: &mut Listeners,
    snapshot: &Arc<Snapshot>,
    initial: bool,
) -> anyhow::Result<()> {
    let plan = lock(lb).as_ref().map(|m| m.plan_for(snapshot));
    listeners.kernel_takes = plan
        .as_ref()
        .map(|plan| {
            snapshot
                .listeners
                .iter()
                .filter(|l| plan.kernel_takes_node_port(l.port))
                .map(|l| l.port)
                .collect()
        })
        .unwrap_or_default();
    listeners.apply(snapshot, initial).await?;
    let Some(plan) = plan else {
        return Ok(());
    };
    for note in &plan.notes {
        info!("kernel: {note}");
    }
    let fds = listeners.fds();
    let lb = lb.clone();
    let written = tokio::task::spawn_blocking(move || {
        let mut guard = lock(&lb);
        let Some(manager) = guard.as_mut() else {
            return Ok((0, Vec::new()));
        };
        let sockets = manager.register_sockets(&plan, &fds)?;
        let ops = manager.apply(&plan)?;
        Ok::<_, crate::kernel::KernelError>((sockets, ops))
    })
    .await
    .context("the kernel writer panicked")?;
    match written {
        Ok((sockets, ops)) => {
            let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
            for op in &ops {
                *kinds.entry(op.kind()).or_default() += 1;
            }
            info!(steered_sockets = sockets, ops = ?kinds, "kernel maps updated");
            Ok(())
        }
        Err(error) => Err(anyhow::anyhow!(
            "writing the kernel maps: {}",
            crate::kernel::chain(&error)
        )),
    }
}

/// Reaps finished and idle conntrack entries every 10 s until the returned
/// sender is dropped.
fn spawn_reaper(lb: SharedManager) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("conntrack-reaper".into())
        .spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(Duration::from_secs(10))
            {
                let mut guard = lock(&lb);
                let Some(manager) = guard.as_mut() else {
                    return;
                };
                match manager.reap(CONNTRACK_IDLE_TIMEOUT) {
                    Ok(reaped) if reaped.removed > 0 => {
                        tracing::debug!(
                            scanned = reaped.scanned,
                            removed = reaped.removed,
                            "conntrack reaped"
                        );
                    }
                    Ok(_) => {}
                    Err(error) => warn!("reaping conntrack: {}", crate::kernel::chain(&error)),
                }
            }
        })
        .expect("spawning a thread at startup");
    (stop, handle)
}

/// Quiet time after which a forwarded connection's entries are reaped.
const CONNTRACK_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// `--interfaces` given: also attach the XDP port counter there.
fn setup_kernel(options: &RunOptions) -> anyhow::Result<Option<PortCounterProgram>> {
    if options.kernel == KernelMode::Off || options.interfaces.is_empty() {
        return Ok(None);
    }
    let attach = || -> anyhow::Result<PortCounterProgram> {
        let mut program = PortCounterProgram::load()?;
        for interface in &options.interfaces {
            program.attach(interface, options.port_counter_mode)?;
        }
        Ok(program)
    };
    match options.kernel {
        KernelMode::Off => {
            info!("kernel path off (--kernel off): serving in userspace only");
            Ok(None)
        }
        KernelMode::On => {
            let program = attach().context("--kernel on: setting up the eBPF program")?;
            info!(interfaces = ?options.interfaces, mode = %options.port_counter_mode, "xdp_port_counter attached");
            Ok(Some(program))
        }
        KernelMode::Auto => match attach() {
            Ok(program) => {
                info!(interfaces = ?options.interfaces, mode = %options.port_counter_mode, "xdp_port_counter attached");
                Ok(Some(program))
            }
            Err(error) => {
                warn!("kernel path unavailable, serving in userspace only: {error:#}");
                Ok(None)
            }
        },
    }
}

/// The Kubernetes source's watch state, scraped.
#[derive(Debug)]
struct SourceCollector(Arc<SourceStatus>);

impl Collector for SourceCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
}

/// Exports the kernel counters on each scrape.
#[derive(Debug)]
struct KernelCollector {
    program: Arc<Mutex<Option<PortCounterProgram>>>,
    lb: SharedManager,
}

impl Collector for KernelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let lb_stats = lock(&self.lb).as_ref().map(KernelManager::stats);
        match lb_stats {
            Some(Ok(stats)) => crate::stats::encode_kernel_stats(&mut encoder, &stats)?,
            Some(Err(error)) => warn!("{}", crate::kernel::chain(&error)),
            None => {}
        }
        let guard = self
            .program
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(program) = guard.as_ref() else {
            return Ok(());
        };
        let ports = match program.port_counters() {
            Ok(ports) => ports,
            Err(error) => {
                warn!("{}", crate::kernel::chain(&error));
                Vec::new()
            }
        };
        let reasons = program.pass_reasons().unwrap_or_default();
        drop(guard);
        if !ports.is_empty() {
            let mut family = encoder.encode_descriptor(
                "ingressd_kernel_port_packets",
                "Packets seen by the XDP program, by destination port",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for p in &ports {
                let labels = [("port", p.port.to_string())];
                ConstCounter::new(p.packets).encode(family.encode_family(&labels)?)?;
            }
            let mut family = encoder.encode_descriptor(
                "ingressd_kernel_port_bytes",
                "Bytes seen by the XDP program, by destination port",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for p in &ports {
                let labels = [("port", p.port.to_string())];
                ConstCounter::new(p.bytes).encode(family.encode_family(&labels)?)?;
            }
        }
        let nonzero: Vec<_> = reasons.iter().filter(|(_, n)| *n != 0).collect();
        if !nonzero.is_empty() {
            let mut family = encoder.encode_descriptor(
                "ingressd_kernel_pass",
                "Packets the XDP program passed, by reason",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (reason, count) in nonzero {
                let labels = [("reason", reason.label())];
                ConstCounter::new(*count).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Watches `dir` recursively; every change that is not a read sends one
/// (debounced, ~200 ms) signal on `reload`.
fn watch_config(
    dir: &Path,
    reload: mpsc::Sender<()>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    use notify::event::{AccessKind, AccessMode};
    use notify::{EventKind, RecursiveMode, Watcher as _};

    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            // Opening or reading a file (the pipeline does both) is no change.
            Ok(event) => match event.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                    let _ = raw_tx.send(());
                }
                EventKind::Access(_) => {}
                _ => {
                    let _ = raw_tx.send(());
                }
            },
            Err(error) => warn!("config watch error: {error}"),
        }
    })
    .context("creating the config watcher")?;
    watcher
        .watch(dir, RecursiveMode::Recursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    tokio::spawn(async move {
        while raw_rx.recv().await.is_some() {
            // Let a burst of events (an editor's save, `mv`, a ConfigMap's
            // symlink swap) settle before rebuilding once.
            loop {
                match tokio::time::timeout(Duration::from_millis(200), raw_rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if reload.send(()).await.is_err() {
                return;
            }
        }
    });
    Ok(watcher)
}

/// What a bound listener is; a change means rebinding.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ListenerKey {
    name: String,
    address: IpAddr,
    port: u16,
    /// The nodePort to bind in userspace.
    node_port: Option<u16>,
    /// The nodePort the kernel steers or forwards instead.
    kernel_node_port: Option<u16>,
    /// `HTTP`, `TCP` or `TLS`: how connections are served.
    protocol: &'static str,
}

struct ListenerTask {
    key: ListenerKey,
    addresses: Vec<SocketAddr>,
    /// The listener-port socket, for `STEER_SOCKETS`; valid while the task runs.
    fd: RawFd,
    stop: watch::Sender<bool>,
    task: JoinHandle<Drain>,
}

/// In-flight connections of a listener that stopped accepting.
struct Drain {
    graceful: GracefulShutdown,
    tcp: Arc<ConnTracker>,
}

impl Drain {
    async fn wait(self) {
        self.graceful.shutdown().await;
        self.tcp.idle().await;
    }
}

/// Counts live TCP-proxy connections so a drain can wait for them.
#[derive(Debug, Default)]
struct ConnTracker {
    active: AtomicUsize,
    idle: Notify,
}

struct ConnGuard(Arc<ConnTracker>);

impl ConnTracker {
    fn enter(self: &Arc<Self>) -> ConnGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ConnGuard(self.clone())
    }

    async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.active.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The set of bound listeners, kept equal to the snapshot's.
struct Listeners {
    ctx: Arc<Context>,
    drain_timeout: Duration,
    /// Bind ports of listeners whose nodePort the kernel steers or
    /// forwards: not bound in userspace.
    kernel_takes: BTreeSet<u16>,
    tasks: BTreeMap<u16, ListenerTask>,
    draining: Vec<JoinHandle<()>>,
}

impl Listeners {
    fn new(ctx: Arc<Context>, drain_timeout: Duration) -> Self {
        Self {
            ctx,
            drain_timeout,
            kernel_takes: BTreeSet::new(),
            tasks: BTreeMap::new(),
            draining: Vec::new(),
        }
    }

    /// The listener-port socket of every bound listener, by bind port.
    fn fds(&self) -> BTreeMap<u16, RawFd> {
        self.tasks.iter().map(|(port, t)| (*port, t.fd)).collect()
    }

    fn info(&self) -> Vec<ListenerInfo> {
        self.tasks
            .values()
            .map(|t| ListenerInfo {
                name: t.key.name.clone(),
                addresses: t.addresses.clone(),
            })
            .collect()
    }

    /// Binds listeners new in `snapshot`, stops the ones it no longer has
    /// (their connections drain in the background). On the first apply a
    /// bind failure is an error; later ones are logged and skipped.
    async fn apply(&mut self, snapshot: &Snapshot, initial: bool) -> anyhow::Result<()> {
        let wanted: BTreeMap<u16, ListenerKey> = snapshot
            .listeners
            .iter()
            .map(|l| {
                let node_port = l.node_port.filter(|&n| n != l.port);
                let kernel = self.kernel_takes.contains(&l.port);
                (
                    l.port,
                    ListenerKey {
                        name: l.name.clone(),
                        address: l.address,
                        port: l.port,
                        node_port: node_port.filter(|_| !kernel),
                        kernel_node_port: node_port.filter(|_| kernel),
                        protocol: l.kind.protocol(),
                    },
                )
            })
            .collect();
        let stale: Vec<u16> = self
            .tasks
            .iter()
            .filter(|(port, task)| wanted.get(port) != Some(&task.key))
            .map(|(port, _)| *port)
            .collect();
        for port in stale {
            if let Some(task) = self.tasks.remove(&port) {
                info!(listener = %task.key.name, "stopping listener");
                if let Some(drain) = stop(task).await {
                    let timeout = self.drain_timeout;
                    self.draining.push(tokio::spawn(async move {
                        let _ = tokio::time::timeout(timeout, drain.wait()).await;
                    }));
                }
            }
        }
        self.draining.retain(|h| !h.is_finished());
        for (port, key) in wanted {
            if self.tasks.contains_key(&port) {
                continue;
            }
            match self.start(key.clone()).await {
                Ok(task) => {
                    self.tasks.insert(port, task);
                }
                Err(error) if initial => return Err(error),
                Err(error) => error!(listener = %key.name, "{error:#}"),
            }
        }
        Ok(())
    }

    async fn start(&self, key: ListenerKey) -> anyhow::Result<ListenerTask> {
        let primary = bind(key.address, key.port)
            .with_context(|| format!("binding listener {}", key.name))?;
        let fd = primary.as_raw_fd();
        let mut sockets = vec![primary];
        // A nodePort is served on every address of the node.
        if let Some(node_port) = key.node_port {
            match bind(IpAddr::V4(Ipv4Addr::UNSPECIFIED), node_port) {
                Ok(socket) => sockets.push(socket),
                Err(error) => warn!(
                    listener = %key.name,
                    node_port,
                    "nodePort not served: {error:#}"
                ),
            }
        }
        let addresses: Vec<SocketAddr> =
            sockets.iter().filter_map(|s| s.local_addr().ok()).collect();
        let protocol = key.protocol;
        match (key.node_port, key.kernel_node_port) {
            (Some(node_port), _) if addresses.len() > 1 => info!(
                listener = %key.name,
                "serving {protocol} on {} and nodePort {node_port} (the kernel does not take this nodePort)",
                addresses[0]
            ),
            (_, Some(node_port)) => info!(
                listener = %key.name,
                "serving {protocol} on {}; nodePort {node_port} is {} in the kernel",
                addresses[0],
                if key.protocol == "TCP" { "forwarded (tc)" } else { "steered to this socket (sk_lookup)" }
            ),
            _ => info!(listener = %key.name, "serving {protocol} on {}", addresses[0]),
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let stats = Arc::new(ListenerStats::new(
            &self.ctx.metrics.envoy,
            &key.name,
            key.protocol,
        ));
        let task = tokio::spawn(accept_loop(
            self.ctx.clone(),
            sockets,
            key.port,
            key.protocol,
            stats,
            stop_rx,
        ));
        Ok(ListenerTask {
            key,
            addresses,
            fd,
            stop: stop_tx,
            task,
        })
    }

    /// Stops accepting everywhere and waits (bounded) for in-flight work.
    /// `true` when everything finished in time.
    async fn shutdown(&mut self) -> bool {
        let mut drains = Vec::new();
        for (_, task) in std::mem::take(&mut self.tasks) {
            if let Some(drain) = stop(task).await {
                drains.push(drain);
            }
        }
        let draining = std::mem::take(&mut self.draining);
        let all = async move {
            for drain in drains {
                drain.wait().await;
            }
            for handle in draining {
                let _ = handle.await;
            }
        };
        tokio::time::timeout(self.drain_timeout, all).await.is_ok()
    }
}

/// Closes a listener's sockets; returns its in-flight connections.
async fn stop(task: ListenerTask) -> Option<Drain> {
    let _ = task.stop.send(true);
    match task.task.await {
        Ok(drain) => Some(drain),
        Err(error) => {
            error!("listener task failed: {error}");
            None
        }
    }
}

fn bind(ip: IpAddr, port: u16) -> anyhow::Result<TcpListener> {
    let address = SocketAddr::from((ip, port));
    let socket = if ip.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .context("creating a socket")?;
    socket.set_reuseaddr(true).context("SO_REUSEADDR")?;
    socket
        .bind(address)
        .with_context(|| format!("binding {address}"))?;
    socket
        .listen(1024)
        .with_context(|| format!("listening on {address}"))
}

async fn accept_any(sockets: &[TcpListener]) -> std::io::Result<(TcpStream, SocketAddr)> {
    match sockets {
        [one] => one.accept().await,
        [first, second, ..] => tokio::select! {
            accepted = first.accept() => accepted,
            accepted = second.accept() => accepted,
        },
        [] => std::future::pending().await,
    }
}

async fn accept_loop(
    ctx: Arc<Context>,
    sockets: Vec<TcpListener>,
    listener_port: u16,
    protocol: &'static str,
    stats: Arc<ListenerStats>,
    mut stop: watch::Receiver<bool>,
) -> Drain {
    let graceful = GracefulShutdown::new();
    let tcp = Arc::new(ConnTracker::default());
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            accepted = accept_any(&sockets) => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let local = match stream.local_addr() {
            Ok(local) => local,
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        let conn = ConnInfo::new(listener_port, local, remote);
        stats.downstream_cx_total.fetch_add(1, Ordering::Relaxed);
        stats.downstream_cx_active.fetch_add(1, Ordering::Relaxed);
        let ctx = ctx.clone();
        let stats = stats.clone();
        // HTTP and HTTPS connections drain through hyper's watcher and the
        // stop signal (`proxy::h1`).
        let drain = || proxy::Graceful {
            watcher: graceful.watcher(),
            stop: stop.clone(),
        };
        if protocol == "HTTP" {
            let drain = drain();
            tokio::spawn(async move {
                proxy::h1::serve_connection(ctx, conn, stats.clone(), stream, drain).await;
                stats.downstream_cx_active.fetch_sub(1, Ordering::Relaxed);
            });
        } else if protocol == "TLS" {
            // Passthrough and TLS-terminated TCP connections count for the
            // drain; HTTPS connections are watched by `graceful`.
            let guard = tcp.enter();
            let drain = drain();
            tokio::spawn(async move {
                proxy::tls::serve(ctx, conn, stream, stats.clone(), drain).await;
                stats.downstream_cx_active.fetch_sub(1, Ordering::Relaxed);
                drop(guard);
            });
        } else {
            let guard = tcp.enter();
            tokio::spawn(async move {
                proxy::tcp::serve(ctx, conn, stream).await;
                stats.downstream_cx_active.fetch_sub(1, Ordering::Relaxed);
                drop(guard);
            });
        }
    }
    drop(sockets);
    Drain { graceful, tcp }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    use crate::proxy::access_log::AccessLogFormat;
    use crate::snapshot::{
        Cluster, Discovery, Endpoint, ForwardAction, Listener, ListenerKind, Route, RouteAction,
        RouteConfig, RouteMatch, UpstreamProtocol, VirtualHost, VirtualHostIndex, WeightedCluster,
    };

    /// A backend that answers `name path host xff xfp` for every request.
    async fn backend(name: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let h = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_owned()
                        };
                        let body = format!(
                            "{name} {} {} {} {} {}",
                            req.uri(),
                            h("host"),
                            h("x-forwarded-for"),
                            h("x-forwarded-proto"),
                            h("connection"),
                        );
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from(body),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        address
    }

    fn cluster(name: &str, endpoints: &[SocketAddr]) -> Arc<Cluster> {
        Arc::new(Cluster {
            name: name.to_owned(),
            host: "counter.default.svc.cluster.local".into(),
            port: 80,
            subset: String::new(),
            discovery: Discovery::Service {
                namespace: "default".into(),
                name: "counter".into(),
            },
            endpoints: endpoints
                .iter()
                .map(|&address| Endpoint {
                    address,
                    serving: true,
                    target: None,
                })
                .collect(),
            protocol: UpstreamProtocol::Http1,
            connect_timeout: Duration::from_secs(1),
            policy: crate::snapshot::policy::ClusterPolicy {
                lb: crate::snapshot::policy::LbPolicy::RoundRobin,
                ..Default::default()
            },
        })
    }

    fn snapshot(endpoints: &[SocketAddr]) -> Snapshot {
        let forward = |cluster: &str| Route {
            name: format!("to-{cluster}"),
            matcher: RouteMatch::default(),
            action: RouteAction::Forward(ForwardAction {
                clusters: vec![WeightedCluster {
                    name: cluster.to_owned(),
                    weight: 100,
                    headers: None,
                }],
                timeout: None,
                prefix_rewrite: None,
                regex_rewrite: None,
                host_rewrite: None,
                retry: crate::snapshot::RetryPolicy::none(),
                mirrors: Vec::new(),
            }),
            policy: Default::default(),
            origin: None,
        };
        let vhosts = vec![
            VirtualHost {
                name: "counter.example.com:80".into(),
                domains: vec!["counter.example.com".into()],
                routes: vec![forward("outbound|80||counter.default.svc.cluster.local")],
                require_tls: false,
            },
            VirtualHost {
                name: "empty.example.com:80".into(),
                domains: vec!["empty.example.com".into()],
                routes: vec![forward("outbound|80||empty.default.svc.cluster.local")],
                require_tls: false,
            },
            VirtualHost {
                name: "secure.example.com:80".into(),
                domains: vec!["secure.example.com".into()],
                routes: Vec::new(),
                require_tls: true,
            },
        ];
        let index = VirtualHostIndex::build(&vhosts);
        let clusters = [
            cluster("outbound|80||counter.default.svc.cluster.local", endpoints),
            cluster("outbound|80||empty.default.svc.cluster.local", &[]),
        ];
        Snapshot {
            gateway: GatewayIdentity::default(),
            listeners: vec![Listener {
                name: "0.0.0.0_8080".into(),
                address: Ipv4Addr::UNSPECIFIED.into(),
                port: 8080,
                service_port: 80,
                node_port: None,
                servers: Vec::new(),
                kind: ListenerKind::Http(RouteConfig {
                    name: "http.8080".into(),
                    virtual_hosts: vhosts,
                    index,
                }),
            }],
            clusters: clusters
                .into_iter()
                .map(|c| (c.name.clone(), c))
                .collect::<BTreeMap<_, _>>(),
            diagnostics: Default::default(),
        }
    }

    async fn get(
        client: &Client<HttpConnector, Full<Bytes>>,
        proxy: SocketAddr,
        host: &str,
        path: &str,
    ) -> (u16, String, http::HeaderMap) {
        let request = http::Request::builder()
            .uri(format!("http://{proxy}{path}"))
            .header("host", host)
            .header("connection", "keep-alive, x-drop")
            .header("x-drop", "1")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client.request(request).await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned(), headers)
    }

    /// An HTTP listener on a loopback port serving [`snapshot`] with
    /// `endpoints`: its context, metrics, address, stop signal and task.
    async fn http_listener(
        endpoints: &[SocketAddr],
    ) -> (
        Arc<Context>,
        Arc<Metrics>,
        SocketAddr,
        watch::Sender<bool>,
        JoinHandle<Drain>,
    ) {
        let metrics = Arc::new(Metrics::new(
            SourceIdentity::from_gateway(&GatewayIdentity::default()),
            Vec::new(),
        ));
        let ctx = Arc::new(Context::new(
            Arc::new(snapshot(endpoints)),
            metrics.clone(),
            AccessLog {
                format: AccessLogFormat::Off,
            },
        ));
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = socket.local_addr().unwrap();
        let stats = Arc::new(ListenerStats::new(&metrics.envoy, "0.0.0.0_8080", "HTTP"));
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(
            ctx.clone(),
            vec![socket],
            8080,
            "HTTP",
            stats,
            stop_rx,
        ));
        (ctx, metrics, proxy, stop_tx, task)
    }

    #[tokio::test]
    async fn http_listener_routes_forwards_and_drains() {
        let a = backend("a").await;
        let b = backend("b").await;
        let (ctx, metrics, proxy, stop_tx, task) = http_listener(&[a, b]).await;
        let client = Client::builder(TokioExecutor::new()).build_http();

        let (status, first, headers) =
            get(&client, proxy, "counter.example.com:80", "/x?q=1").await;
        assert_eq!(status, 200, "{first}");
        assert!(headers.contains_key("x-envoy-upstream-service-time"));
        let (_, second, _) = get(&client, proxy, "COUNTER.example.com", "/y").await;
        let mut names = [&first[..1], &second[..1]];
        names.sort();
        assert_eq!(names, ["a", "b"], "round robin: {first} / {second}");
        let fields: Vec<&str> = first.split(' ').collect();
        assert_eq!(fields[1], "/x?q=1");
        assert_eq!(fields[2], "counter.example.com:80", "Host kept");
        assert_eq!(fields[3], "127.0.0.1", "x-forwarded-for");
        assert_eq!(fields[4], "http", "x-forwarded-proto");
        assert!(!first.contains("x-drop"));

        let (status, body, _) = get(&client, proxy, "other.example.com", "/").await;
        assert_eq!((status, body.as_str()), (404, "route not found"));
        let (status, body, _) = get(&client, proxy, "empty.example.com", "/").await;
        assert_eq!((status, body.as_str()), (503, "no healthy upstream"));
        let (status, _, headers) = get(&client, proxy, "secure.example.com:8080", "/p?q").await;
        assert_eq!(status, 301);
        assert_eq!(headers["location"], "https://secure.example.com/p?q");

        // A swap changes the next request, not the listener.
        ctx.snapshot.store(Arc::new(snapshot(&[b])));
        for _ in 0..3 {
            let (_, body, _) = get(&client, proxy, "counter.example.com", "/").await;
            assert!(body.starts_with('b'), "{body}");
        }

        let text = metrics.prometheus_text().unwrap();
        assert!(text.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("response_code=\"404\"")
            && l.contains("response_flags=\"NR\"")));
        assert!(text.lines().any(|l| l.contains("response_flags=\"UH\"")));

        stop_tx.send(true).unwrap();
        let drain = task.await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), drain.wait())
            .await
            .expect("idle keep-alive connections close on drain");
        assert!(TcpStream::connect(proxy).await.is_err(), "listener closed");
    }

    /// Writes `bytes` on `stream` and reads what comes back until the
    /// connection closes or stays quiet for 300 ms; true when it closed.
    async fn converse(stream: &mut TcpStream, bytes: &[u8]) -> (String, bool) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(bytes).await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&seen).into(), true),
                Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
                Err(_) => return (String::from_utf8_lossy(&seen).into(), false),
            }
        }
    }

    #[tokio::test]
    async fn http1_keep_alive_pipelining_and_hand_off_to_hyper() {
        let a = backend("a").await;
        let (_, _, proxy, stop_tx, task) = http_listener(&[a]).await;
        let host = "host: counter.example.com\r\n";

        // Two pipelined requests in one write: two answers, in order, and
        // the connection stays open.
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        let two = format!("GET /one HTTP/1.1\r\n{host}\r\nGET /two HTTP/1.1\r\n{host}\r\n");
        let (text, closed) = converse(&mut stream, two.as_bytes()).await;
        assert!(!closed, "{text}");
        assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text}");
        let (one, two) = (text.find("a /one ").unwrap(), text.find("a /two ").unwrap());
        assert!(one < two, "{text}");
        assert!(text.contains("\r\ndate: "), "{text}");
        assert!(text.contains("\r\ncontent-length: "), "{text}");
        // HEAD: the length of the body, not the body.
        let head = format!("HEAD /h HTTP/1.1\r\n{host}\r\n");
        let (text, closed) = converse(&mut stream, head.as_bytes()).await;
        assert!(!closed && text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(
            text.contains("content-length: ") && text.ends_with("\r\n\r\n"),
            "{text}"
        );
        // A request with a body goes to hyper, which keeps serving the
        // connection, with the same routing.
        let post = format!(
            "POST /p HTTP/1.1\r\n{host}content-length: 3\r\n\r\nabcGET /after HTTP/1.1\r\n{host}\r\n"
        );
        let (text, closed) = converse(&mut stream, post.as_bytes()).await;
        assert!(!closed, "{text}");
        assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text}");
        assert!(
            text.contains("a /p ") && text.contains("a /after "),
            "{text}"
        );
        // `Connection: close` is honoured.
        let close = format!("GET /c HTTP/1.1\r\n{host}connection: close\r\n\r\n");
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        let (text, closed) = converse(&mut stream, close.as_bytes()).await;
        assert!(
            closed && text.contains("\r\nconnection: close\r\n"),
            "{text}"
        );
        // HTTP/1.0: closed unless asked to keep alive.
        let old = format!("GET /o HTTP/1.0\r\n{host}\r\n");
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        let (text, closed) = converse(&mut stream, old.as_bytes()).await;
        assert!(closed && text.contains("a /o "), "{text}");
        let kept = format!("GET /k HTTP/1.0\r\n{host}connection: keep-alive\r\n\r\n");
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        let (text, closed) = converse(&mut stream, kept.as_bytes()).await;
        assert!(
            !closed && text.contains("\r\nconnection: keep-alive\r\n"),
            "{text}"
        );
        // Not HTTP/1.x: hyper answers 400 and closes.
        let mut garbage = TcpStream::connect(proxy).await.unwrap();
        let (text, closed) = converse(&mut garbage, b"\x16\x03\x01 not http\r\n\r\n").await;
        assert!(closed && text.starts_with("HTTP/1.1 400"), "{text}");

        // A drain closes the idle kept-alive connection.
        stop_tx.send(true).unwrap();
        let drain = task.await.unwrap();
        let (_, closed) = converse(&mut stream, b"").await;
        assert!(closed);
        tokio::time::timeout(Duration::from_secs(5), drain.wait())
            .await
            .expect("drained");
    }
}

//! Root test of the kernel stage's map writing: pins every `LB_*`/`STEER_*`
//! map in a test-specific directory on bpffs, writes the plan of a real
//! config (the `tcp-routes` golden case), reads every map back, applies a
//! changed config and checks the make-before-break result (inactive table
//! written, frontends flipped, old backend gone), adopts the pins with a new
//! manager without changing anything, reaps conntrack, and cleans up.
//!
//! The maps are created standalone (the same types and sizes as the
//! object's), so the test needs no program and no network.
//!
//! Needs root. Without it the test fails, unless `INGRESSD_SKIP_ROOT_TESTS=1`,
//! which turns it into a loud skip.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use ingress_common::ABI_VERSION;
use ingress_common::lb::{FLOW_REPLY, FLOW_RST, FlowKey, FlowState, MAGLEV_SIZE, PROTO_TCP};
use ingress_userspace::kernel::manager::{self, KernelManager};
use ingress_userspace::kernel::maps::LbMaps;
use ingress_userspace::kernel_plan::{FrontendAddr, KernelPlan, KernelState, Op};
use ingress_userspace::pipeline::{self, Options};
use ingress_userspace::snapshot::Snapshot;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Removes the pin directory when dropped, also when the test panics.
struct PinRoot(PathBuf);

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = manager::cleanup(&self.0);
    }
}

fn snapshot_of(dir: &Path) -> Snapshot {
    let outcome = pipeline::build_from_dir(dir, &Options::default());
    assert!(
        !outcome.diagnostics.has_errors(),
        "{:?}",
        outcome.diagnostics
    );
    outcome.snapshot.expect("a snapshot")
}

fn golden(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(case)
}

/// Reads every map the plan covers back and compares.
fn assert_maps_hold(maps: &LbMaps, plan: &KernelPlan) {
    let state = maps.read_state().expect("reading the maps");
    for service in &plan.services {
        let mut live = None;
        for frontend in &service.frontends {
            let value = state
                .frontends
                .get(frontend)
                .unwrap_or_else(|| panic!("frontend {frontend} missing"));
            assert_eq!(value.service_id, service.id, "{frontend}");
            live.get_or_insert(value.table);
            assert_eq!(Some(value.table), live, "both frontends on one table");
        }
        let table = maps
            .read_table(service.id, live.expect("a frontend"))
            .expect("reading LB_MAGLEV");
        assert_eq!(table, service.table, "live table of {}", service.listener);
    }
    let frontends: usize = plan.services.iter().map(|s| s.frontends.len()).sum();
    assert_eq!(state.frontends.len(), frontends, "no stale frontends");
    let planned: Vec<(u32, SocketAddrV4)> = plan
        .backends
        .iter()
        .map(|(id, b)| (*id, b.address))
        .collect();
    let held: Vec<(u32, SocketAddrV4)> = state.backends.into_iter().collect();
    assert_eq!(held, planned, "LB_BACKENDS");
    let steering: Vec<(u16, u32)> = plan
        .steering
        .iter()
        .map(|s| (s.node_port, s.slot))
        .collect();
    assert_eq!(
        state.steering.into_iter().collect::<Vec<_>>(),
        steering,
        "STEER_PORTS"
    );
    let config = maps.config().expect("LB_CONFIG").expect("written");
    assert_eq!(config.abi_version, ABI_VERSION);
}

/// Field by field, so a failure does not print two 1021-slot tables.
fn assert_same_state(got: &KernelState, want: &KernelState) {
    assert_eq!(got.frontends, want.frontends, "frontends");
    assert_eq!(got.backends, want.backends, "backends");
    assert_eq!(got.steering, want.steering, "steering");
    let keys = |s: &KernelState| s.tables.keys().copied().collect::<Vec<_>>();
    assert_eq!(keys(got), keys(want), "live tables");
    for (key, table) in &got.tables {
        let differ = table
            .iter()
            .zip(&want.tables[key])
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(differ, 0, "slots of table {key:?} differ");
    }
}

fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime writes into a timespec we own.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts
    };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn be(a: [u8; 4]) -> u32 {
    u32::from(Ipv4Addr::from(a)).to_be()
}

#[test]
fn plan_written_read_back_changed_adopted_and_cleaned_up() {
    if !is_root() {
        if std::env::var("INGRESSD_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
            eprintln!("\n*** SKIPPED kernel_maps: not root (INGRESSD_SKIP_ROOT_TESTS=1) ***\n");
            return;
        }
        panic!(
            "kernel_maps needs root (bpffs pins, BPF maps); run as root or set INGRESSD_SKIP_ROOT_TESTS=1 to skip"
        );
    }
    let root = PinRoot(PathBuf::from(format!(
        "/sys/fs/bpf/ingressd-test-maps-{}",
        std::process::id()
    )));
    manager::ensure_bpffs(&root.0).expect("bpffs");
    std::fs::create_dir_all(&root.0).expect("creating the pin root");

    // 1. Write the plan of the tcp-routes case and read every map back.
    let snapshot = snapshot_of(&golden("tcp-routes"));
    let maps = LbMaps::create_pinned(&root.0).expect("creating the maps");
    let mut kernel = KernelManager::with_maps(root.0.clone(), maps, false).expect("manager");
    let first = kernel.plan_for(&snapshot);
    assert_eq!(first.services.len(), 2, "{first:#?}");
    let mysql = first
        .service_for_port(30306)
        .expect("mysql forwarded")
        .clone();
    assert_eq!(mysql.backends.len(), 2, "primary 80, replica 20");
    let ops = kernel.apply(&first).expect("writing the plan");
    assert!(!ops.is_empty());
    assert_maps_hold(kernel.maps(), &first);
    assert_same_state(&kernel.maps().read_state().expect("state"), kernel.state());
    let slots_of = |plan: &KernelPlan, address: &str| {
        let service = plan.service_for_port(30306).expect("mysql");
        let id = service
            .backends
            .iter()
            .find(|b| b.address.to_string() == address)
            .map(|b| b.id);
        service.table.iter().filter(|&&s| Some(s) == id).count()
    };
    let primary = slots_of(&first, "198.18.1.20:3306") as f64 / f64::from(MAGLEV_SIZE);
    assert!((primary - 0.8).abs() < 0.02, "primary share {primary}");

    // 2. The replica pod moves to another address: new backend first, the
    //    inactive table, the flip, then the old backend goes.
    let changed = std::env::temp_dir().join(format!("ingressd-kernel-maps-{}", std::process::id()));
    std::fs::create_dir_all(&changed).expect("temp dir");
    let yaml = std::fs::read_to_string(golden("tcp-routes").join("config.yaml")).expect("config");
    std::fs::write(
        changed.join("config.yaml"),
        yaml.replace("198.18.1.21", "198.18.1.25"),
    )
    .expect("writing the changed config");
    let snapshot2 = snapshot_of(&changed);
    let _ = std::fs::remove_dir_all(&changed);
    let second = kernel.plan_for(&snapshot2);
    let ops = kernel.apply(&second).expect("writing the changed plan");
    let stage = |op: &Op| match op {
        Op::SetBackend { .. } => 0,
        Op::WriteTable { .. } => 1,
        Op::SetFrontend { .. } | Op::SetSteer { .. } => 2,
        Op::DeleteFrontend { .. } | Op::DeleteSteer { .. } => 3,
        Op::DeleteBackend { .. } => 4,
    };
    let stages: Vec<u8> = ops.iter().map(stage).collect();
    assert!(stages.is_sorted(), "make-before-break order: {ops:?}");
    assert!(stages.contains(&1) && stages.contains(&4), "{ops:?}");
    assert_maps_hold(kernel.maps(), &second);
    let state = kernel.maps().read_state().expect("state");
    let node_port = FrontendAddr {
        addr: Ipv4Addr::UNSPECIFIED,
        port: 30306,
    };
    assert_eq!(state.frontends[&node_port].table, 1, "flipped to table 1");
    assert_eq!(state.frontends[&node_port].service_id, mysql.id, "same id");
    assert!(
        !state
            .backends
            .values()
            .any(|a| a.to_string() == "198.18.1.21:3306"),
        "old backend freed"
    );
    // The old table is still intact until the next change overwrites it.
    assert_eq!(
        kernel.maps().read_table(mysql.id, 0).expect("table 0"),
        mysql.table
    );

    // 3. Conntrack: a reset flow (and its reply entry) is reaped, a live one stays.
    let client = FlowKey {
        saddr_be: be([198, 18, 0, 2]),
        daddr_be: be([198, 18, 0, 1]),
        sport_be: 40_000u16.to_be(),
        dport_be: 30_306u16.to_be(),
        proto: PROTO_TCP,
        _pad: [0; 3],
    };
    let now = monotonic_ns();
    let original = FlowState {
        new_saddr_be: be([198, 18, 1, 1]),
        new_daddr_be: be([198, 18, 1, 20]),
        new_sport_be: 61_000u16.to_be(),
        new_dport_be: 3306u16.to_be(),
        service_id: mysql.id,
        backend_id: 1,
        flags: FLOW_RST,
        last_seen_ns: now,
    };
    let reply_key = FlowKey {
        saddr_be: original.new_daddr_be,
        daddr_be: original.new_saddr_be,
        sport_be: original.new_dport_be,
        dport_be: original.new_sport_be,
        proto: PROTO_TCP,
        _pad: [0; 3],
    };
    let reply = FlowState {
        new_saddr_be: client.daddr_be,
        new_daddr_be: client.saddr_be,
        new_sport_be: client.dport_be,
        new_dport_be: client.sport_be,
        flags: FLOW_REPLY,
        ..original
    };
    let live_key = FlowKey {
        sport_be: 40_001u16.to_be(),
        ..client
    };
    let live = FlowState {
        flags: 0,
        new_sport_be: 61_001u16.to_be(),
        ..original
    };
    let maps = kernel.maps_mut();
    maps.insert_flow(client, original).expect("flow");
    maps.insert_flow(reply_key, reply).expect("reply flow");
    maps.insert_flow(live_key, live).expect("live flow");
    assert_eq!(maps.conntrack_len().expect("count"), 3);
    let reaped = kernel
        .reap(std::time::Duration::from_secs(3600))
        .expect("reaping");
    assert_eq!((reaped.scanned, reaped.removed), (3, 2), "{reaped:?}");
    assert_eq!(kernel.maps().conntrack_len().expect("count"), 1);

    // 4. Adoption: a new manager on the pins changes nothing.
    let before = kernel.maps().read_state().expect("state");
    let tables_before = (
        kernel.maps().read_table(mysql.id, 0).expect("t0"),
        kernel.maps().read_table(mysql.id, 1).expect("t1"),
    );
    drop(kernel);
    let maps = LbMaps::from_pins(&root.0).expect("opening the pins");
    let mut adopted = KernelManager::with_maps(root.0.clone(), maps, true).expect("adopting");
    assert_same_state(adopted.state(), &before);
    let again = adopted.plan_for(&snapshot2);
    assert_eq!(again.ids(), second.ids(), "ids survive the restart");
    let ops = adopted.apply(&again).expect("reconciling");
    assert!(ops.is_empty(), "nothing to change: {ops:?}");
    assert_same_state(&adopted.maps().read_state().expect("state"), &before);
    assert_eq!(
        (
            adopted.maps().read_table(mysql.id, 0).expect("t0"),
            adopted.maps().read_table(mysql.id, 1).expect("t1"),
        ),
        tables_before
    );
    assert_eq!(
        adopted.maps().conntrack_len().expect("count"),
        1,
        "flows kept"
    );
    let dump = adopted.dump();
    assert_eq!(dump["@type"], "ingressd.KernelDump");
    assert_eq!(dump["conntrack_entries"], 1);
    drop(adopted);

    // 5. Cleanup removes every pin and the directory.
    let removed = manager::cleanup(&root.0).expect("cleanup");
    for name in ["LB_FRONTENDS", "LB_MAGLEV", "LB_CONNTRACK", "STEER_SOCKETS"] {
        assert!(
            removed.iter().any(|r| r.ends_with(name)),
            "{name} in {removed:?}"
        );
    }
    assert!(!root.0.exists(), "pin root gone");
}

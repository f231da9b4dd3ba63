//! Graceful shutdown: SIGTERM while a slow request is in flight.

use std::time::{Duration, Instant};

use ingressd_tests::config::COUNTER_HOST;
use ingressd_tests::{Ns, STATUS_ADDR, SeedGateway, node_url, require_root};

#[test]
fn sigterm_drains_an_in_flight_request_and_exits_0() {
    if !require_root("sigterm_drains_an_in_flight_request_and_exits_0") {
        return;
    }
    let gw = SeedGateway::start(&["--drain-timeout", "10s"]).unwrap();
    let slow = "/slow?ms=2500";
    std::thread::scope(|s| {
        let request = s.spawn(|| gw.topo.get(&node_url(8080, slow), COUNTER_HOST).unwrap());

        // Wait until a backend has the request, so it is really in flight.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !gw.counters.iter().any(|c| c.stdout().contains(slow)) {
            assert!(
                Instant::now() < deadline,
                "the slow request never reached a backend"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let signalled = Instant::now();
        gw.daemon.signal(libc::SIGTERM).unwrap();

        // While draining, readiness reports 503.
        let mut saw_503 = false;
        while signalled.elapsed() < Duration::from_secs(2) && !saw_503 {
            if let Ok(r) = gw.topo.http_get(Ns::Node, STATUS_ADDR, "/healthz/ready") {
                saw_503 = r.status == 503;
            }
            std::thread::sleep(Duration::from_millis(20));
        }

        let r = request.join().unwrap().ok().unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json().unwrap()["app"], "counter");
        assert!(
            saw_503,
            "/healthz/ready never answered 503 during the drain"
        );

        let status = gw
            .daemon
            .wait_timeout(Duration::from_secs(15))
            .unwrap()
            .expect("ingressd still runs 15 s after SIGTERM");
        assert_eq!(status.code(), Some(0), "exit status {status}");
        eprintln!("ingressd exited {:?} after SIGTERM", signalled.elapsed());
    });
}

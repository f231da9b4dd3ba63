//! The namespace harness on its own (no ingressd): topology, backends, curl, TCP.

use std::path::Path;
use std::time::Duration;

use ingressd_tests::fixture::{COUNTER_A, TCP_ECHO};
use ingressd_tests::tcp::{payload, send_and_half_close};
use ingressd_tests::{Ns, Topology, require_root, sock};

#[test]
fn topology_routes_client_to_pods_and_cleans_up() {
    if !require_root("topology_routes_client_to_pods_and_cleans_up") {
        return;
    }
    let topo = Topology::builder()
        .pod_addrs([COUNTER_A, TCP_ECHO])
        .build()
        .unwrap();
    let names: Vec<String> = [Ns::Client, Ns::Node, Ns::Pods]
        .iter()
        .map(|ns| topo.name(*ns).to_owned())
        .collect();
    let counter = topo
        .start_counter(sock(COUNTER_A, 8080), "counter-a")
        .unwrap();

    // Client -> node (forwarding) -> pods, no proxy involved.
    for n in 1..=2 {
        let r = topo
            .get("http://198.18.1.10:8080/hello?x=1", "direct.example.com")
            .unwrap()
            .ok()
            .unwrap();
        assert_eq!(r.status, 200);
        let json = r.json().unwrap();
        assert_eq!(json["instance"], "counter-a");
        assert_eq!(json["count"], n);
        assert_eq!(json["path"], "/hello?x=1");
        assert_eq!(json["host"], "direct.example.com");
        assert_eq!(json["headers"]["host"], "direct.example.com");
        assert!(json["peer"].as_str().unwrap().starts_with("198.18.0.2:"));
    }

    // Nothing listens on the node: refused, not a timeout.
    let refused = topo.get("http://198.18.0.1:8081/", "x").unwrap();
    assert_eq!(refused.exit_code, Some(7), "{refused:?}");

    // The slow path and the status override.
    let r = topo
        .get("http://198.18.1.10:8080/slow?ms=200&status=418", "x")
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(r.status, 418);

    // Many URLs from one curl process: rate-limited, over one keep-alive connection.
    let requests: Vec<(String, String)> = (0..20)
        .map(|i| {
            (
                format!("http://198.18.1.10:8080/many/{i}"),
                "many.example.com".to_owned(),
            )
        })
        .collect();
    let started = std::time::Instant::now();
    let (codes, stderr) = topo
        .curl_many(Ns::Client, &requests, 50, Duration::from_secs(30))
        .unwrap();
    assert_eq!(codes, vec![200; 20], "{stderr}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "--rate ignored"
    );
    let log = counter.stdout();
    let peers: std::collections::HashSet<&str> = log
        .lines()
        .filter(|l| l.contains("/many/"))
        .filter_map(|l| l.rsplit(' ').next())
        .collect();
    assert_eq!(peers.len(), 1, "not one keep-alive connection: {log}");

    drop(counter);
    drop(topo);
    for name in names {
        assert!(
            !Path::new("/run/netns").join(&name).exists(),
            "{name} left behind"
        );
    }
}

#[test]
fn tcp_echo_half_close_directly() {
    if !require_root("tcp_echo_half_close_directly") {
        return;
    }
    let topo = Topology::builder().pod_addrs([TCP_ECHO]).build().unwrap();
    let _echo = topo
        .start_tcp_echo(sock(TCP_ECHO, 3306), "tcp-echo")
        .unwrap();
    let data = payload(256 * 1024);
    let stream = topo
        .connect(Ns::Client, sock(TCP_ECHO, 3306), Duration::from_secs(5))
        .unwrap();
    let got = send_and_half_close(stream, data.clone(), Duration::from_secs(10), 1 << 20).unwrap();
    let trailer = format!("bye from tcp-echo after {} bytes\n", data.len());
    assert_eq!(got.len(), data.len() + trailer.len());
    assert!(got[..data.len()] == data[..], "echoed bytes differ");
    assert_eq!(&got[data.len()..], trailer.as_bytes());
}

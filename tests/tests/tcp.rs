//! The seed's TCP server (port 3306): bytes through the proxy, half-close included.

use std::time::Duration;

use ingressd_tests::tcp::{payload, send_and_half_close};
use ingressd_tests::{Ns, SeedGateway, node, require_root};

#[test]
fn tcp_route_proxies_bytes_and_half_close() {
    if !require_root("tcp_route_proxies_bytes_and_half_close") {
        return;
    }
    let gw = SeedGateway::start(&[]).unwrap();
    for (port, len) in [(3306, 512 * 1024), (30306, 16 * 1024), (3306, 0)] {
        let data = payload(len);
        let stream = gw
            .topo
            .connect(Ns::Client, node(port), Duration::from_secs(5))
            .unwrap();
        let got = send_and_half_close(stream, data.clone(), Duration::from_secs(10), 4 << 20)
            .unwrap_or_else(|e| panic!("port {port}, {len} bytes: {e:#}"));
        // The echo server answers on the still-open direction after our FIN reached it.
        let trailer = format!("bye from tcp-echo after {len} bytes\n");
        assert_eq!(got.len(), len + trailer.len(), "port {port}");
        assert!(got[..len] == data[..], "port {port}: echoed bytes differ");
        assert_eq!(&got[len..], trailer.as_bytes(), "port {port}");
    }

    // Several connections at once.
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let gw = &gw;
                s.spawn(move || {
                    let data = payload(64 * 1024 + i);
                    let stream = gw
                        .topo
                        .connect(Ns::Client, node(3306), Duration::from_secs(5))
                        .unwrap();
                    let got =
                        send_and_half_close(stream, data.clone(), Duration::from_secs(10), 1 << 20)
                            .unwrap();
                    assert!(got.starts_with(&data), "connection {i}");
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}

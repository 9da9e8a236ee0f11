//! The forwarders in both directions over the real fabric (an in-process broker plays the
//! enclave's monitor).

mod common;

use cloister_proxy::allowlist::{AllowEntry, Allowlist};
use cloister_proxy::vsock_io::VsockAddr;
use cloister_proxy::{ProxyConfig, RelayOptions, TcpToVsock, VsockProxy, VsockToTcp};
use common::{echo_server, pattern, round_trip, shutdown_pair, Fabric};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_host_tcp_to_enclave_vsock_to_enclave_tcp() {
    let fabric = Fabric::start(30);
    // Inside the enclave: an application on loopback, reached from vsock port 5000.
    let app = echo_server("127.0.0.1", b"").await;
    let inner = VsockToTcp::bind(Some(fabric.enclave()), 5000, app, RelayOptions::default())
        .await
        .unwrap();
    let (stop_inner, inner_shutdown) = shutdown_pair();
    let inner_task = tokio::spawn(inner.run(inner_shutdown));
    // On the host: a TCP port that carries connections into the enclave's vsock port 5000.
    let outer = TcpToVsock::bind(
        "127.0.0.1:0".parse().unwrap(),
        VsockAddr::new(fabric.cid, 5000),
        RelayOptions::default(),
    )
    .await
    .unwrap()
    .with_transport(fabric.host());
    let entry = outer.local_addr().unwrap();
    let (stop_outer, outer_shutdown) = shutdown_pair();
    let outer_task = tokio::spawn(outer.run(outer_shutdown));

    let mut clients = tokio::task::JoinSet::new();
    for i in 0..20u64 {
        clients.spawn(async move {
            let data = pattern(i, 200_000 + usize::try_from(i).unwrap());
            let s = tokio::net::TcpStream::connect(entry).await.unwrap();
            round_trip(s, &data).await == data
        });
    }
    while let Some(ok) = clients.join_next().await {
        assert!(ok.unwrap(), "bytes differ");
    }
    stop_outer.send(()).unwrap();
    stop_inner.send(()).unwrap();
    let o = outer_task.await.unwrap().unwrap();
    let i = inner_task.await.unwrap().unwrap();
    assert_eq!((o.accepted, i.accepted), (20, 20));
    assert_eq!(o.bytes_up, i.bytes_up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_enclave_tcp_to_parent_vsock_proxy() {
    let fabric = Fabric::start(31);
    let server = echo_server("127.0.0.1", b"").await;
    // On the host: vsock-proxy on port 8000 to the allowlisted server.
    let mut cfg = ProxyConfig::new(
        8000,
        "127.0.0.1",
        server.port(),
        Allowlist {
            allowlist: vec![AllowEntry {
                address: "127.0.0.1".into(),
                port: server.port(),
            }],
        },
    );
    cfg.transport = Some(fabric.host());
    let (stop_proxy, proxy_shutdown) = shutdown_pair();
    let proxy_task = tokio::spawn(VsockProxy::new(cfg).run(proxy_shutdown));
    for _ in 0..500 {
        if fabric.fabric_dir().join("3_8000.sock").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Inside the enclave: loopback TCP that reaches (3, 8000).
    let fwd = TcpToVsock::bind(
        "127.0.0.1:0".parse().unwrap(),
        VsockAddr::new(3, 8000),
        RelayOptions::default(),
    )
    .await
    .unwrap()
    .with_transport(fabric.enclave());
    let entry = fwd.local_addr().unwrap();
    let (stop_fwd, fwd_shutdown) = shutdown_pair();
    let fwd_task = tokio::spawn(fwd.run(fwd_shutdown));

    let data = pattern(7, 1 << 20);
    let s = tokio::net::TcpStream::connect(entry).await.unwrap();
    assert!(round_trip(s, &data).await == data);

    // Nothing listens on (3, 8001): the forwarder closes the client's connection.
    let dead = TcpToVsock::bind(
        "127.0.0.1:0".parse().unwrap(),
        VsockAddr::new(3, 8001),
        RelayOptions::default(),
    )
    .await
    .unwrap()
    .with_transport(fabric.enclave());
    let dead_entry = dead.local_addr().unwrap();
    let dead_stats = dead.stats();
    let (stop_dead, dead_shutdown) = shutdown_pair();
    let dead_task = tokio::spawn(dead.run(dead_shutdown));
    let s = tokio::net::TcpStream::connect(dead_entry).await.unwrap();
    assert!(round_trip(s, b"hello").await.is_empty());
    assert_eq!(dead_stats.summary().connect_failed, 1);

    for stop in [stop_fwd, stop_proxy, stop_dead] {
        stop.send(()).unwrap();
    }
    fwd_task.await.unwrap().unwrap();
    proxy_task.await.unwrap().unwrap();
    dead_task.await.unwrap().unwrap();
}

//! vsock-proxy end to end over the real fabric: an in-process broker plays the enclave's
//! monitor, clients connect from the enclave side to (3, port), the proxy listens on the host
//! side and carries connections to local TCP echo servers.

mod common;

use cloister_proxy::allowlist::{AllowEntry, Allowlist, AllowlistError};
use cloister_proxy::vsock_io::{self, VsockAddr};
use cloister_proxy::{ProxyConfig, ProxyError, RelayOptions, StaticResolver, VsockProxy};
use common::{echo_server, pattern, round_trip, shutdown_pair, Fabric};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn allow(entries: &[(&str, u16)]) -> Allowlist {
    Allowlist {
        allowlist: entries
            .iter()
            .map(|(a, p)| AllowEntry {
                address: (*a).to_owned(),
                port: *p,
            })
            .collect(),
    }
}

fn config(
    fabric: &Fabric,
    port: u32,
    host: &str,
    remote_port: u16,
    list: Allowlist,
) -> ProxyConfig {
    let mut c = ProxyConfig::new(port, host, remote_port, list);
    c.transport = Some(fabric.host());
    c.relay.drain_timeout = Duration::from_secs(2);
    c
}

async fn wait_for_socket(fabric: &Fabric, port: u32) {
    let path = fabric.fabric_dir().join(format!("3_{port}.sock"));
    for _ in 0..500 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("proxy did not bind {path:?}");
}

async fn enclave_connect(fabric: &Fabric, port: u32) -> vsock_io::AsyncVsockStream {
    vsock_io::connect(Some(fabric.enclave()), VsockAddr::new(3, port))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carries_bytes_to_an_allowed_destination_and_shuts_down() {
    let fabric = Fabric::start(16);
    let echo = echo_server("127.0.0.1", b"").await;
    let cfg = config(
        &fabric,
        8000,
        "127.0.0.1",
        echo.port(),
        allow(&[("127.0.0.1", echo.port())]),
    );
    let proxy = VsockProxy::new(cfg);
    let stats = proxy.stats();
    let (stop, shutdown) = shutdown_pair();
    let task = tokio::spawn(proxy.run(shutdown));
    wait_for_socket(&fabric, 8000).await;

    // A large transfer, every byte checked, with a half-close at the end.
    let data = pattern(1, 3 * 1024 * 1024 + 17);
    let got = round_trip(enclave_connect(&fabric, 8000).await, &data).await;
    assert!(got == data, "echoed bytes differ");

    // An idle connection stays open across shutdown until the drain deadline closes it.
    let mut idle = enclave_connect(&fabric, 8000).await;
    idle.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    idle.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");

    stop.send(()).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("proxy did not stop")
        .unwrap()
        .unwrap();
    assert_eq!(summary.accepted, 2);
    assert_eq!(summary.aborted, 1);
    // Byte counters cover finished connections.
    assert_eq!(summary.bytes_up, data.len() as u64);
    assert_eq!(stats.summary().bytes_down, data.len() as u64);
    assert!(
        !fabric.fabric_dir().join("3_8000.sock").exists(),
        "socket not removed"
    );
    // The aborted connection is closed: the client sees EOF (or a reset).
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest).await;
    assert!(rest.is_empty());
}

#[tokio::test]
async fn refuses_to_start_for_a_destination_off_the_allowlist() {
    let fabric = Fabric::start(17);
    let echo = echo_server("127.0.0.1", b"").await;
    let cases = [
        allow(&[]),
        allow(&[("127.0.0.1", echo.port().wrapping_add(1))]),
        allow(&[("127.0.0.2", echo.port())]),
    ];
    for list in cases {
        let cfg = config(&fabric, 8001, "127.0.0.1", echo.port(), list);
        let err = VsockProxy::new(cfg)
            .run(std::future::pending())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ProxyError::Allowlist(AllowlistError::NotAllowed { .. })
            ),
            "{err:?}"
        );
        assert!(!fabric.fabric_dir().join("3_8001.sock").exists());
    }
    // An unresolvable name is refused too.
    let cfg = config(
        &fabric,
        8001,
        "no-such-host.invalid",
        443,
        allow(&[("no-such-host.invalid", 443)]),
    );
    let err = VsockProxy::with_resolver(cfg, Arc::new(StaticResolver::new()))
        .run(std::future::pending())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProxyError::Allowlist(AllowlistError::Resolve { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn localhost_by_name_matches_an_address_entry() {
    // "localhost" resolves without /etc/hosts edits; the entry names the address.
    let fabric = Fabric::start(18);
    let echo = echo_server("127.0.0.1", b"").await;
    let mut cfg = config(
        &fabric,
        8002,
        "localhost",
        echo.port(),
        allow(&[("127.0.0.1", echo.port())]),
    );
    cfg.ip_type = cloister_proxy::IpAddrType::V4Only;
    let proxy = VsockProxy::new(cfg);
    let allowed = proxy.check().await.unwrap();
    assert_eq!(allowed.resolution.ip, IpAddr::from([127, 0, 0, 1]));
    let (stop, shutdown) = shutdown_pair();
    let task = tokio::spawn(proxy.run(shutdown));
    wait_for_socket(&fabric, 8002).await;
    let got = round_trip(enclave_connect(&fabric, 8002).await, b"hello").await;
    assert_eq!(got, b"hello");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

async fn tag_of(fabric: &Fabric, port: u32) -> Vec<u8> {
    let s = enclave_connect(fabric, port).await;
    round_trip(s, b"").await
}

#[tokio::test]
async fn follows_dns_changes_when_the_ttl_runs_out() {
    let fabric = Fabric::start(19);
    let a = echo_server("127.0.0.1", b"A").await;
    // Same port on another loopback address, so only the resolved address differs.
    let b_listener = tokio::net::TcpListener::bind(("127.0.0.2", a.port())).await;
    let Ok(b_listener) = b_listener else {
        panic!("cannot bind 127.0.0.2:{}", a.port());
    };
    tokio::spawn(async move {
        while let Ok((mut s, _)) = b_listener.accept().await {
            let _ = s.write_all(b"B").await;
        }
    });
    let resolver = StaticResolver::new();
    resolver.set(
        "svc.test",
        &[IpAddr::from([127, 0, 0, 1])],
        Duration::from_millis(700),
    );
    let cfg = config(
        &fabric,
        8003,
        "svc.test",
        a.port(),
        allow(&[("svc.test", a.port())]),
    );
    let (stop, shutdown) = shutdown_pair();
    let task =
        tokio::spawn(VsockProxy::with_resolver(cfg, Arc::new(resolver.clone())).run(shutdown));
    wait_for_socket(&fabric, 8003).await;

    assert_eq!(tag_of(&fabric, 8003).await, b"A");
    resolver.set(
        "svc.test",
        &[IpAddr::from([127, 0, 0, 2])],
        Duration::from_secs(60),
    );
    // Until the old answer's TTL runs out, the old address is used.
    assert_eq!(tag_of(&fabric, 8003).await, b"A");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(tag_of(&fabric, 8003).await, b"B");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_address_match_is_checked_again_after_a_dns_change() {
    let fabric = Fabric::start(20);
    let echo = echo_server("127.0.0.1", b"").await;
    let resolver = StaticResolver::new();
    resolver.set(
        "allowed.test",
        &[IpAddr::from([127, 0, 0, 1])],
        Duration::from_secs(60),
    );
    resolver.set(
        "alias.test",
        &[IpAddr::from([127, 0, 0, 1])],
        Duration::ZERO,
    );
    let cfg = config(
        &fabric,
        8004,
        "alias.test",
        echo.port(),
        allow(&[("allowed.test", echo.port())]),
    );
    let proxy = VsockProxy::with_resolver(cfg, Arc::new(resolver.clone()));
    let stats = proxy.stats();
    let (stop, shutdown) = shutdown_pair();
    let task = tokio::spawn(proxy.run(shutdown));
    wait_for_socket(&fabric, 8004).await;
    assert_eq!(
        round_trip(enclave_connect(&fabric, 8004).await, b"x").await,
        b"x"
    );
    // alias.test now points elsewhere: the proxy must not follow it.
    resolver.set(
        "alias.test",
        &[IpAddr::from([127, 0, 0, 3])],
        Duration::ZERO,
    );
    assert_eq!(
        round_trip(enclave_connect(&fabric, 8004).await, b"x").await,
        b""
    );
    assert_eq!(stats.summary().connect_failed, 1);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_connections_keep_every_byte() {
    cloister_proxy::raise_fd_limit().unwrap();
    let fabric = Fabric::start(21);
    let echo = echo_server("127.0.0.1", b"").await;
    let mut cfg = config(
        &fabric,
        8005,
        "127.0.0.1",
        echo.port(),
        allow(&[("127.0.0.1", echo.port())]),
    );
    cfg.relay = RelayOptions {
        drain_timeout: Duration::from_secs(2),
        ..RelayOptions::default()
    };
    let proxy = VsockProxy::new(cfg);
    let (stop, shutdown) = shutdown_pair();
    let task = tokio::spawn(proxy.run(shutdown));
    wait_for_socket(&fabric, 8005).await;

    const N: usize = 1000;
    // Open all connections first, so they really are open at the same time.
    let mut streams = Vec::with_capacity(N);
    for _ in 0..N {
        streams.push(enclave_connect(&fabric, 8005).await);
    }
    let mut clients = tokio::task::JoinSet::new();
    for (i, s) in streams.into_iter().enumerate() {
        clients.spawn(async move {
            let data = pattern(i as u64 + 100, 8 * 1024 + i);
            let got = round_trip(s, &data).await;
            got == data
        });
    }
    let mut ok = 0;
    while let Some(r) = clients.join_next().await {
        if r.unwrap() {
            ok += 1;
        }
    }
    assert_eq!(ok, N);
    stop.send(()).unwrap();
    let summary = task.await.unwrap().unwrap();
    assert_eq!(summary.accepted, N as u64);
    assert_eq!(summary.connect_failed, 0);
}

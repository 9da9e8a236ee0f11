//! The tokio flavour: async listeners and streams on both sides of a real broker.
#![cfg(feature = "tokio")]

mod common;

use cloister_vsock::tokio::{VsockListener, VsockStream};
use cloister_vsock::{Transport, VsockAddr, VsockError, PARENT_CID};
use common::Fixture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn async_both_directions() {
    let fx = Fixture::new(60);
    let fabric = Transport::Fabric(fx.fabric());
    let enclave = Transport::Enclave(fx.enclave_socket().to_path_buf());

    // Enclave listens, parent connects.
    let listener = VsockListener::bind_with(enclave.clone(), 5000)
        .await
        .unwrap();
    let server = tokio::spawn(async move {
        let (mut s, peer) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 1 << 20];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(&buf).await.unwrap();
        s.shutdown().await.unwrap();
        peer
    });
    let mut c = VsockStream::connect_with(fabric.clone(), VsockAddr::new(60, 5000))
        .await
        .unwrap();
    let data: Vec<u8> = (0..1u32 << 20).map(|i| i.to_le_bytes()[0]).collect();
    c.write_all(&data).await.unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, data);
    assert_eq!(server.await.unwrap(), c.local_addr());

    // Parent listens, enclave connects.
    let listener = VsockListener::bind_with(fabric, 6000).await.unwrap();
    assert_eq!(listener.local_addr(), VsockAddr::new(PARENT_CID, 6000));
    let server = tokio::spawn(async move {
        let (mut s, peer) = listener.accept().await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(b"pong!").await.unwrap();
        (peer, buf)
    });
    let mut c = VsockStream::connect_with(enclave.clone(), VsockAddr::new(PARENT_CID, 6000))
        .await
        .unwrap();
    c.write_all(b"ping!").await.unwrap();
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong!");
    let (peer, got) = server.await.unwrap();
    assert_eq!(&got, b"ping!");
    assert_eq!(peer, VsockAddr::new(60, c.local_addr().port));

    let err = VsockStream::connect_with(enclave, VsockAddr::new(61, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, VsockError::NotPermitted { .. }));
}

#[tokio::test]
async fn async_listener_serves_concurrent_clients() {
    let fx = Fixture::new(62);
    let listener = VsockListener::bind_with(Transport::Enclave(fx.enclave_socket().into()), 7000)
        .await
        .unwrap();
    let server = tokio::spawn(async move {
        for _ in 0..16 {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await.unwrap();
                s.write_all(&[b[0] + 1]).await.unwrap();
            });
        }
    });
    let mut tasks = Vec::new();
    for i in 0..16u8 {
        let dir = fx.fabric();
        tasks.push(tokio::spawn(async move {
            let mut c = VsockStream::connect_fabric(dir, VsockAddr::new(62, 7000))
                .await
                .unwrap();
            c.write_all(&[i]).await.unwrap();
            let mut b = [0u8; 1];
            c.read_exact(&mut b).await.unwrap();
            assert_eq!(b[0], i + 1);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    server.await.unwrap();
}

//! Fuzzes the SDK's KMS client response reader (`kms_client::read_response`, hyper's HTTP/1.1
//! client within the SDK's caps): the status line, headers, Content-Length, chunked and
//! read-to-EOF bodies a key service (or anything on the path to it) sends back. The first byte
//! sets the pipe's capacity, so the response arrives in pieces of that size and partial reads
//! inside the headers, chunk sizes and bodies are covered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
});

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(first % 64) + 1;
    let response = rest.to_vec();
    let len = response.len();
    RUNTIME.block_on(async move {
        let (client, mut server) = tokio::io::duplex(step);
        // The key service's side: answers with the bytes, then keeps reading the request.
        let peer = tokio::spawn(async move {
            let (mut rx, mut tx) = tokio::io::split(&mut server);
            let answer = async {
                let _ = tx.write_all(&response).await;
                let _ = tx.shutdown().await;
            };
            let drain = async {
                let mut sink = [0u8; 4096];
                while rx.read(&mut sink).await.is_ok_and(|n| n > 0) {}
            };
            tokio::join!(answer, drain);
        });
        let read = cloister_sdk::kms_client::read_response(client);
        match tokio::time::timeout(Duration::from_secs(10), read).await {
            Ok(Ok((status, body))) => {
                assert!((100..600).contains(&status));
                assert!(body.len() <= len);
            }
            Ok(Err(_)) => {}
            Err(_) => panic!("the reader waited after the response ended"),
        }
        peer.abort();
    });
});

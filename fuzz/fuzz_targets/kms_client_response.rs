//! Fuzzes the SDK's KMS client response reader (`kms_client::read_response`): the HTTP/1.1
//! status line, headers, Content-Length, chunked and read-to-EOF bodies a key service (or
//! anything on the path to it) sends back. The first byte picks how the bytes are split across
//! reads, so partial reads inside the headers, chunk sizes and bodies are covered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, ReadBuf};

/// Hands out `data` at most `step` bytes per read; always ready.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.step.min(self.data.len()).min(buf.remaining());
        let (head, tail) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = tail;
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(first % 64) + 1;
    let mut stream = Trickle { data: rest, step };
    let mut fut = std::pin::pin!(cloister_sdk::kms_client::read_response(&mut stream));
    let mut cx = Context::from_waker(Waker::noop());
    // The reader never waits on this stream, so the future completes on the first poll.
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Ok((status, body))) => {
            assert!((100..600).contains(&status));
            assert!(body.len() <= rest.len());
        }
        Poll::Ready(Err(_)) => {}
        Poll::Pending => panic!("read_response waited on an always-ready stream"),
    }
});

//! One socket write per burst of HTTP/2 frames on the agent client.
//!
//! The HTTP/2 client under tonic sends a request's HEADERS frame from the
//! connection task and its DATA frame from a second task that waits for
//! send capacity, so every agent call went out as two writes (two TCP
//! segments; the agent woke for the headers alone, then again for the
//! message). [`CoalescedWrites`] holds what is written until the flush,
//! and lets a flush pass the runtime once before it writes: frames queued
//! meanwhile by the connection's other tasks go out in the same write.
//! Reads pass through untouched.
//!
//! A caller that gets Pending from a flush must flush again when woken, as
//! the AsyncWrite contract asks: h2 does on every poll of its connection,
//! and so does tokio-rustls's handshake from 0.26.3 on (earlier releases
//! dropped an unfinished flush; Cargo.lock has 0.26.6). Bytes still held
//! when the stream is dropped without a flush or shutdown are not sent.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{ready, Context, Poll},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Past this many held bytes a write goes out before more is taken.
const HOLD_LIMIT: usize = 64 * 1024;

/// A stream whose writes are held until a flush, which yields once first.
pub struct CoalescedWrites<S> {
    inner: S,
    held: Vec<u8>,
    /// Of `held`, how much the inner stream took already.
    sent: usize,
    /// The pending flush passed the runtime once already.
    yielded: bool,
}

impl<S> CoalescedWrites<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            held: Vec::new(),
            sent: 0,
            yielded: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncWrite + Unpin> CoalescedWrites<S> {
    /// Writes everything held.
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.held.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Room for more: what is held goes out first when it is a lot.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.held.len() >= HOLD_LIMIT {
            ready!(self.poll_send_held(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CoalescedWrites<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_room(cx))?;
        self.held.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_room(cx))?;
        let mut n = 0;
        for b in bufs {
            self.held.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.sent < self.held.len() && !self.yielded {
            // Let the tasks this poll woke queue their frames first.
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(self.poll_send_held(cx))?;
        self.yielded = false;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_held(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        future::Future,
        sync::{
            atomic::{AtomicUsize, Ordering},
            Arc,
        },
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Counts the writes that reach it.
    #[derive(Default)]
    struct Counting {
        writes: Vec<Vec<u8>>,
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            // Takes at most 5 bytes a write: partial writes are resumed.
            let n = data.len().min(5);
            self.writes.push(data[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn writes_before_a_flush_go_out_together_after_one_yield() {
        let mut s = CoalescedWrites::new(Counting::default());
        s.write_all(b"head").await.unwrap();
        let n = s
            .write_vectored(&[IoSlice::new(b"da"), IoSlice::new(b"ta")])
            .await
            .unwrap();
        assert_eq!(n, 4, "every slice is taken");
        assert!(
            s.get_ref().writes.is_empty(),
            "nothing written before the flush"
        );
        // The first poll of the flush yields and wakes its task once ...
        let wakes = Arc::new(Wakes::default());
        let waker = std::task::Waker::from(wakes.clone());
        let mut flush = std::pin::pin!(s.flush());
        let first = flush.as_mut().poll(&mut Context::from_waker(&waker));
        assert!(first.is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "the task is woken again");
        // ... the next one writes everything, resuming partial writes.
        let second = flush.as_mut().poll(&mut Context::from_waker(&waker));
        assert!(matches!(second, Poll::Ready(Ok(()))));
        let sent: Vec<u8> = s.get_ref().writes.concat();
        assert_eq!(sent, b"headdata");
        assert_eq!(s.get_ref().writes.len(), 2, "5 + 3 bytes");
        // A flush with nothing held does not yield.
        let mut idle = std::pin::pin!(s.flush());
        let now = std::future::poll_fn(|cx| Poll::Ready(idle.as_mut().poll(cx))).await;
        assert!(now.is_ready());
    }

    /// Counts the wake-ups of a task.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_full_hold_is_written_before_more_is_taken() {
        tokio::time::timeout(std::time::Duration::from_secs(10), full_hold())
            .await
            .expect("a full hold is sent, never stuck");
    }

    async fn full_hold() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut s = CoalescedWrites::new(a);
        let big = vec![7u8; HOLD_LIMIT];
        s.write_all(&big).await.unwrap();
        s.write_all(b"x").await.unwrap();
        // The first 64 KiB went out to make room, unflushed.
        let mut got = vec![0u8; HOLD_LIMIT];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got, big);
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"x");
    }
}

//! The socket under tokio-websockets, which also writes the frames a
//! connection sends itself.
//!
//! A room encodes each event once ([`Frame`]); every recipient writes those
//! same bytes, many frames per vectored write, without passing them through
//! its own encoder. tokio-websockets still reads, answers pings and closes:
//! what it writes passes straight through. The two never cut into each
//! other's frames: queued frames go out only when tokio-websockets flushes,
//! that is when it has written whole frames, and a queued frame begun is
//! finished before tokio-websockets writes anything more.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::protocol::Frame;
use crate::util::lock;

/// Frames written in one vectored write, at most (Linux takes 1,024).
const MAX_IOVECS: usize = 512;

/// Frames waiting for the socket, shared by the connection (which queues
/// them) and its [`Wire`] (which writes them).
#[derive(Debug, Clone, Default)]
pub struct SocketQueue(Arc<Mutex<Queue>>);

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Frame>,
    /// Bytes of the first frame already written.
    written: usize,
}

impl SocketQueue {
    /// Holds the queue for frames pushed in a row (one lock for a batch);
    /// they go out at the next flush of the stream.
    pub fn pushing(&self) -> Pushing<'_> {
        Pushing(lock(&self.0))
    }

    /// Drops the queued frames not yet begun: after a protocol error, only
    /// the Close may follow.
    pub fn discard_unsent(&self) {
        let mut queue = lock(&self.0);
        let keep = usize::from(queue.written > 0);
        queue.frames.truncate(keep);
    }
}

/// The queue, held while frames are pushed.
pub struct Pushing<'a>(MutexGuard<'a, Queue>);

impl Pushing<'_> {
    /// Queues a frame.
    pub fn push(&mut self, frame: Frame) {
        self.0.frames.push_back(frame);
    }
}

/// A stream that first yields bytes already read from it (the request head,
/// read before tokio-websockets took over), then reads on; and that writes
/// the [`SocketQueue`] frames whenever it is flushed.
#[derive(Debug)]
pub struct Wire<S> {
    read: BytesMut,
    inner: S,
    socket_queue: SocketQueue,
}

impl<S> Wire<S> {
    /// Wraps `inner`, replaying `read` first.
    pub fn new(read: BytesMut, inner: S) -> Self {
        Self { read, inner, socket_queue: SocketQueue::default() }
    }

    /// Where to queue frames for this stream.
    pub fn socket_queue(&self) -> &SocketQueue {
        &self.socket_queue
    }
}

impl<S: AsyncWrite + Unpin> Wire<S> {
    /// Writes queued frames until none is left, or only the rest of a
    /// frame begun when `whole_only`.
    fn poll_queue(&mut self, cx: &mut Context<'_>, whole_only: bool) -> Poll<io::Result<()>> {
        let mut queue = lock(&self.socket_queue.0);
        loop {
            if queue.frames.is_empty() || (whole_only && queue.written == 0) {
                return Poll::Ready(Ok(()));
            }
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (slot, frame) in slices.iter_mut().zip(&queue.frames) {
                let bytes =
                    if count == 0 { &frame.bytes()[queue.written..] } else { frame.bytes() };
                *slot = IoSlice::new(bytes);
                count += 1;
                if whole_only {
                    break;
                }
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            queue.advance(n);
        }
    }
}

impl Queue {
    fn advance(&mut self, mut n: usize) {
        while let Some(frame) = self.frames.front() {
            let left = frame.bytes().len() - self.written;
            if n < left {
                self.written += n;
                return;
            }
            n -= left;
            self.written = 0;
            self.frames.pop_front();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Wire<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.read.len().min(buf.remaining());
        buf.put_slice(&self.read[..n]);
        self.read.advance(n);
        if self.read.is_empty() {
            // Free the buffer: this stream lives as long as the connection.
            self.read = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Wire<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_queue(cx, true))?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_queue(cx, true))?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_queue(cx, false))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use futures_util::task::noop_waker_ref;
    use tokio::io::AsyncWriteExt;
    use tokio_websockets::{ClientBuilder, Limits};

    // What a client's decoder makes of our frames, at each header size.
    #[tokio::test]
    async fn frames_decode_as_sent() {
        let mut texts: Vec<String> =
            [0, 1, 125, 126, 65_535, 65_536, 70_000].iter().map(|&len| "x".repeat(len)).collect();
        texts.push("ünïcode ✓".into());
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let mut wire = Wire::new(BytesMut::new(), ours);
        for text in &texts {
            wire.socket_queue().pushing().push(Frame::text(text));
            assert_eq!(Frame::text(text).as_text(), Some(text.as_str()));
        }
        wire.socket_queue().pushing().push(Frame::ping());
        wire.flush().await.unwrap();
        let mut client = ClientBuilder::new().limits(Limits::unlimited()).take_over(theirs);
        for text in &texts {
            let message = client.next().await.unwrap().unwrap();
            assert_eq!(message.as_text(), Some(text.as_str()));
        }
        assert!(client.next().await.unwrap().unwrap().is_ping());
    }

    /// Takes `budget` bytes, then is full.
    struct Stingy {
        taken: Vec<u8>,
        budget: usize,
    }

    impl AsyncWrite for Stingy {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.budget);
            if n == 0 {
                return Poll::Pending;
            }
            self.budget -= n;
            self.taken.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    // A queued frame begun is finished before anything else is written, and
    // the rest of the queue waits for the next flush: frames stay whole.
    #[test]
    fn writes_never_cut_into_a_frame() {
        let (a, b) = (Frame::text("first frame"), Frame::text("second"));
        let mut wire = Wire::new(BytesMut::new(), Stingy { taken: Vec::new(), budget: 4 });
        wire.socket_queue().pushing().push(a.clone());
        wire.socket_queue().pushing().push(b.clone());
        let mut cx = Context::from_waker(noop_waker_ref());
        assert!(Pin::new(&mut wire).poll_flush(&mut cx).is_pending());
        assert_eq!(wire.inner.taken, a.bytes()[..4]);

        wire.inner.budget = 1000;
        let written = Pin::new(&mut wire).poll_write(&mut cx, b"PONG");
        assert!(matches!(written, Poll::Ready(Ok(4))));
        let mut expected = a.bytes().to_vec();
        expected.extend_from_slice(b"PONG");
        assert_eq!(wire.inner.taken, expected);

        assert!(Pin::new(&mut wire).poll_flush(&mut cx).is_ready());
        expected.extend_from_slice(b.bytes());
        assert_eq!(wire.inner.taken, expected);
    }

    #[test]
    fn discarding_keeps_a_frame_begun() {
        let frames = [Frame::text("begun"), Frame::text("not begun")];
        let mut wire = Wire::new(BytesMut::new(), Stingy { taken: Vec::new(), budget: 2 });
        for frame in &frames {
            wire.socket_queue().pushing().push(frame.clone());
        }
        let mut cx = Context::from_waker(noop_waker_ref());
        assert!(Pin::new(&mut wire).poll_flush(&mut cx).is_pending());
        wire.socket_queue().discard_unsent();
        wire.inner.budget = 1000;
        assert!(Pin::new(&mut wire).poll_flush(&mut cx).is_ready());
        assert_eq!(wire.inner.taken, frames[0].bytes().to_vec());
    }
}

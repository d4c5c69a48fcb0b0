//! HTTP/2 streams run inside their connection's task, not as a task each.
//!
//! hyper's HTTP/2 server hands every request (an `H2Stream`: our handler, then the answer's
//! body piped to the stream) to the executor it was built with; with `TokioExecutor` that is a
//! `tokio::spawn` per request, and every step of the call is then a hop between that task and
//! the connection's (the request handed over, the answer's head, each body frame). Here the
//! executor of a client connection is [`Streams`]: a set of futures the connection's driver
//! ([`super::drive`]) polls beside the connection itself, in the same task, as nginx serves a
//! connection's streams in one event loop.
//!
//! | step | what happens |
//! |---|---|
//! | a request arrives | its future joins this connection's set (no task is spawned) |
//! | the driver runs | the streams that were woken first (what they send is queued), then the connection (its reads, and one write of what is queued); then the new streams once more |
//! | the connection ends | the streams still in flight run to their end (their log lines are written as before), then the task ends |
//!
//! What differs from a task per stream: the streams of one connection share its task, so on
//! `listen.threads` > 1 they run on one thread at a time (as nginx's do on one worker); a
//! request's work is the same.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, Stream};

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One client connection's HTTP/2 streams (its executor for hyper).
#[derive(Clone, Default)]
pub(super) struct Streams {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    set: Mutex<FuturesUnordered<Task>>,
    /// A stream joined since the driver last looked.
    joined: AtomicBool,
}

impl<F> hyper::rt::Executor<F> for Streams
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        match self.shared.set.try_lock() {
            Ok(set) => {
                set.push(Box::pin(fut));
                self.shared.joined.store(true, Ordering::Relaxed);
            }
            // Asked from inside a stream (never, for what hyper asks of a server): a task.
            Err(_) => {
                tokio::spawn(fut);
            }
        }
    }
}

impl Streams {
    /// Run the streams that were woken. `Ready`: none is left.
    fn poll_streams(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut set = self.shared.set.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match Pin::new(&mut *set).poll_next(cx) {
                Poll::Ready(Some(())) => {}
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Poll the connection `conn` (not once `done`) and this set of its streams: the
    /// streams first, so what they queued goes out in the connection's one write, then once
    /// more after the connection if it took new requests. `Ready` when the connection has
    /// ended and no stream is left; `done` says when the connection has.
    pub(super) fn poll_with<C: Future>(
        &self,
        mut conn: Pin<&mut C>,
        done: &mut bool,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        loop {
            let none_left = self.poll_streams(cx).is_ready();
            if !*done && conn.as_mut().poll(cx).is_ready() {
                *done = true;
            }
            if self.shared.joined.swap(false, Ordering::Relaxed) {
                continue;
            }
            return if *done && none_left {
                Poll::Ready(())
            } else {
                Poll::Pending
            };
        }
    }
}

//! The cap on calls in flight to one CRM instance (`upstream.max_connections`), with a
//! bounded, timed wait queue (`upstream.queue_size`, `upstream.queue_timeout_ms`).
//!
//! A call holds a permit from before its CRM connection is taken or opened until its answer
//! has been read to the end (or cut), on both paths of the hyper engine: so the CRM never has
//! more than `max_connections` calls, nor (the pool reusing a free connection before opening
//! one) more connections busy at once. A call finding every permit taken waits in FIFO order;
//! when `queue_size` calls wait already, or its wait runs past `queue_timeout_ms` (or the
//! call's total timeout), it is refused with 503 `upstream_busy` and `Retry-After` at once,
//! counted as `permgate_upstream_errors_total{kind="busy"}`. Cost per call: one atomic
//! permit when one is free.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One CRM instance's permits and queue.
pub struct Gate {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue_size: usize,
    queue_timeout: Duration,
}

/// A call's place at the CRM: released when dropped.
pub type Permit = OwnedSemaphorePermit;

impl Gate {
    /// `None` when `max_connections` is 0 (no cap: nothing to do per call).
    pub fn new(max_connections: usize, queue_size: usize, queue_timeout: Duration) -> Option<Self> {
        (max_connections > 0).then(|| Gate {
            permits: Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS))),
            waiting: AtomicUsize::new(0),
            queue_size,
            queue_timeout,
        })
    }

    /// A permit now, or after waiting in the queue at most `queue_timeout` (and until
    /// `deadline`, the call's total timeout); `None`: the queue is full or the wait ran out.
    /// The clock is read only when the call has to wait (issue 18: not per call).
    pub async fn enter(&self, deadline: Option<Instant>) -> Option<Permit> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Some(permit);
        }
        // Counted out when the wait ends, also when the call is dropped while waiting (its
        // client went away).
        let place = Waiting::new(&self.waiting);
        if place.ahead >= self.queue_size {
            return None;
        }
        let wait = deadline.map_or(self.queue_timeout, |d| {
            self.queue_timeout
                .min(d.saturating_duration_since(Instant::now()))
        });
        match tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Some(permit),
            _ => None,
        }
    }
}

/// A call counted in a gate's queue while this lives.
struct Waiting<'a> {
    count: &'a AtomicUsize,
    /// Calls waiting before this one came.
    ahead: usize,
}

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        let ahead = count.fetch_add(1, Ordering::AcqRel);
        Waiting { count, ahead }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_and_a_long_wait_are_refused() {
        let Some(gate) = Gate::new(1, 1, Duration::from_millis(50)) else {
            panic!("a cap of 1 is a gate");
        };
        let held = gate.enter(None).await;
        assert!(held.is_some());
        // One waits (and times out); the next finds the queue full at once.
        let (waited, refused) = tokio::join!(gate.enter(None), async {
            tokio::task::yield_now().await;
            let t = std::time::Instant::now();
            (gate.enter(None).await, t.elapsed())
        });
        assert!(waited.is_none());
        assert!(refused.0.is_none());
        assert!(refused.1 < Duration::from_millis(40));
        // A call dropped while it waits leaves the queue.
        let dropped = tokio::time::timeout(Duration::from_millis(10), gate.enter(None));
        assert!(dropped.await.is_err());
        assert_eq!(gate.waiting.load(Ordering::Acquire), 0);
        drop(held);
        assert!(gate.enter(None).await.is_some());
        assert!(Gate::new(0, 10, Duration::from_secs(1)).is_none());
    }
}

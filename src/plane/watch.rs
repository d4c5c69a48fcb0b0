//! A connection's watchdog futures (the idle ticks and the drain), polled only when one of
//! them woke the connection's task.
//!
//! A connection's task is woken for every read and write of its calls; in a `select!` beside
//! the connection, the interval and the drain's watch channel were polled at each of those
//! wake-ups too, only to find nothing (issue 18: ~200 instructions per poll, a few polls per
//! call). Here they are polled with a waker of their own that raises a flag and wakes the task:
//! the task polls them again only when the flag is up (and once at first, to arm them).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};
use std::time::Duration;

/// The flag the watchdog's futures raise, and the task to wake.
struct Flag {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        // Woken outside the lock.
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(task) = task {
            task.wake();
        }
    }
}

/// One connection's watchdog waker.
pub(super) struct Watch {
    flag: Arc<Flag>,
    waker: Waker,
}

impl Watch {
    pub(super) fn new() -> Self {
        let flag = Arc::new(Flag {
            // Up at first: the first poll arms the watchdog's futures.
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        Watch {
            waker: Waker::from(flag.clone()),
            flag,
        }
    }

    /// Called at each poll of the connection's task (`task`: its waker). `Some`: the
    /// watchdog's futures woke it (or were never polled): poll them now with this context
    /// (their wake-ups come back through the flag). `None`: they have nothing new.
    pub(super) fn woken(&self, task: &Waker) -> Option<Context<'_>> {
        {
            // The task to wake, kept current before the flag is read: a wake-up after this
            // point finds it, and one before it left the flag up.
            let mut kept = self.flag.task.lock().unwrap_or_else(|e| e.into_inner());
            if !kept.as_ref().is_some_and(|k| k.will_wake(task)) {
                *kept = Some(task.clone());
            }
        }
        self.flag
            .woken
            .swap(false, Ordering::AcqRel)
            .then(|| Context::from_waker(&self.waker))
    }
}

/// How long a connection has gone without a byte either way, as its idle watchdog's ticks see
/// it (the lane's and hyper's connections alike).
pub(super) struct Quiet {
    seen: u64,
    quiet: Duration,
}

impl Quiet {
    /// From the connection's activity count now.
    pub(super) fn new(seen: u64) -> Self {
        Quiet {
            seen,
            quiet: Duration::ZERO,
        }
    }

    /// At a tick (`tick` after the last): the activity count now; how long it has been quiet.
    pub(super) fn tick(&mut self, now: u64, tick: Duration) -> Duration {
        self.quiet = if now == self.seen {
            self.quiet + tick
        } else {
            Duration::ZERO
        };
        self.seen = now;
        self.quiet
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::Poll;
    use std::time::Duration;

    use super::*;

    /// The ticks are polled at first, then only once their timer fired, and that wakes the
    /// task even when nothing else does.
    #[tokio::test]
    async fn a_timer_wakes_the_task_through_the_flag() {
        let watch = Watch::new();
        let mut ticks = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_millis(30),
            Duration::from_millis(30),
        );
        let mut polled = 0;
        let mut fired = 0;
        let started = std::time::Instant::now();
        let never = std::future::pending::<()>();
        let mut never = pin!(never);
        std::future::poll_fn(|cx| {
            let _ = never.as_mut().poll(cx);
            let Some(mut wcx) = watch.woken(cx.waker()) else {
                return Poll::Pending;
            };
            polled += 1;
            while ticks.poll_tick(&mut wcx).is_ready() {
                fired += 1;
            }
            if fired >= 3 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        assert!(started.elapsed() >= Duration::from_millis(90));
        // Once to arm, then once per tick (a tick or two may come together on a busy machine).
        assert!((2..=4).contains(&polled), "polled {polled} times");
    }

    /// A watch channel's change reaches the task through the flag.
    #[tokio::test]
    async fn a_drain_wakes_the_task_through_the_flag() {
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let watch = Watch::new();
        let changed = rx.changed();
        let mut changed = pin!(changed);
        let task = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tx.send(true);
            tx
        });
        std::future::poll_fn(|cx| match watch.woken(cx.waker()) {
            Some(mut wcx) => changed.as_mut().poll(&mut wcx).map(|_| ()),
            None => Poll::Pending,
        })
        .await;
        let _tx = task.await.expect("sender");
    }
}

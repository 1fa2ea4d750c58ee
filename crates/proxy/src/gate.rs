//! A future that is polled only when its own wake-up has come.
//!
//! A connection's task also carries futures that wait for rare events: the idle watchdog's
//! timer, the gateway's stop signal. Beside the connection in a `select!`, each would be
//! polled at every wake-up of the task, that is twice for every request (the client's bytes
//! in, the upstream's answer in) — a timer and a notification checked for nothing, together
//! about 700 instructions per request (callgrind). [`Gated`] gives its inner future a waker of its own and polls it
//! only once that waker has fired (and on the first poll, which registers it), so such a
//! future costs an atomic swap on a request's way.

use futures_util::task::AtomicWaker;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

/// Whether the inner future's waker fired since its last poll, and the task to wake for it.
struct Gate {
    woken: AtomicBool,
    outer: AtomicWaker,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.outer.wake();
    }
}

/// `inner`, polled only on the first poll and after its own waker fired.
pub(crate) struct Gated<F> {
    inner: F,
    gate: Arc<Gate>,
    waker: Waker,
}

impl<F: Future + Unpin> Gated<F> {
    pub(crate) fn new(inner: F) -> Self {
        let gate = Arc::new(Gate {
            woken: AtomicBool::new(true),
            outer: AtomicWaker::new(),
        });
        Gated {
            inner,
            waker: Waker::from(gate.clone()),
            gate,
        }
    }
}

impl<F: Future + Unpin> Gated<F> {
    /// The inner future's poll, out of line: it is rare, and large where it is a watchdog's
    /// state machine, which would make every poll of the gate pay its prologue.
    #[inline(never)]
    fn poll_inner(&mut self) -> Poll<F::Output> {
        Pin::new(&mut self.inner).poll(&mut Context::from_waker(&self.waker))
    }
}

impl<F: Future + Unpin> Future for Gated<F> {
    type Output = F::Output;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        // Registered before the flag is read: a wake-up between the two finds this task.
        this.gate.outer.register(cx.waker());
        if !this.gate.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.poll_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Counts its polls; ready once `ready` is set, waking whoever polled it last when told.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.ready.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A gated probe, polled by a task whose wake-ups are counted.
    struct Rig {
        gated: Gated<Probe>,
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        inner_waker: Arc<std::sync::Mutex<Option<Waker>>>,
        task_wakes: Arc<Count>,
        task: Waker,
    }

    impl Rig {
        fn new() -> Self {
            let (polls, ready) = (Arc::default(), Arc::default());
            let inner_waker = Arc::default();
            let task_wakes = Arc::new(Count(AtomicUsize::new(0)));
            Rig {
                gated: Gated::new(Probe {
                    polls: Arc::clone(&polls),
                    ready: Arc::clone(&ready),
                    waker: Arc::clone(&inner_waker),
                }),
                polls,
                ready,
                inner_waker,
                task: Waker::from(task_wakes.clone()),
                task_wakes,
            }
        }

        fn poll(&mut self) -> Poll<()> {
            Pin::new(&mut self.gated).poll(&mut Context::from_waker(&self.task))
        }

        /// Makes the probe ready and wakes it through the waker it was last polled with.
        fn fire(&self) {
            self.ready.store(true, Ordering::SeqCst);
            self.inner_waker.lock().unwrap().take().unwrap().wake();
        }

        fn polls(&self) -> usize {
            self.polls.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn polls_inner_only_after_its_own_wake() {
        let mut rig = Rig::new();
        // The first poll reaches the inner future (it must register its waker).
        assert!(rig.poll().is_pending());
        assert_eq!(rig.polls(), 1);
        // Wake-ups of the task that are not the inner future's do not reach it.
        for _ in 0..5 {
            assert!(rig.poll().is_pending());
        }
        assert_eq!(rig.polls(), 1);
        // The inner future's own wake-up wakes the task, and the next poll reaches it —
        // however late it comes (as when the future sat in a disabled select branch).
        rig.fire();
        assert_eq!(rig.task_wakes.0.load(Ordering::SeqCst), 1);
        assert!(rig.poll().is_ready());
        assert_eq!(rig.polls(), 2);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_gated_timer_fires_beside_a_busy_future() {
        // A timer gated beside a future that wakes its task a thousand times: the timer still
        // fires at its deadline, and the select reports it.
        let timer = Gated::new(Box::pin(tokio::time::sleep(Duration::from_secs(5))));
        let busy = async {
            for _ in 0..1000 {
                tokio::task::yield_now().await;
            }
            std::future::pending::<()>().await;
        };
        let started = tokio::time::Instant::now();
        tokio::select! {
            () = timer => {}
            () = busy => unreachable!(),
        }
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}

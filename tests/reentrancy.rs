//! User code that calls back into its own pipeline does not deadlock: a
//! discarded result whose `Drop` reads `stats()` and calls `abort()`, an
//! `on_cancel` hook that aborts from inside an abort, and handlers and
//! `on_shed` hooks that read the books or call `shutdown()`. The books
//! still balance.
//!
//! Each scenario runs on a thread of its own under a real-time limit: a
//! thread blocked on a lock ignores tokio timeouts.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backpressure_pipeline::{FanOutConfig, FanOutExt, ShedPolicy};
use futures::stream;
use tokio::time::sleep;

mod common;
use common::{GUARD, drain, joined, ms, paused_runtime, with_deadlock_guard};

/// A result whose `Drop` calls back into the pipeline.
struct CallsBack(Arc<Mutex<Option<backpressure_pipeline::Controller>>>);

impl Drop for CallsBack {
    fn drop(&mut self) {
        // Cloned out first: the slot's lock is not held across the calls.
        let controller = self.0.lock().unwrap().clone();
        if let Some(controller) = controller {
            let _ = controller.stats();
            controller.abort();
        }
    }
}

/// Results discarded from the buffer (drop of `results`), from a waiting
/// sender and by an abort run user `Drop` code that takes the queue's and
/// the outlet's locks again (`stats()`, `abort()`), and the `on_cancel` hook
/// calls `abort()` from inside an abort: no deadlock, the books balance.
#[test]
fn discarded_results_whose_drop_calls_back_into_the_pipeline_do_not_deadlock() {
    with_deadlock_guard(Duration::from_secs(20), || {
        paused_runtime().block_on(async {
            let slot = Arc::new(Mutex::new(None::<backpressure_pipeline::Controller>));
            let s = Arc::clone(&slot);
            let config = FanOutConfig::new(8, ShedPolicy::Backpressure)
                .capacity(2)
                .output_capacity(2)
                .on_cancel({
                    let s = Arc::clone(&slot);
                    move |_: u32| {
                        let controller = s.lock().unwrap().clone();
                        if let Some(c) = controller {
                            let _ = c.stats();
                            c.abort();
                        }
                    }
                });
            let (results, handle) =
                stream::iter(0..100u32).bounded_fan_out_with(config, move |_| {
                    let s = Arc::clone(&s);
                    async move { CallsBack(s) }
                });
            *slot.lock().unwrap() = Some(handle.controller());
            sleep(ms(1)).await;
            drop(results); // discards 2 buffered + wakes 6 waiting senders
            let report = joined(GUARD, handle).await;
            assert_eq!(report.delivered, 0);
            slot.lock().unwrap().take();
        });
    });
}

/// A handler and an `on_shed` hook that read `stats()` (queue lock) and a
/// handler that calls `shutdown()` of its own pipeline: no deadlock.
#[test]
fn hooks_and_handlers_that_read_the_books_do_not_deadlock() {
    with_deadlock_guard(Duration::from_secs(20), || {
        paused_runtime().block_on(async {
            let slot: Arc<Mutex<Option<backpressure_pipeline::Controller>>> =
                Arc::new(Mutex::new(None));
            let (h, s) = (Arc::clone(&slot), Arc::clone(&slot));
            let config = FanOutConfig::new(2, ShedPolicy::DropOldest)
                .capacity(1)
                .on_shed(move |_: u32| {
                    let controller = s.lock().unwrap().clone();
                    if let Some(c) = controller {
                        let _ = c.stats();
                    }
                });
            let (results, handle) =
                stream::iter(0..200u32).bounded_fan_out_with(config, move |x| {
                    let h = Arc::clone(&h);
                    async move {
                        let controller = h.lock().unwrap().clone();
                        if let Some(c) = controller {
                            let _ = c.stats();
                            if x == 150 {
                                c.shutdown();
                            }
                        }
                        tokio::task::yield_now().await;
                        x
                    }
                });
            *slot.lock().unwrap() = Some(handle.controller());
            let (_, report, _) = drain(results, handle).await;
            assert_eq!(report.produced, report.processed + report.dropped);
            slot.lock().unwrap().take();
        });
    });
}

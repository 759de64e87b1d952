//! `Send`, `Sync` and `Unpin` of every public type, checked at compile
//! time in the style of futures' `tests/auto_traits.rs`: a positive check is
//! a call to a generic function with the trait as a bound; a negative check
//! (needed for soundness: results of a non-`Send` type must not cross
//! threads) uses the ambiguity trick of `static_assertions::assert_not_impl_all!`.
//! If a change adds or removes one of these traits, this file stops
//! compiling.

#![allow(dead_code)]

use std::cell::Cell;
use std::marker::PhantomPinned;
use std::rc::Rc;

use backpressure_pipeline::{
    BoundedFanOut, Controller, FanOutConfig, FanOutExt, IntakeEnd, JoinReport, Report, ShedPolicy,
    ShutdownHandle, Stats,
};
use futures::stream::FusedStream;
use futures::{Stream, StreamExt};

fn assert_send<T: ?Sized + Send>() {}
fn assert_sync<T: ?Sized + Sync>() {}
fn assert_unpin<T: ?Sized + Unpin>() {}

/// Fails to compile if `$ty` implements any of the listed traits.
macro_rules! assert_not_impl {
    ($ty:ty: $($tr:path),+ $(,)?) => {
        const _: fn() = || {
            trait AmbiguousIfImpl<A> {
                fn some_item() {}
            }
            impl<T: ?Sized> AmbiguousIfImpl<()> for T {}
            struct Invalid;
            impl<T: ?Sized $(+ $tr)+> AmbiguousIfImpl<Invalid> for T {}
            let _ = <$ty as AmbiguousIfImpl<_>>::some_item;
        };
    };
}

// ===== BoundedFanOut<T> =====

/// Send and Sync for a `Send` output; Unpin whatever the output.
const _: fn() = || {
    assert_send::<BoundedFanOut<u64>>();
    assert_sync::<BoundedFanOut<u64>>();
    assert_unpin::<BoundedFanOut<u64>>();

    assert_send::<BoundedFanOut<String>>();
    assert_sync::<BoundedFanOut<String>>();

    // `&BoundedFanOut` gives no access to the values, so a `Send + !Sync`
    // output keeps the stream `Sync` (as for tokio's `mpsc::Receiver`).
    assert_send::<BoundedFanOut<Cell<u8>>>();
    assert_sync::<BoundedFanOut<Cell<u8>>>();

    // No pinned state of its own: `results.next()` needs no `pin!`.
    assert_unpin::<BoundedFanOut<PhantomPinned>>();
};

// A non-`Send` output must not make the stream `Send` or `Sync`.
assert_not_impl!(BoundedFanOut<Rc<u8>>: Send);
assert_not_impl!(BoundedFanOut<Rc<u8>>: Sync);

/// The stream traits SPEC names.
const _: fn() = || {
    fn is_stream<S: Stream<Item = u64> + FusedStream + std::fmt::Debug>() {}
    is_stream::<BoundedFanOut<u64>>();
};

// ===== ShutdownHandle and JoinReport =====

const _: fn() = || {
    assert_send::<ShutdownHandle>();
    assert_sync::<ShutdownHandle>();
    assert_unpin::<ShutdownHandle>();

    // `tokio::spawn(handle.join())` must work.
    assert_send::<JoinReport>();
    assert_sync::<JoinReport>();
    assert_unpin::<JoinReport>();

    fn is_join<F: std::future::Future<Output = Report> + std::fmt::Debug + 'static>() {}
    is_join::<JoinReport>();
    // `timeout(d, &mut join)` needs `&mut JoinReport: Future`, i.e. `JoinReport: Unpin`.
    is_join::<&'static mut JoinReport>();

    // A feeder goes to any task or thread, any number of times.
    assert_send::<backpressure_pipeline::Feeder<u64>>();
    assert_sync::<backpressure_pipeline::Feeder<u64>>();
    assert_unpin::<backpressure_pipeline::Feeder<u64>>();
    is_clone_debug::<backpressure_pipeline::Feeder<u64>>();
    assert_send::<backpressure_pipeline::Offer<u64>>();
    assert_sync::<backpressure_pipeline::Offer<u64>>();

    // A controller goes anywhere, any number of times.
    assert_send::<Controller>();
    assert_sync::<Controller>();
    assert_unpin::<Controller>();
    fn is_clone_debug<T: Clone + std::fmt::Debug + 'static>() {}
    is_clone_debug::<Controller>();
};

// ===== Report, Stats, IntakeEnd, ShedPolicy =====

const _: fn() = || {
    assert_send::<Report>();
    assert_sync::<Report>();
    assert_unpin::<Report>();

    assert_send::<Stats>();
    assert_sync::<Stats>();
    assert_unpin::<Stats>();

    assert_send::<IntakeEnd>();
    assert_sync::<IntakeEnd>();
    assert_unpin::<IntakeEnd>();

    assert_send::<ShedPolicy>();
    assert_sync::<ShedPolicy>();
    assert_unpin::<ShedPolicy>();
};

// ===== FanOutConfig<Item> =====

const _: fn() = || {
    assert_send::<FanOutConfig<u64>>();
    assert_sync::<FanOutConfig<u64>>();
    assert_unpin::<FanOutConfig<u64>>();

    assert_send::<FanOutConfig<String>>();
    assert_sync::<FanOutConfig<String>>();
    assert_unpin::<FanOutConfig<String>>();

    // The item type only appears as the `on_shed` hook's argument.
    assert_unpin::<FanOutConfig<PhantomPinned>>();
};

// ===== at run time =====

/// The two halves and the join future really move to other tasks on a
/// multi-thread runtime, and the pipeline's report comes back intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halves_and_join_future_move_across_tasks() {
    let config = FanOutConfig::new(3, ShedPolicy::DropNewest).capacity(16);
    let config = std::thread::spawn(move || config).join().unwrap(); // Send
    let (results, handle) =
        futures::stream::iter(0..16u64).bounded_fan_out_with(config, |x| async move { x * 2 });

    let collector = tokio::spawn(results.collect::<Vec<_>>());
    let joiner = tokio::spawn(handle.join());
    let mut out = collector.await.unwrap();
    let report = joiner.await.unwrap();

    out.sort_unstable();
    assert_eq!(out, (0..16).map(|x| x * 2).collect::<Vec<_>>());
    assert_eq!(
        (
            report.produced,
            report.processed,
            report.dropped,
            report.cancelled
        ),
        (16, 16, 0, 0)
    );
    assert_eq!((report.workers_joined, report.aborted), (3, 0));
    assert_eq!(report.intake, IntakeEnd::Exhausted);

    // The plain-data types cross threads too.
    let moved = std::thread::spawn(move || (report, ShedPolicy::DropOldest))
        .join()
        .unwrap();
    assert_eq!(moved.0.produced, 16);
    assert_eq!(moved.1, ShedPolicy::DropOldest);
}

// ===== the call front =====

/// `Caller` and `Call` are Send, Sync and Unpin for `Send` requests and
/// responses, whatever else they are: a `Call` never pins its request, and
/// an axum handler holds a `Call` across its await.
const _: fn() = || {
    use backpressure_pipeline::{Call, Caller, RejectReason, Rejected};
    assert_send::<Caller<String, Vec<u8>>>();
    assert_sync::<Caller<String, Vec<u8>>>();
    assert_unpin::<Caller<PhantomPinned, PhantomPinned>>();
    assert_send::<Call<String, Vec<u8>>>();
    assert_sync::<Call<String, Vec<u8>>>();
    assert_unpin::<Call<PhantomPinned, PhantomPinned>>();
    // A `Send + !Sync` request (axum's body) keeps the handles `Sync`.
    assert_sync::<Caller<Cell<u8>, Cell<u8>>>();
    assert_send::<Rejected<Cell<u8>>>();
    assert_send::<RejectReason>();
    assert_sync::<RejectReason>();
    assert_unpin::<Rejected<String>>();
};

assert_not_impl!(backpressure_pipeline::Caller<Rc<u8>, u8>: Send);
assert_not_impl!(backpressure_pipeline::Call<Rc<u8>, u8>: Send);

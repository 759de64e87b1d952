//! The `tower` feature: `Caller` as a `Service` (readiness by policy, a held
//! slot given back) and `CallLayer` (one pipeline per wrapped service, its
//! report through `controllers`).
#![cfg(feature = "tower")]

mod common;
#[path = "keyed_fronts/tower.rs"]
mod keyed;

use std::convert::Infallible;
use std::future::poll_fn;
use std::task::{Context, Poll};

use backpressure_pipeline::{CallLayer, FanOutConfig, Rejected, ShedPolicy, caller};
use common::ms;
use tokio::time::sleep;
use tokio_test::{assert_pending, assert_ready, task};
use tower::{Layer, Service};

async fn slow(x: u32) -> u32 {
    sleep(ms(10)).await;
    x
}

#[tokio::test(start_paused = true)]
async fn shedding_services_are_always_ready_and_answer_shed_when_full() {
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest).capacity(1);
    let (mut service, shutdown) = caller(config, slow);
    let mut calls = Vec::new();
    for x in 0..3 {
        assert_ready!(task::spawn(poll_fn(|cx| service.poll_ready(cx))).poll()).unwrap();
        calls.push(tokio::spawn(Service::call(&mut service, x)));
    }
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap().map_err(|r| r.into_request()));
    }
    // Offered before the worker ran: 0 fills the queue of one, 1 and 2
    // find it full.
    assert_eq!(answers, [Ok(0), Err(Some(1)), Err(Some(2))]);
    drop(service);
    let report = shutdown.join().await;
    assert_eq!(
        (report.produced, report.delivered, report.dropped),
        (3, 1, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn under_backpressure_poll_ready_waits_for_room_and_a_held_slot_goes_back_on_drop() {
    let config = FanOutConfig::new(1, ShedPolicy::Backpressure).capacity(1);
    let (mut first, shutdown) = caller(config, slow);
    let mut second = first.clone();
    poll_fn(|cx| first.poll_ready(cx)).await.unwrap();
    let running = tokio::spawn(Service::call(&mut first, 1));
    sleep(ms(1)).await; // 1 runs: the queue's one slot is free again
    poll_fn(|cx| first.poll_ready(cx)).await.unwrap(); // held by `first`
    {
        let mut ready = task::spawn(poll_fn(|cx| second.poll_ready(cx)));
        assert_pending!(ready.poll(), "the slot is held by the other clone");
    }
    drop(first); // never called: its slot goes back
    poll_fn(|cx| second.poll_ready(cx)).await.unwrap();
    assert_eq!(Service::call(&mut second, 2).await.ok(), Some(2));
    assert_eq!(running.await.unwrap().ok(), Some(1));
    drop(second);
    let report = shutdown.join().await;
    assert_eq!((report.produced, report.delivered), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn once_intake_is_over_the_service_is_ready_and_hands_the_request_back() {
    let (mut service, shutdown) = caller(FanOutConfig::new(1, ShedPolicy::Backpressure), slow);
    shutdown.shutdown();
    poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
    assert!(matches!(
        Service::call(&mut service, 5).await,
        Err(Rejected::Closed(5))
    ));
    assert_eq!(shutdown.join().await.produced, 0);
}

/// A service that counts the calls it gets.
#[derive(Clone)]
struct Echo;

impl Service<u32> for Echo {
    type Response = u32;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<u32, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, x: u32) -> Self::Future {
        Box::pin(async move { Ok(slow(x).await) })
    }
}

#[tokio::test(start_paused = true)]
async fn a_layer_starts_one_pipeline_per_wrapped_service_and_reports_through_its_controllers() {
    let layer = CallLayer::new(FanOutConfig::new(2, ShedPolicy::DropNewest).capacity(2));
    let (a, b) = (layer.layer(Echo), layer.clone().layer(Echo));
    assert_eq!(
        layer.controllers().len(),
        2,
        "one per wrapped service, clones included"
    );
    let answers = futures::future::join_all((0..6).map(|x| {
        let mut service = if x % 2 == 0 { a.clone() } else { b.clone() };
        async move { Service::call(&mut service, x).await.map_err(|r| r.reason()) }
    }))
    .await;
    // Each pipeline: 2 queued at once, then full; the rest shed.
    assert_eq!(answers.iter().filter(|a| a.is_ok()).count(), 4);
    drop((a, b));
    for controller in layer.controllers() {
        let report = controller.finished().await;
        assert_eq!(
            (report.produced, report.delivered, report.dropped),
            (3, 2, 1)
        );
        assert!(report.is_conserved(), "{report}");
    }
}

//! A keyed push that comes after the pipeline ended (a `send` or call
//! granted a settlement credit as the stop came, a `Sink` made ready before
//! the join) answers `Closed` with the item, as an unkeyed one does; it
//! panicked on the released key function (a fourth fresh-user trial; its
//! 2-thread stress hit it in 9 of 3,000 rounds).

use std::task::Poll;
use std::time::Duration;

use backpressure_pipeline::{FanOutConfig, Offer, Rejected, ShedPolicy};
use futures::{SinkExt, StreamExt};
use tokio::time::timeout;

type KV = (u32, u32);

fn key(kv: &KV) -> u32 {
    kv.0
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Lets the pipeline's tasks run `n` turns.
async fn yields(n: usize) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

/// A keyed, shedding, settled push front; a `send` waits for a settlement credit, is granted one as a
/// record is read, and runs only after the stop.
async fn send_granted_credit_then_stop(join_first: bool) -> Offer<KV> {
    let (config, mut settlements) = FanOutConfig::new(1, ShedPolicy::DropNewest)
        .key_by(key)
        .settle_capacity(1)
        .settle_by(|kv: &KV| *kv);
    let (feeder, results, shutdown) =
        backpressure_pipeline::feeder(config, |kv: KV| async move { kv });
    assert_eq!(feeder.offer((1, 0)), Offer::Queued);
    let f = feeder.clone();
    let mut send = tokio_test::task::spawn(async move { f.send((2, 0)).await });
    assert!(send.poll().is_pending(), "waits for a credit");
    yields(3).await; // (1,0) processed, its record waits
    let rec = settlements.next().await.unwrap(); // the credit goes to the send
    assert_eq!(rec.key, (1, 0));
    assert!(send.is_woken());
    shutdown.shutdown();
    if join_first {
        drop(feeder);
        let (out, report) = timeout(secs(1), shutdown.join_collect(results))
            .await
            .unwrap();
        assert_eq!(out, [(1, 0)]);
        assert_eq!(report.produced, 1);
        let answer = send.poll();
        match answer {
            Poll::Ready(offer) => offer,
            Poll::Pending => panic!("send still pending"),
        }
    } else {
        let answer = send.poll();
        drop(feeder);
        let (_, report) = timeout(secs(1), shutdown.join_collect(results))
            .await
            .unwrap();
        assert_eq!(report.produced, 1);
        match answer {
            Poll::Ready(offer) => offer,
            Poll::Pending => panic!("send still pending"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_keyed_send_granted_a_credit_as_the_stop_came_answers_closed() {
    assert_eq!(
        send_granted_credit_then_stop(false).await,
        Offer::Closed((2, 0))
    );
}

#[tokio::test(start_paused = true)]
async fn a_keyed_send_granted_a_credit_and_polled_after_the_join_answers_closed() {
    assert_eq!(
        send_granted_credit_then_stop(true).await,
        Offer::Closed((2, 0))
    );
}

/// The same window on the Sink: `poll_ready` answered Ok, then the pipeline
/// stopped and was joined, then `start_send`. No settlement needed.
async fn sink_ready_then_join_then_start_send(keyed: bool, settle: bool) -> (bool, Option<KV>) {
    let mut config = FanOutConfig::new(1, ShedPolicy::DropNewest);
    if keyed {
        config = config.key_by(key);
    }
    let mut settlements = None;
    if settle {
        let (c, s) = config.settle_by(|kv: &KV| *kv);
        config = c;
        settlements = Some(s);
    }
    let (mut feeder, results, shutdown) =
        backpressure_pipeline::feeder(config, |kv: KV| async move { kv });
    let mut ready =
        tokio_test::task::spawn(futures::future::poll_fn(|cx| feeder.poll_ready_unpin(cx)));
    assert!(matches!(ready.poll(), Poll::Ready(Ok(()))));
    drop(ready);
    shutdown.shutdown();
    let (_, report) = timeout(secs(1), shutdown.join_collect(results))
        .await
        .unwrap();
    assert_eq!(report.produced, 0);
    drop(settlements);
    let r = feeder.start_send_unpin((1, 0));
    match r {
        Ok(()) => (false, None),
        Err(e) => (e.is_closed(), e.into_item()),
    }
}

#[tokio::test(start_paused = true)]
async fn an_unkeyed_sink_ready_before_the_join_refuses_start_send_after_it() {
    assert_eq!(
        sink_ready_then_join_then_start_send(false, false).await,
        (true, Some((1, 0)))
    );
}

#[tokio::test(start_paused = true)]
async fn a_keyed_sink_ready_before_the_join_refuses_start_send_after_it() {
    assert_eq!(
        sink_ready_then_join_then_start_send(true, false).await,
        (true, Some((1, 0)))
    );
}

#[tokio::test(start_paused = true)]
async fn a_keyed_settled_sink_ready_before_the_join_refuses_start_send_after_it() {
    assert_eq!(
        sink_ready_then_join_then_start_send(true, true).await,
        (true, Some((1, 0)))
    );
}

/// The call front's version: a keyed, shedding, settled call waits for a
/// credit, is granted one, and is polled again only after the join.
#[tokio::test(start_paused = true)]
async fn a_keyed_call_granted_a_credit_and_polled_after_the_join_answers_closed() {
    let (config, mut settlements) = FanOutConfig::new(1, ShedPolicy::DropNewest)
        .key_by(key)
        .settle_capacity(1)
        .settle_by(|kv: &KV| *kv);
    let (caller, shutdown) = backpressure_pipeline::caller(config, |kv: KV| async move { kv });
    assert_eq!(caller.call((1, 0)).await.ok(), Some((1, 0)));
    let mut b = tokio_test::task::spawn(caller.call((2, 0)));
    assert!(b.poll().is_pending(), "waits for a credit");
    let rec = settlements.next().await.unwrap();
    assert_eq!(rec.key, (1, 0));
    assert!(b.is_woken());
    shutdown.shutdown();
    let report = timeout(secs(1), shutdown.join()).await.unwrap();
    assert_eq!(report.produced, 1);
    match b.poll() {
        Poll::Ready(Err(Rejected::Closed((2, 0)))) => {}
        other => panic!("{:?}", other.map(|r| r.map_err(|e| e.reason()))),
    }
}

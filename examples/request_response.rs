//! Request/response behind a bounded fan-out: an HTTP-style handler offers
//! each request to the pipeline and answers "503 overloaded" at once when it
//! is shed, instead of queueing without bound or blocking the caller.
//!
//! Run with `cargo run --example request_response`. A burst of 40 requests
//! from 40 client tasks meets 2 workers and room for 4 queued requests: a
//! few are served, the rest are refused immediately, and the books balance.

use std::time::Duration;

use backpressure_pipeline::{FanOutConfig, Feeder, Offer, ShedPolicy};
use tokio::sync::oneshot;

/// A request and the channel its answer goes back on.
struct Job {
    path: String,
    reply: oneshot::Sender<(u16, String)>,
}

/// The request handler: offer, then either wait for the worker's answer or
/// answer 503 now. The whole loop is these few lines.
async fn handle(feeder: &Feeder<Job>, path: String) -> (u16, String) {
    let (reply, answer) = oneshot::channel();
    match feeder.offer(Job { path, reply }) {
        Offer::Queued | Offer::Evicted(_) => answer.await.unwrap_or((500, "worker cut off".into())),
        Offer::Shed(job) | Offer::Full(job) => (503, format!("overloaded: {}", job.path)),
        Offer::Closed(job) => (503, format!("shutting down: {}", job.path)),
        _ => (500, "unknown offer outcome".into()),
    }
}

#[tokio::main]
async fn main() {
    // DropNewest: a request that does not fit is refused, the backlog keeps
    // its order. Results are not needed: each job answers on its own channel.
    let config = FanOutConfig::new(2, ShedPolicy::DropNewest).capacity(4);
    let (feeder, results, shutdown) =
        backpressure_pipeline::feeder(config, |job: Job| async move {
            tokio::time::sleep(Duration::from_millis(50)).await; // the slow part
            let _ = job.reply.send((200, format!("served {}", job.path)));
        });
    drop(results);

    let clients: Vec<_> = (0..40)
        .map(|i| {
            let feeder = feeder.clone();
            tokio::spawn(async move { handle(&feeder, format!("/item/{i}")).await })
        })
        .collect();
    let mut by_status = std::collections::BTreeMap::<u16, u32>::new();
    for client in clients {
        let (status, _body) = client.await.expect("client task");
        *by_status.entry(status).or_default() += 1;
    }
    drop(feeder); // the last producer: intake ends, the pipeline drains
    let report = shutdown.join().await;

    println!("responses by status: {by_status:?}");
    println!("{report}");
    let served = u64::from(by_status.get(&200).copied().unwrap_or(0));
    let refused = u64::from(by_status.get(&503).copied().unwrap_or(0));
    assert_eq!(served + refused, 40, "every request got an answer");
    assert_eq!(served, report.processed, "one 200 per processed job");
    assert_eq!(refused, report.dropped, "one 503 per shed job");
    assert!(report.is_conserved());
    println!("every request answered; the report balances. request_response OK.");
}

//! Request/response behind a bounded fan-out: an HTTP-style handler calls
//! the pipeline and answers "503 overloaded" at once when its request is
//! shed, instead of queueing without bound or blocking the caller; a client
//! that gives up withdraws its request.
//!
//! Run with `cargo run --example request_response`. A burst of 38 requests
//! from 38 client tasks meets 2 workers and room for 4 queued requests: 4
//! are served, the rest are refused at once; two late clients give up while
//! queued, and their requests leave the queue; the books balance.

use std::time::Duration;

use backpressure_pipeline::{Caller, FanOutConfig, Rejected, ShedPolicy};

/// The request handler: call, then answer with the response or say why
/// there is none. The whole loop is these few lines.
async fn handle(caller: &Caller<String, String>, path: String) -> (u16, String) {
    match caller.call(path).await {
        Ok(body) => (200, body),
        Err(rejected) if rejected.is_overload() => (503, format!("overloaded: {rejected}")),
        Err(Rejected::Closed(path)) => (503, format!("shutting down: {path}")),
        Err(rejected) => (500, rejected.to_string()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // DropNewest: a request that does not fit is refused, the backlog keeps
    // its order. Each answer goes back to its own caller.
    let config = FanOutConfig::new(2, ShedPolicy::DropNewest).capacity(4);
    let (caller, shutdown) = backpressure_pipeline::caller(config, |path: String| async move {
        tokio::time::sleep(Duration::from_millis(50)).await; // the slow part
        format!("served {path}")
    });

    let client = |i: u32, patience: Option<Duration>| {
        let caller = caller.clone();
        tokio::spawn(async move {
            let request = handle(&caller, format!("/item/{i}"));
            match patience {
                // An impatient client gives up; its request leaves with it.
                Some(patience) => tokio::time::timeout(patience, request).await.ok(),
                None => Some(request.await),
            }
        })
    };
    let mut clients: Vec<_> = (0..38).map(|i| client(i, None)).collect();
    // Two late, impatient clients: queued once the first two requests are
    // done, they give up after 10 ms, long before a worker is free.
    tokio::time::sleep(Duration::from_millis(60)).await;
    clients.extend((38..40).map(|i| client(i, Some(Duration::from_millis(10)))));
    let mut by_status = std::collections::BTreeMap::<u16, u64>::new();
    let mut gave_up = 0u64;
    for client in clients {
        match client.await.expect("client task") {
            Some((status, _body)) => *by_status.entry(status).or_default() += 1,
            None => gave_up += 1,
        }
    }
    drop(caller); // the last handle: intake ends, the pipeline drains
    let report = shutdown.join().await;

    println!("responses by status: {by_status:?}; clients that gave up: {gave_up}");
    println!("{report}");
    let served = by_status.get(&200).copied().unwrap_or(0);
    let refused = by_status.get(&503).copied().unwrap_or(0);
    assert_eq!(
        served + refused + gave_up,
        40,
        "every request answered or given up"
    );
    assert_eq!(served, report.delivered, "one 200 per delivered answer");
    assert_eq!(refused, report.dropped, "one 503 per shed request");
    assert_eq!(
        gave_up, report.withdrawn,
        "a client that gives up withdraws its request"
    );
    assert_eq!((served, refused, gave_up), (4, 34, 2));
    assert!(report.is_conserved());
    println!("every request answered; the report balances. request_response OK.");
}

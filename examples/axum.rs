//! An axum server whose route runs on the call front, through the tower
//! layer: at most 8 handlers at once, a queue of 26 fresh requests, 503
//! with a `Retry-After` at once for what does not fit or waited too long,
//! and withdrawal of requests whose client hung up.
//!
//! ```text
//! cargo run --features tower --example axum
//! ```
//!
//! It serves on 127.0.0.1, sends itself a burst of 400 requests at once
//! (one connection each), shuts down, and checks the answers against the
//! pipeline's report.

use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::http::header::RETRY_AFTER;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use backpressure_pipeline::{CallLayer, FanOutConfig, RejectReason, Rejected, ShedPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceBuilder;

/// The work behind the route: ~3 ms of waiting (a database, a backend).
async fn work() -> &'static str {
    tokio::time::sleep(Duration::from_millis(3)).await;
    "done"
}

/// Sizing from the latency budget (see `caller`'s docs): a request that
/// finds the queue full waits about `capacity × 3 ms ÷ 8 workers`; 26 keep
/// that at 10 ms: a 20 ms budget less the 3 ms of work and a 7 ms margin
/// for the way in and out. The same 10 ms is the maximum queue age.
const WORKERS: usize = 8;
const CAPACITY: usize = 26;
const QUEUE_WAIT: Duration = Duration::from_millis(10);

/// Overload and a stop are 503 with a hint to come back (a queue's wait,
/// rounded up to the header's whole seconds); a timed-out handler is 504,
/// a failed one 500.
async fn on_rejected(rejected: Rejected<Request>) -> Response {
    let status = match rejected.reason() {
        RejectReason::TimedOut => StatusCode::GATEWAY_TIMEOUT,
        RejectReason::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        _ => {
            let retry_after = QUEUE_WAIT.as_secs().max(1).to_string();
            let headers = [(RETRY_AFTER, retry_after)];
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                headers,
                rejected.to_string(),
            )
                .into_response();
        }
    };
    (status, rejected.to_string()).into_response()
}

/// One request on a connection of its own: its status and `Retry-After`.
async fn get_status(addr: std::net::SocketAddr) -> (u16, bool) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(b"GET /work HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut response = String::new();
    conn.read_to_string(&mut response).await.expect("read");
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        response.to_ascii_lowercase().contains("retry-after: 1"),
    )
}

#[tokio::main]
async fn main() {
    let layer = CallLayer::new(
        FanOutConfig::new(WORKERS, ShedPolicy::DropNewest)
            .capacity(CAPACITY)
            .max_queue_age(QUEUE_WAIT),
    );
    // One pipeline for the route: `route_service` wraps the route's whole
    // method router once (`Router::route_layer` would wrap each method's
    // handler: GET and HEAD, two pipelines).
    let app = Router::new().route_service(
        "/work",
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(on_rejected))
            .layer(layer.clone())
            .service(get(work)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stopped.cancelled_owned())
            .await
            .expect("serve");
    });

    let clients: Vec<_> = (0..400).map(|_| tokio::spawn(get_status(addr))).collect();
    let (mut ok, mut unavailable) = (0u64, 0u64);
    for client in clients {
        match client.await.expect("client") {
            (200, _) => ok += 1,
            (503, true) => unavailable += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    stop.cancel();
    server.await.expect("server");

    // The router is gone with the server: the pipeline drains and reports.
    let controllers = layer.controllers();
    let [controller] = &controllers[..] else {
        panic!("one route, one pipeline")
    };
    let report = controller.finished().await;
    println!("200: {ok}, 503 with Retry-After: {unavailable}");
    println!("{report}");
    assert!(report.is_conserved());
    assert_eq!(ok + unavailable, 400, "every request answered");
    assert_eq!(report.delivered, ok, "one 200 per delivered answer");
    assert_eq!(
        report.dropped + report.expired,
        unavailable,
        "one 503 per shed or expired call"
    );
    println!("axum OK");
}

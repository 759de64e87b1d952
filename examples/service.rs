//! A service to copy: a TCP line intake feeding a pipeline through the push
//! front, its metrics served to Prometheus, and a graceful stop on SIGTERM.
//!
//! ```text
//! cargo run --features metrics --example service
//! # another shell:
//! printf '5\n5\nhello\n' | nc -q1 127.0.0.1 7000     # one item per line
//! curl -s http://127.0.0.1:9000/metrics | grep backpressure_pipeline
//! kill -TERM <pid printed at start>                   # drains, logs the report, exits 0
//! ```
//!
//! * Input: a TCP listener on 127.0.0.1 whose connections send one item per
//!   line. Each line is offered to the pipeline with [`Feeder::offer`],
//!   which never waits, and the client gets one answer per line: `queued`,
//!   `shed` (the queue was full: `DropNewest` shed the line) or `closed`
//!   (the service is stopping).
//! * Work: the handler reads a line `N` as N milliseconds of work (an
//!   awaited sleep: I/O-like work). CPU-bound or blocking work belongs in
//!   `tokio::task::spawn_blocking` inside the handler (see the crate's
//!   README, "Metrics and services").
//! * Metrics: `metrics-exporter-prometheus`, installed as the global
//!   recorder before the pipeline starts; `/metrics` on 127.0.0.1 answers
//!   with its rendering (`PrometheusHandle::render`), and the `*_seconds`
//!   histograms get Prometheus buckets. The endpoint here is a few lines
//!   over a `TcpListener`, to need no HTTP stack: a service that has an
//!   HTTP server mounts `handle.render()` on its own router instead (or
//!   enables the exporter's `http-listener` feature and calls `install`).
//! * Stop: SIGTERM (or Ctrl-C) stops accepting, calls
//!   [`Controller::shutdown`] (intake stops, what is queued drains for up to
//!   the drain timeout), logs the final report and exits 0 if the books
//!   balance.
//!
//! Settings come from the environment: `SERVICE_INPUT` (default
//! `127.0.0.1:7000`), `SERVICE_METRICS` (default `127.0.0.1:9000`; port 0
//! picks a free one, for either, and the address is printed at start),
//! `SERVICE_WORKERS` (4), `SERVICE_CAPACITY` (64 queued lines).

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use backpressure_pipeline::{FanOutConfig, Feeder, Offer, Report, ShedPolicy};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};

/// The service's settings, from the environment.
pub struct Settings {
    pub input: SocketAddr,
    pub metrics: SocketAddr,
    pub workers: usize,
    pub capacity: usize,
}

impl Settings {
    /// Reads `SERVICE_*`, with the defaults in the module docs.
    pub fn from_env() -> Result<Settings, String> {
        fn var<T: std::str::FromStr>(name: &str, default: &str) -> Result<T, String> {
            let value = std::env::var(name).unwrap_or_else(|_| default.to_owned());
            value
                .parse()
                .map_err(|_| format!("{name}: cannot parse {value:?}"))
        }
        Ok(Settings {
            input: var("SERVICE_INPUT", "127.0.0.1:7000")?,
            metrics: var("SERVICE_METRICS", "127.0.0.1:9000")?,
            workers: var("SERVICE_WORKERS", "4")?,
            capacity: var("SERVICE_CAPACITY", "64")?,
        })
    }
}

/// Bucket bounds for the `*_seconds` histograms: 1 ms to 10 s.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

pub fn main() -> ExitCode {
    let outcome = Settings::from_env().and_then(|settings| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|error| format!("runtime: {error}"))?;
        runtime.block_on(serve(settings))
    });
    match outcome {
        Ok(report) if report.is_conserved() => ExitCode::SUCCESS,
        Ok(report) => {
            eprintln!("service: the books do not balance: {report}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("service: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the service until SIGTERM or Ctrl-C, and returns the final report.
pub async fn serve(settings: Settings) -> Result<Report, String> {
    // Signal handlers first: a SIGTERM that arrives while the service starts
    // must stop it gracefully, not kill it.
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
    // The recorder before the pipeline: a pipeline registers its series
    // with the recorder installed when it starts.
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| format!("metrics recorder: {e}"))?;
    let metrics_listener = TcpListener::bind(settings.metrics)
        .await
        .map_err(|e| format!("metrics on {}: {e}", settings.metrics))?;
    let metrics = metrics_listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(serve_metrics(metrics_listener, prometheus));

    let config = FanOutConfig::new(settings.workers, ShedPolicy::DropNewest)
        .capacity(settings.capacity)
        .name("service")
        .drain_timeout(Duration::from_secs(5));
    let (feeder, results, shutdown) = backpressure_pipeline::feeder(config, handle);
    let controller = shutdown.controller();
    // The reader: here it only counts; a real service sends results on.
    let pipeline = tokio::spawn(async move {
        let mut handled = 0u64;
        let report = shutdown.join_for_each(results, |_| handled += 1).await;
        (handled, report)
    });

    let listener = TcpListener::bind(settings.input)
        .await
        .map_err(|e| format!("input on {}: {e}", settings.input))?;
    let input = listener.local_addr().map_err(|e| e.to_string())?;
    println!("service: pid {}", std::process::id());
    println!("service: metrics on http://{metrics}/metrics");
    println!("service: input on {input}");

    let stop = async {
        tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "Ctrl-C",
        }
    };
    let signal = accept(listener, &feeder, stop).await;
    println!("service: {signal}, draining");
    // Intake stops here, whoever still holds a feeder: connections left
    // open are answered `closed` from now on.
    controller.shutdown();
    drop(feeder);
    let (handled, report) = pipeline.await.map_err(|e| format!("pipeline: {e}"))?;
    println!("service: {handled} results read");
    println!("service: final report: {report}");
    Ok(report)
}

/// Answers every connection with the exporter's rendering (any path: this
/// listener serves nothing else), and runs the exporter's upkeep (it drains
/// histogram samples into their buckets) every 5 seconds.
async fn serve_metrics(listener: TcpListener, prometheus: PrometheusHandle) {
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let prometheus = prometheus.clone();
        tokio::spawn(async move {
            // The request's head, up to its blank line (8 KiB at most).
            let (mut head, mut buf) = (Vec::new(), [0u8; 1024]);
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let body = prometheus.render();
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

/// The handler: a line `N` is N ms of (awaited) work; anything else 1 ms.
/// Returns the line's length.
async fn handle(line: String) -> usize {
    let work = line.trim().parse().unwrap_or(1);
    tokio::time::sleep(Duration::from_millis(work)).await;
    line.len()
}

/// Accepts connections until `stop` resolves; each gets a clone of the
/// feeder. Returns what stopped it.
async fn accept(
    listener: TcpListener,
    feeder: &Feeder<String>,
    stop: impl std::future::Future<Output = &'static str>,
) -> &'static str {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            signal = &mut stop => return signal,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let feeder = feeder.clone();
                    tokio::spawn(async move {
                        if let Err(error) = connection(stream, feeder).await {
                            eprintln!("service: connection: {error}");
                        }
                    });
                }
                Err(error) => eprintln!("service: accept: {error}"),
            },
        }
    }
}

/// One client: a line in, an answer out, until it closes.
async fn connection(stream: TcpStream, feeder: Feeder<String>) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let answer: &[u8] = match feeder.offer(line) {
            Offer::Queued | Offer::Evicted(_) => b"queued\n",
            Offer::Shed(_) => b"shed\n",
            Offer::Full(_) => b"full\n",
            Offer::Closed(_) => b"closed\n",
            _ => b"refused\n",
        };
        write.write_all(answer).await?;
    }
    Ok(())
}

//! `examples/service.rs` end to end, as a process of its own: real input
//! over TCP, `/metrics` scraped over HTTP, SIGTERM, exit code 0, and the
//! scraped values equal to the report the service logs.
//!
//! The example's code is compiled into this test binary (as
//! `tests/broker.rs` does with its example), and the service runs as a
//! child process of it: this binary started again with only the ignored
//! `service_process` test, which calls the example's `main` and exits with
//! its exit code. Every wait is bounded; the bounds are generous, for a
//! loaded 2-core machine.
//!
//! Run with `cargo test --features metrics --test service`.
#![cfg(feature = "metrics")]

#[path = "../examples/service.rs"]
#[allow(dead_code, unreachable_pub)]
mod service;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// Lines sent to the service, each 2 ms of work.
const LINES: u64 = 300;
/// The service's workers and queue capacity: small, so that a burst sheds.
const WORKERS: u64 = 2;
const CAPACITY: u64 = 8;
/// The bound on every wait for the service (start, answers, scrape, stop).
const BOUND: Duration = Duration::from_secs(60);

/// Not a test: the service process that `service_drains_on_sigterm` starts.
#[test]
#[ignore = "the service process of `service_drains_on_sigterm`, started by it"]
fn service_process() {
    let code = service::main();
    std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 });
}

/// The child process, killed if the test fails before it exits.
struct Service {
    child: Child,
    lines: Receiver<String>,
    /// Every line the service printed so far.
    log: Vec<String>,
}

impl Drop for Service {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Service {
    fn start() -> Service {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "service_process",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SERVICE_INPUT", "127.0.0.1:0")
            .env("SERVICE_METRICS", "127.0.0.1:0")
            .env("SERVICE_WORKERS", WORKERS.to_string())
            .env("SERVICE_CAPACITY", CAPACITY.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the service process");
        let stdout = child.stdout.take().expect("piped stdout");
        let (send, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Service {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// The next line the service prints that starts with `prefix`, within
    /// `BOUND`; `None` if its output ends first.
    fn wait_for(&mut self, prefix: &str) -> Option<String> {
        let deadline = Instant::now() + BOUND;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Some(rest.to_owned());
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return None,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {prefix:?} within {BOUND:?}; printed: {:?}", self.log)
                }
            }
        }
    }
}

/// Starts the service; returns it with its input and metrics addresses
/// (it binds free ports and prints them).
fn start_service() -> (Service, SocketAddr, SocketAddr) {
    let mut service = Service::start();
    let metrics = service
        .wait_for("service: metrics on http://")
        .unwrap_or_else(|| panic!("the service did not start: {:?}", service.log));
    let metrics = metrics
        .trim_end_matches("/metrics")
        .parse()
        .expect("metrics address");
    let input = service
        .wait_for("service: input on ")
        .unwrap_or_else(|| panic!("the service did not start: {:?}", service.log));
    (service, input.parse().expect("input address"), metrics)
}

/// Sends `LINES` lines on one connection and counts the answers.
fn send_lines(input: SocketAddr) -> BTreeMap<String, u64> {
    let mut stream = TcpStream::connect_timeout(&input, BOUND).expect("connect to the input");
    stream.set_read_timeout(Some(BOUND)).expect("read timeout");
    stream
        .set_write_timeout(Some(BOUND))
        .expect("write timeout");
    let burst = "2\n".repeat(LINES as usize);
    stream.write_all(burst.as_bytes()).expect("send the lines");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("end the input");
    let mut answers = BTreeMap::new();
    for answer in BufReader::new(stream).lines().take(LINES as usize) {
        *answers.entry(answer.expect("an answer")).or_insert(0) += 1;
    }
    answers
}

/// The series of one scrape: (name, sorted labels) to value.
type Scrape = BTreeMap<(String, Vec<(String, String)>), f64>;

/// `GET /metrics` over a plain TCP connection, parsed (the Prometheus text
/// format: `name{label="value",...} number`).
fn scrape(metrics: SocketAddr) -> Scrape {
    let mut stream = TcpStream::connect_timeout(&metrics, BOUND).expect("connect to /metrics");
    stream.set_read_timeout(Some(BOUND)).expect("read timeout");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {metrics}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let mut series = Scrape::new();
    for line in response.lines().filter(|line| !line.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match key.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (key, ""),
        };
        let mut labels: Vec<(String, String)> = labels
            .split(',')
            .filter_map(|label| label.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        labels.sort();
        series.insert((name.to_owned(), labels), value);
    }
    series
}

/// One series of the service's pipeline: `backpressure_pipeline_{name}`,
/// labelled `pipeline="service"` and `more`.
fn value(scrape: &Scrape, name: &str, more: &[(&str, &str)]) -> u64 {
    let mut labels: Vec<(String, String)> = [("pipeline", "service")]
        .iter()
        .chain(more)
        .map(|&(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    labels.sort();
    let key = (format!("backpressure_pipeline_{name}"), labels);
    let value = *scrape
        .get(&key)
        .unwrap_or_else(|| panic!("no {key:?} in {scrape:?}"));
    assert_eq!(value.fract(), 0.0, "{key:?}");
    value as u64
}

/// The number after `label ` in the service's report line.
fn reported(report: &str, label: &str) -> u64 {
    let (_, rest) = report
        .split_once(&format!("{label} "))
        .unwrap_or_else(|| panic!("no {label:?} in {report:?}"));
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().expect("a number")
}

#[test]
fn service_drains_on_sigterm() {
    let (mut service, input, metrics) = start_service();
    let answers = send_lines(input);
    let queued = answers.get("queued").copied().unwrap_or(0);
    let shed = answers.get("shed").copied().unwrap_or(0);
    assert_eq!(queued + shed, LINES, "{answers:?}");

    // The books are flushed every second: scrape until every line is settled.
    let deadline = Instant::now() + BOUND;
    let settled = loop {
        let now = scrape(metrics);
        let done = value(&now, "processed_total", &[])
            + value(&now, "dropped_total", &[("reason", "newest")]);
        if done == LINES && value(&now, "delivered_total", &[]) == queued {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "not settled in {BOUND:?}: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let counter = |name| value(&settled, name, &[]);
    assert_eq!(counter("produced_total"), LINES);
    assert_eq!(counter("processed_total"), queued);
    assert_eq!(
        value(&settled, "dropped_total", &[("reason", "newest")]),
        shed
    );
    for name in [
        "discarded_total",
        "failed_total",
        "timed_out_total",
        "expired_total",
        "cancelled_total",
        "errored_total",
    ] {
        assert_eq!(counter(name), 0, "{name}");
    }
    assert_eq!(
        counter("overload_episodes_total") > 0,
        shed > 0,
        "an episode exactly when something was shed"
    );
    assert_eq!(counter("queue_depth"), 0);
    assert_eq!(counter("in_flight"), 0);
    assert_eq!(counter("results_waiting"), 0);
    assert_eq!(counter("workers_alive"), WORKERS);
    assert_eq!(counter("queue_capacity"), CAPACITY);
    let processed = [("outcome", "processed")];
    assert_eq!(
        value(&settled, "handler_duration_seconds_count", &processed),
        queued
    );
    assert_eq!(counter("queue_wait_seconds_count"), queued);

    // SIGTERM: a graceful stop, the report logged, exit code 0.
    let pid = service.child.id().to_string();
    let kill = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(kill.success());
    assert_eq!(
        service.wait_for("service: "),
        Some("SIGTERM, draining".to_owned())
    );
    let report = service
        .wait_for("service: final report: ")
        .expect("the final report");
    let deadline = Instant::now() + BOUND;
    let status = loop {
        if let Some(status) = service.child.try_wait().expect("exit status") {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit within {BOUND:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{:?}", service.log);

    // The report says what the scrape said, and how intake ended.
    for (label, name) in [
        ("produced", "produced_total"),
        ("processed", "processed_total"),
        ("failed", "failed_total"),
        ("timed out", "timed_out_total"),
        ("cancelled", "cancelled_total"),
        ("delivered", "delivered_total"),
        ("discarded", "discarded_total"),
    ] {
        assert_eq!(reported(&report, label), counter(name), "{label}: {report}");
    }
    assert_eq!(reported(&report, "dropped"), shed, "{report}");
    assert_eq!(reported(&report, "workers:"), WORKERS, "{report}");
    assert!(report.contains("intake stopped"), "{report}");
}

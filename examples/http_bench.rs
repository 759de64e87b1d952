//! Request/response under overload, over real HTTP on 127.0.0.1: this
//! crate's call front (plain, with `max_queue_age`, and through its tower
//! layer) against tower's `load_shed + concurrency_limit` and `load_shed +
//! buffer + concurrency_limit`, on one axum 0.8 server shape.
//!
//! ```text
//! cargo run --release --features tower --example http_bench [-- ROUNDS SECONDS]
//! ```
//!
//! Each run starts a fresh server process (this binary, `serve NAME`): axum
//! on a 2-thread runtime, one route whose work is ~3 ms of async waiting,
//! 8 workers (or a concurrency limit of 8) behind a queue (or buffer) of 64.
//! Capacity is therefore about 8 / 3 ms = 2,667 requests/s. This process is
//! the load generator: open loop at a fixed rate (80 %, 160 % and 480 % of
//! capacity, and 480 % with clients that give up after 20 ms and reset the
//! connection), each request on a kept-alive connection of its own for as
//! long as it is out, on a current-thread runtime. Contenders are
//! interleaved (A B C D E, then E D C B A, ...) and every number is the
//! median over the rounds.
//!
//! Per run it prints what the client saw (200s answered within 20 ms per
//! second, 503s per second, p50/p99 of the 200s' latency) and what the
//! server spent (CPU per request it received, and the run-queue wait of its
//! threads per second of run, with the load average and the CPU pressure
//! stall at the end of the run: the machine is shared). The server's own
//! counts and the pipeline's `Report` are checked against each other and
//! against the client's in every run (see `check`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::RETRY_AFTER;
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use backpressure_pipeline::{
    CallLayer, Caller, Controller, FanOutConfig, RejectReason, Rejected, ShedPolicy,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout_at};
use tower::{BoxError, ServiceBuilder};

const WORKERS: usize = 8;
const QUEUE: usize = 64;
/// The handler's sleep: 3 ms, or `HTTP_BENCH_WORK_US` µs (the timer's 1 ms
/// wheel and the machine's load make what it takes longer; the table's
/// last column is what it took).
fn work_length() -> Duration {
    static WORK: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *WORK.get_or_init(|| {
        let us = std::env::var("HTTP_BENCH_WORK_US")
            .ok()
            .and_then(|v| v.parse().ok());
        Duration::from_micros(us.unwrap_or(3_000))
    })
}
/// The client's latency budget: a 200 later than this is not timely, and
/// in the timeout runs the client gives up at it.
const BUDGET: Duration = Duration::from_millis(20);
/// `max_queue_age` for the `call+age` contender: the budget less the work,
/// the request's way in and out, and the scheduling delay a loaded 2-core
/// machine adds (measured: a few ms at p99).
const MAX_AGE: Duration = Duration::from_millis(10);
const CAPACITY_PER_S: f64 = WORKERS as f64 / 0.003;

const CONTENDERS: [&str; 5] = [
    "call",
    "call+age",
    "layer",
    "tower-ls-cl",
    "tower-ls-buf-cl",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        serve(args.get(1).map_or("call", String::as_str));
        return;
    }
    let rounds: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(3);
    let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    // Optionally only the loads whose label contains this (e.g. "timeout").
    let only = args.get(2).cloned().unwrap_or_default();
    drive(rounds, Duration::from_secs(seconds), &only);
}

// ===== the server =====

#[derive(Default)]
struct Counters {
    arrived: AtomicU64,
    ok: AtomicU64,
    unavailable: AtomicU64,
    other: AtomicU64,
    /// Requests whose handler future hyper dropped (the client went away).
    abandoned: AtomicU64,
}

/// Counts a request abandoned unless it is answered.
struct Abandoned<'a>(&'a Counters, bool);

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.abandoned.fetch_add(1, Relaxed);
        }
    }
}

async fn count(State(counters): State<Arc<Counters>>, request: Request, next: Next) -> Response {
    counters.arrived.fetch_add(1, Relaxed);
    let mut guard = Abandoned(&counters, false);
    let response = next.run(request).await;
    guard.1 = true;
    let counter = match response.status() {
        StatusCode::OK => &counters.ok,
        StatusCode::SERVICE_UNAVAILABLE => &counters.unavailable,
        _ => &counters.other,
    };
    counter.fetch_add(1, Relaxed);
    response
}

/// Handlers running now, the most that ever ran at once, and the time they
/// took in all (µs): the limit of 8 holds, and what "3 ms" really was.
static RUNNING: AtomicU64 = AtomicU64::new(0);
static MOST_RUNNING: AtomicU64 = AtomicU64::new(0);
static WORK_US: AtomicU64 = AtomicU64::new(0);
static WORKED: AtomicU64 = AtomicU64::new(0);

/// Counts a handler running while it lives (also when it is cancelled).
struct Running(Instant);

impl Running {
    fn start() -> Self {
        let now = RUNNING.fetch_add(1, Relaxed) + 1;
        MOST_RUNNING.fetch_max(now, Relaxed);
        Running(Instant::now())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Relaxed);
        WORK_US.fetch_add(self.0.elapsed().as_micros() as u64, Relaxed);
        WORKED.fetch_add(1, Relaxed);
    }
}

/// The work: a tokio sleep of [`work_length`], which the timer's 1 ms wheel
/// rounds up to the next tick (the server reports what it took on average).
async fn work_unit() {
    let _running = Running::start();
    sleep(work_length()).await;
}

async fn work() -> &'static str {
    work_unit().await;
    "ok"
}

/// 503 with a `Retry-After` for overload and a stop, 504 for a timeout,
/// 500 for a failure.
fn rejected(reason: RejectReason) -> Response {
    match reason {
        reason if reason.is_overload() || reason == RejectReason::Closed => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(RETRY_AFTER, "1")],
            "overloaded",
        )
            .into_response(),
        RejectReason::TimedOut => (StatusCode::GATEWAY_TIMEOUT, "timed out").into_response(),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "failed").into_response(),
    }
}

async fn via_call(State(caller): State<Caller<(), ()>>) -> Response {
    match caller.call(()).await {
        Ok(()) => "ok".into_response(),
        Err(rejection) => rejected(rejection.reason()),
    }
}

/// The pipeline's settings: 8 workers, a queue of 64, shedding the newest.
fn config<Req>(max_age: bool) -> FanOutConfig<Req> {
    let config = FanOutConfig::new(WORKERS, ShedPolicy::DropNewest).capacity(QUEUE);
    if max_age {
        config.max_queue_age(MAX_AGE)
    } else {
        config
    }
}

/// The pipeline behind a contender, to stop it and read its report.
enum Pipeline {
    None,
    Handle(backpressure_pipeline::ShutdownHandle),
    Layer(Vec<Controller>),
}

fn app(name: &str, counters: Arc<Counters>) -> (Router, Pipeline) {
    let (router, pipeline) = match name {
        "call" | "call+age" => {
            let settings = config::<()>(name == "call+age");
            let (caller, shutdown) = backpressure_pipeline::caller(settings, |()| work_unit());
            let router = Router::new()
                .route("/work", get(via_call))
                .with_state(caller);
            (router, Pipeline::Handle(shutdown))
        }
        "layer" => {
            let layer = CallLayer::new(config(false));
            let router = Router::new().route_service(
                "/work",
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(
                        |rejection: Rejected<Request>| async move { rejected(rejection.reason()) },
                    ))
                    .layer(layer.clone())
                    .service(get(work)),
            );
            (router, Pipeline::Layer(layer.controllers()))
        }
        "tower-ls-cl" => {
            let router = Router::new().route_service(
                "/work",
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(|_: BoxError| async {
                        rejected(RejectReason::Shed)
                    }))
                    .load_shed()
                    .concurrency_limit(WORKERS)
                    .service(get(work)),
            );
            (router, Pipeline::None)
        }
        _ => {
            let router = Router::new().route_service(
                "/work",
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(|_: BoxError| async {
                        rejected(RejectReason::Shed)
                    }))
                    .load_shed()
                    .buffer(QUEUE)
                    .concurrency_limit(WORKERS)
                    .service(get(work)),
            );
            (router, Pipeline::None)
        }
    };
    (router.layer(from_fn_with_state(counters, count)), pipeline)
}

/// This process's threads: (CPU ns, run-queue wait ns), from schedstat.
fn schedstat(pid: &str) -> (u64, u64) {
    let mut total = (0, 0);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return total;
    };
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        let mut fields = text
            .split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0));
        total.0 += fields.next().unwrap_or(0);
        total.1 += fields.next().unwrap_or(0);
    }
    total
}

fn serve(name: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("server runtime");
    runtime.block_on(async {
        let counters = Arc::new(Counters::default());
        let (router, pipeline) = app(name, Arc::clone(&counters));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("addr {}", listener.local_addr().expect("addr"));
        std::io::stdout().flush().expect("stdout");
        let start = schedstat("self");
        // The driver closes our stdin when the run is over.
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin()
                .read_line(&mut sink)
                .map(|n| n > 0)
                .unwrap_or(false)
            {}
        });
        let server = axum::serve(listener, router).with_graceful_shutdown(async {
            let _ = stdin_closed.await;
        });
        server.await.expect("serve");
        let end = schedstat("self");
        let report = match pipeline {
            Pipeline::None => None,
            Pipeline::Handle(shutdown) => {
                shutdown.shutdown();
                Some(shutdown.join().await)
            }
            Pipeline::Layer(controllers) => {
                let controller = controllers.first().expect("one pipeline").clone();
                controller.shutdown();
                Some(controller.finished().await)
            }
        };
        let c = &counters;
        let mut line = format!(
            "stats arrived={} ok={} unavailable={} other={} abandoned={} cpu_ns={} wait_ns={} \
             most_running={} work_us={}",
            c.arrived.load(Relaxed),
            c.ok.load(Relaxed),
            c.unavailable.load(Relaxed),
            c.other.load(Relaxed),
            c.abandoned.load(Relaxed),
            end.0 - start.0,
            end.1 - start.1,
            MOST_RUNNING.load(Relaxed),
            WORK_US.load(Relaxed) / WORKED.load(Relaxed).max(1),
        );
        if let Some(r) = report {
            line += &format!(
                " conserved={} produced={} processed={} delivered={} discarded={} dropped={} \
                 expired={} cancelled={} withdrawn={} failed={} timed_out={}",
                r.is_conserved(),
                r.produced,
                r.processed,
                r.delivered,
                r.discarded,
                r.dropped,
                r.expired,
                r.cancelled,
                r.withdrawn,
                r.failed,
                r.timed_out
            );
        }
        println!("{line}");
    });
}

// ===== the load generator =====

#[derive(Default)]
struct ClientStats {
    sent: AtomicU64,
    ok: AtomicU64,
    unavailable: AtomicU64,
    other: AtomicU64,
    timed_out: AtomicU64,
    errors: AtomicU64,
    /// Latency of every 200, in µs.
    ok_latency_us: Mutex<Vec<u32>>,
}

const REQUEST: &[u8] = b"GET /work HTTP/1.1\r\nHost: bench\r\n\r\n";

/// Reads one response; returns its status.
async fn read_response(conn: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).unwrap_or("");
            let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
            let length: usize = head
                .lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, value)| value.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = conn.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(status);
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

type Pool = Arc<Mutex<Vec<TcpStream>>>;

async fn one(addr: std::net::SocketAddr, pool: Pool, give_up: bool, stats: Arc<ClientStats>) {
    let sent_at = Instant::now();
    // Without client timeouts, a guard against a stuck run only.
    let deadline = sent_at
        + if give_up {
            BUDGET
        } else {
            Duration::from_secs(5)
        };
    let pooled = pool.lock().expect("pool").pop();
    let mut buf = Vec::with_capacity(256);
    let exchange = async {
        let mut conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = TcpStream::connect(addr).await?;
                conn.set_nodelay(true)?;
                conn
            }
        };
        conn.write_all(REQUEST).await?;
        let status = read_response(&mut conn, &mut buf).await?;
        Ok::<_, std::io::Error>((conn, status))
    };
    match timeout_at(deadline, exchange).await {
        Ok(Ok((conn, status))) => {
            let latency = sent_at.elapsed();
            let counter = match status {
                200 => {
                    let us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
                    stats.ok_latency_us.lock().expect("latencies").push(us);
                    &stats.ok
                }
                503 => &stats.unavailable,
                _ => &stats.other,
            };
            counter.fetch_add(1, Relaxed);
            pool.lock().expect("pool").push(conn);
        }
        Ok(Err(_)) => {
            stats.errors.fetch_add(1, Relaxed);
        }
        // The client gives up: the connection (inside the dropped future) is
        // closed. The server reads EOF, and hyper (HTTP/1 half-close is off
        // by default) closes the connection and drops the handler's future.
        Err(_) => {
            stats.timed_out.fetch_add(1, Relaxed);
        }
    }
}

/// Sends `rate` requests/s for `length`, open loop; returns the stats.
async fn load(
    addr: std::net::SocketAddr,
    rate: f64,
    length: Duration,
    give_up: bool,
) -> Arc<ClientStats> {
    let stats = Arc::new(ClientStats::default());
    let pool: Pool = Arc::default();
    let mut requests = tokio::task::JoinSet::new();
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < length {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            sent += 1;
            requests.spawn(one(addr, Arc::clone(&pool), give_up, Arc::clone(&stats)));
        }
        while requests.try_join_next().is_some() {}
        sleep(Duration::from_millis(1)).await;
    }
    stats.sent.store(sent, Relaxed);
    while requests.join_next().await.is_some() {}
    pool.lock().expect("pool").clear();
    stats
}

/// One run's numbers.
#[derive(Clone, Debug, Default)]
struct Row {
    timely_ok_per_s: f64,
    unavailable_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_request: f64,
    wait_ms_per_s: f64,
    load_avg: f64,
    cpu_pressure: f64,
    /// The most handlers that ran at once, and their mean time (ms).
    most_running: f64,
    work_ms: f64,
}

fn field(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

/// Checks the server's counts, the pipeline's report and the client's
/// counts against each other.
fn check(name: &str, line: &str, client: &ClientStats) {
    let get = |name: &str| field(line, name).unwrap_or_else(|| panic!("no {name} in {line}"));
    let (arrived, ok, unavailable, other, abandoned) = (
        get("arrived"),
        get("ok"),
        get("unavailable"),
        get("other"),
        get("abandoned"),
    );
    assert_eq!(
        arrived,
        ok + unavailable + other + abandoned,
        "{name}: server counts: {line}"
    );
    let sent = client.sent.load(Relaxed);
    let (c_ok, c_503, c_other, c_timeout, c_err) = (
        client.ok.load(Relaxed),
        client.unavailable.load(Relaxed),
        client.other.load(Relaxed),
        client.timed_out.load(Relaxed),
        client.errors.load(Relaxed),
    );
    assert_eq!(
        sent,
        c_ok + c_503 + c_other + c_timeout + c_err,
        "{name}: client counts"
    );
    assert!(
        c_ok <= ok && c_503 <= unavailable,
        "{name}: the client saw more than was sent: {line}"
    );
    assert!(arrived <= sent, "{name}: more arrived than sent: {line}");
    if line.contains("conserved=") {
        assert!(line.contains("conserved=true"), "{name}: {line}");
        // Every request is one call. Every 200 is a delivered answer and
        // every 503 a shed or expired call; an abandoned request is a call
        // withdrawn, discarded, or answered after its client left, in the
        // moment before axum returned the answer.
        let (delivered, rejected) = (get("delivered"), get("dropped") + get("expired"));
        assert_eq!(get("produced"), arrived, "{name}: {line}");
        assert!(ok <= delivered && unavailable <= rejected, "{name}: {line}");
        assert_eq!(
            (delivered - ok) + (rejected - unavailable) + get("withdrawn") + get("discarded"),
            abandoned,
            "{name}: {line}"
        );
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[at]) / 1000.0
}

fn machine() -> (f64, f64) {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN);
    let pressure = std::fs::read_to_string("/proc/pressure/cpu")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_string();
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix("avg10=")?.parse().ok())
        })
        .unwrap_or(f64::NAN);
    (load, pressure)
}

fn run(
    runtime: &tokio::runtime::Runtime,
    name: &str,
    rate: f64,
    give_up: bool,
    length: Duration,
) -> Row {
    let mut child: Child = Command::new(std::env::current_exe().expect("exe"))
        .args(["serve", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("server process");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("addr line");
    let addr = line
        .trim()
        .strip_prefix("addr ")
        .expect("addr")
        .parse()
        .expect("addr");
    let client = runtime.block_on(load(addr, rate, length, give_up));
    drop(child.stdin.take()); // the run is over: the server stops and reports
    line.clear();
    out.read_line(&mut line).expect("stats line");
    child.wait().expect("server exit");
    check(name, &line, &client);
    let (load_avg, cpu_pressure) = machine();
    let secs = length.as_secs_f64();
    let mut latencies = std::mem::take(&mut *client.ok_latency_us.lock().expect("latencies"));
    latencies.sort_unstable();
    let budget_us = BUDGET.as_micros() as u32;
    let timely = latencies.iter().filter(|&&us| us <= budget_us).count();
    let arrived = field(&line, "arrived").unwrap_or(0).max(1);
    Row {
        timely_ok_per_s: timely as f64 / secs,
        unavailable_per_s: client.unavailable.load(Relaxed) as f64 / secs,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        cpu_us_per_request: field(&line, "cpu_ns").unwrap_or(0) as f64 / 1000.0 / arrived as f64,
        wait_ms_per_s: field(&line, "wait_ns").unwrap_or(0) as f64 / 1e6 / secs,
        load_avg,
        cpu_pressure,
        most_running: field(&line, "most_running").unwrap_or(0) as f64,
        work_ms: field(&line, "work_us").unwrap_or(0) as f64 / 1000.0,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| !v.is_nan());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn drive(rounds: usize, length: Duration, only: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let loads: [(&str, f64, bool); 4] = [
        ("80%", 0.8, false),
        ("160%", 1.6, false),
        ("480%", 4.8, false),
        ("480% + 20 ms client timeout", 4.8, true),
    ];
    let mut rows: BTreeMap<(usize, usize), Vec<Row>> = BTreeMap::new();
    for round in 0..rounds {
        for (l, &(label, factor, give_up)) in loads.iter().enumerate() {
            if !label.contains(only) {
                continue;
            }
            let order: Vec<usize> = if round % 2 == 0 {
                (0..CONTENDERS.len()).collect()
            } else {
                (0..CONTENDERS.len()).rev().collect()
            };
            for c in order {
                let row = run(
                    &runtime,
                    CONTENDERS[c],
                    factor * CAPACITY_PER_S,
                    give_up,
                    length,
                );
                eprintln!("round {round} {label:>28} {:>16}: {row:?}", CONTENDERS[c]);
                rows.entry((l, c)).or_default().push(row);
            }
        }
    }
    println!(
        "\n{} rounds of {} s, medians; handler sleep {:?}; nominal capacity {:.0} requests/s \
         (8 workers x 3 ms)\n",
        rounds,
        length.as_secs(),
        work_length(),
        CAPACITY_PER_S
    );
    println!(
        "| load | contender | timely 200/s | 503/s | p50 of 200s (ms) | p99 of 200s (ms) | server CPU per request (µs) | server run-queue wait (ms/s) | load avg | CPU pressure avg10 (%) | handlers at once (max) | work (ms, mean) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for ((l, c), runs) in &rows {
        let m = |f: fn(&Row) -> f64| median(runs.iter().map(f).collect());
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} | {:.2} |",
            loads[*l].0,
            CONTENDERS[*c],
            m(|r| r.timely_ok_per_s),
            m(|r| r.unavailable_per_s),
            m(|r| r.p50_ms),
            m(|r| r.p99_ms),
            m(|r| r.cpu_us_per_request),
            m(|r| r.wait_ms_per_s),
            m(|r| r.load_avg),
            m(|r| r.cpu_pressure),
            m(|r| r.most_running),
            m(|r| r.work_ms),
        );
    }
}

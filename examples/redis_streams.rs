//! One pipeline per consumer of a real broker: a Redis Streams consumer
//! group, K consumer processes, one killed with SIGKILL and one shut down
//! gracefully, and books that close on the broker.
//!
//! ```sh
//! cargo run --example redis_streams              # the scenario: 3 consumers, one killed
//! cargo run --release --example redis_streams -- bench 1 20000   # throughput, 1 consumer
//! ```
//!
//! It installs (Debian package) and starts its own `redis-server` on
//! 127.0.0.1 through `scripts/redis-server.sh`, and stops it at the end.
//!
//! Each consumer process reads the group with `XREADGROUP`, reclaims idle
//! messages with `XAUTOCLAIM`, and runs them through
//! `bounded_fan_out_with` on a configuration that settles
//! (`FanOutConfig::settle_by`), with its input wrapped by `hand_back`; its
//! settler acks from the settlement records:
//!
//! | outcome | on the broker |
//! |---|---|
//! | processed | `XACK` + `SADD processed`, one Lua script |
//! | shed (dropped, expired) | `XACK` + `SADD shed`, one Lua script |
//! | failed, timed out | left pending: retried via `XAUTOCLAIM`; dead-lettered (`XACK` + `SADD dead`) after 3 deliveries |
//! | cancelled, handed back | left pending, for a peer to claim |
//!
//! The script adds the id to its set only if `XACK` acknowledged it, so an
//! id lands in exactly one set however often it was delivered.

use std::collections::VecDeque;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use backpressure_pipeline::{FanOutConfig, FanOutExt, Outcome, Report, ShedPolicy, hand_back};
use futures::{Stream, StreamExt};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
};

pub const STREAM: &str = "jobs";
pub const GROUP: &str = "workers";
pub const PROCESSED: &str = "settled:processed";
pub const SHED: &str = "settled:shed";
pub const DEAD: &str = "settled:dead";
/// A message delivered more often than this is dead-lettered.
pub const MAX_DELIVERIES: u64 = 3;
/// `XAUTOCLAIM` min-idle: a message pending this long is claimed by a peer.
pub const CLAIM_AFTER: Duration = Duration::from_millis(1000);
/// Below the claim threshold minus the handler timeout (see README, "Past
/// one machine"): a message that waited longer is shed, not run after a
/// peer may already have claimed it.
pub const MAX_QUEUE_AGE: Duration = Duration::from_millis(500);
pub const HANDLER_TIMEOUT: Duration = Duration::from_millis(300);
/// In the scenario, one message in this many is made to fail (its `fail`
/// field is 1): its handler panics on every delivery.
pub const FAIL_EVERY: u64 = 500;

/// Acks `ARGV[2]` and records it in the set `KEYS[2]`, in one step, only if
/// the ack acknowledged it (it was still pending).
const ACK_AND_RECORD: &str = r"
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 1 then
    redis.call('SADD', KEYS[2], ARGV[2])
    return 1
end
return 0
";

/// One message as a consumer sees it.
#[derive(Debug)]
pub struct Message {
    pub id: String,
    pub seq: u64,
    /// Made to fail on every delivery.
    pub fail: bool,
    pub deliveries: u64,
}

pub async fn connect(port: u16) -> redis::RedisResult<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    client.get_multiplexed_async_connection().await
}

/// Creates the group and writes `n` messages, `seq` 0..n; with
/// `fail_every`, every that-many-th message is made to fail.
pub async fn produce(
    con: &mut MultiplexedConnection,
    n: u64,
    fail_every: Option<u64>,
) -> redis::RedisResult<()> {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg(GROUP)
        .arg("$")
        .arg("MKSTREAM")
        .query_async(con)
        .await?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut pipe = redis::pipe();
        for seq in chunk {
            let fail = fail_every.is_some_and(|every| seq % every == every - 1);
            pipe.cmd("XADD")
                .arg(STREAM)
                .arg("*")
                .arg("seq")
                .arg(*seq)
                .arg("fail")
                .arg(u8::from(fail))
                .ignore();
        }
        let _: () = pipe.query_async(con).await?;
    }
    Ok(())
}

/// How many ids are in each set, and how many are pending.
#[derive(Debug, PartialEq, Eq)]
pub struct Books {
    pub processed: u64,
    pub shed: u64,
    pub dead: u64,
    pub pending: u64,
    /// Ids in more than one set.
    pub overlap: u64,
    /// Distinct ids in the sets, against the stream's length.
    pub union: u64,
    pub stream_len: u64,
    /// Dead-lettered messages that were not ones made to fail.
    pub dead_but_healthy: u64,
}

impl Books {
    pub fn settled(&self) -> u64 {
        self.processed + self.shed + self.dead
    }
}

pub async fn books(con: &mut MultiplexedConnection) -> redis::RedisResult<Books> {
    let (processed, shed, dead): (u64, u64, u64) = redis::pipe()
        .scard(PROCESSED)
        .scard(SHED)
        .scard(DEAD)
        .query_async(con)
        .await?;
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(STREAM)
        .arg(GROUP)
        .query_async(con)
        .await?;
    let pending = match summary {
        redis::Value::Array(fields) => match fields.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    };
    let mut overlap = 0;
    for (a, b) in [(PROCESSED, SHED), (PROCESSED, DEAD), (SHED, DEAD)] {
        let n: u64 = redis::cmd("SINTERCARD")
            .arg(2)
            .arg(a)
            .arg(b)
            .query_async(con)
            .await?;
        overlap += n;
    }
    let union: u64 = redis::cmd("SUNIONSTORE")
        .arg("settled:all")
        .arg(PROCESSED)
        .arg(SHED)
        .arg(DEAD)
        .query_async(con)
        .await?;
    let stream_len: u64 = con.xlen(STREAM).await?;
    let dead_ids: Vec<String> = con.smembers(DEAD).await?;
    let mut dead_but_healthy = 0;
    for id in dead_ids {
        let entries: redis::streams::StreamRangeReply = con.xrange(STREAM, &id, &id).await?;
        let fail: Option<u8> = entries.ids.first().and_then(|entry| entry.get("fail"));
        dead_but_healthy += u64::from(fail != Some(1));
    }
    Ok(Books {
        dead_but_healthy,
        processed,
        shed,
        dead,
        pending,
        overlap,
        union,
        stream_len,
    })
}

fn message(entry: &StreamId, deliveries: u64) -> Option<Message> {
    Some(Message {
        id: entry.id.clone(),
        seq: entry.get("seq")?,
        fail: entry.get::<u8>("fail")? == 1,
        deliveries,
    })
}

/// The consumer's input: messages this consumer claimed from idle peers
/// (or its own failures), then new ones. It prefetches up to one read of
/// 16; after a shutdown the stream comes back and [`Messages::prefetched`]
/// says which messages were read but never pulled (they stay pending on the
/// broker, for a peer to claim). Ends once every one of `n` messages is
/// settled on the broker.
pub struct Messages {
    inner: Pin<Box<dyn Stream<Item = Message> + Send>>,
    prefetch: Arc<Mutex<VecDeque<Message>>>,
}

impl Stream for Messages {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl Messages {
    /// The ids read from the broker but not pulled by the pipeline.
    pub fn prefetched(&self) -> Vec<String> {
        let buffer = self.prefetch.lock().unwrap_or_else(|e| e.into_inner());
        buffer.iter().map(|m| m.id.clone()).collect()
    }
}

/// `reader` is a connection of its own: a blocking `XREADGROUP` holds up
/// every other command on a multiplexed connection, acks included.
fn messages(
    reader: MultiplexedConnection,
    con: MultiplexedConnection,
    name: String,
    n: u64,
) -> Messages {
    let prefetch = Arc::new(Mutex::new(VecDeque::<Message>::new()));
    let shared = Arc::clone(&prefetch);
    let pop = move |buffer: &Mutex<VecDeque<Message>>| {
        buffer.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
    };
    let state = (reader, con, name, shared, Instant::now());
    let inner = futures::stream::unfold(
        state,
        move |(mut reader, mut con, name, buffer, mut claimed_at)| async move {
            loop {
                if let Some(next) = pop(&buffer) {
                    return Some((next, (reader, con, name, buffer, claimed_at)));
                }
                let mut read = VecDeque::new();
                if claimed_at.elapsed() >= CLAIM_AFTER / 4 {
                    claimed_at = Instant::now();
                    claim(&mut con, &name, &mut read).await.ok()?;
                }
                if read.is_empty() {
                    let options = StreamReadOptions::default()
                        .group(GROUP, &name)
                        .count(16)
                        .block(100);
                    let reply: Option<StreamReadReply> = reader
                        .xread_options(&[STREAM], &[">"], &options)
                        .await
                        .ok()?;
                    for key in reply.map(|r| r.keys).unwrap_or_default() {
                        read.extend(key.ids.iter().filter_map(|entry| message(entry, 1)));
                    }
                }
                if read.is_empty() && books_settled(&mut con).await.ok()? >= n {
                    return None;
                }
                buffer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(read);
            }
        },
    );
    Messages {
        inner: Box::pin(inner),
        prefetch,
    }
}

async fn books_settled(con: &mut MultiplexedConnection) -> redis::RedisResult<u64> {
    let (a, b, c): (u64, u64, u64) = redis::pipe()
        .scard(PROCESSED)
        .scard(SHED)
        .scard(DEAD)
        .query_async(con)
        .await?;
    Ok(a + b + c)
}

/// Claims messages idle for `CLAIM_AFTER` (a dead or stopped peer's, or a
/// failed one's); dead-letters those delivered too often.
async fn claim(
    con: &mut MultiplexedConnection,
    name: &str,
    buffer: &mut VecDeque<Message>,
) -> redis::RedisResult<()> {
    let options = StreamAutoClaimOptions::default().count(16);
    let idle = CLAIM_AFTER.as_millis() as u64;
    let reply: StreamAutoClaimReply = con
        .xautoclaim_options(STREAM, GROUP, name, idle, "0-0", options)
        .await?;
    let dead_letter = redis::Script::new(ACK_AND_RECORD);
    for entry in &reply.claimed {
        // XAUTOCLAIM counted this delivery; read the count back.
        let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(STREAM)
            .arg(GROUP)
            .arg(&entry.id)
            .arg(&entry.id)
            .arg(1)
            .query_async(con)
            .await?;
        let deliveries = pending.first().map_or(1, |p| p.3);
        if deliveries > MAX_DELIVERIES {
            let _: i64 = dead_letter
                .key(STREAM)
                .key(DEAD)
                .arg(GROUP)
                .arg(&entry.id)
                .invoke_async(con)
                .await?;
        } else if let Some(message) = message(entry, deliveries) {
            buffer.push_back(message);
        }
    }
    Ok(())
}

/// The consumer process: one pipeline over this consumer's share of the
/// group. Returns its report and how many prefetched messages came back
/// with the input after a shutdown (left pending for a peer).
pub async fn consume(
    port: u16,
    name: &str,
    n: u64,
    policy: ShedPolicy,
    stop: impl std::future::Future<Output = ()>,
) -> (Report, usize) {
    let con = connect(port).await.expect("connect");
    let reader = connect(port).await.expect("connect");
    // Under DropNewest the broker delivers faster than 4 workers at 1 ms
    // handle, so some messages are shed (and acked as shed). A consumer that
    // must handle everything picks `Backpressure`: the broker holds the
    // backlog.
    let config = FanOutConfig::new(4, policy)
        .capacity(64)
        .max_queue_age(MAX_QUEUE_AGE)
        .handler_timeout(HANDLER_TIMEOUT);
    let (config, settlements) = config.settle_by(|message: &Message| message.id.clone());
    let (input, back) = hand_back(messages(reader, con.clone(), name.to_owned(), n));
    let (results, shutdown) = input.bounded_fan_out_with(config, |message| async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        if message.fail {
            panic!("message {} cannot be handled", message.seq);
        }
        message.seq
    });
    drop(results);
    let settler = {
        let mut con = con.clone();
        let settlements = settlements;
        tokio::spawn(async move {
            // Whatever records are ready, acked in one round trip.
            let mut batches = settlements.ready_chunks(64);
            while let Some(batch) = batches.next().await {
                let mut pipe = redis::pipe();
                for settled in batch {
                    let set = match settled.outcome {
                        Outcome::Processed => PROCESSED,
                        Outcome::Shed(_) | Outcome::Expired => SHED,
                        // Failed, timed out, cancelled: left pending, claimed again later.
                        _ => continue,
                    };
                    pipe.cmd("EVAL")
                        .arg(ACK_AND_RECORD)
                        .arg(2)
                        .arg(STREAM)
                        .arg(set)
                        .arg(GROUP)
                        .arg(&settled.key)
                        .ignore();
                }
                if !pipe.is_empty() {
                    let _: () = pipe.query_async(&mut con).await.expect("ack");
                }
            }
        })
    };
    let controller = shutdown.controller();
    // Polled through `&mut`: dropping the `JoinReport` in `select!` would drop the
    // handle, and with `results` gone that aborts the pipeline.
    let mut join = shutdown.join();
    let report = tokio::select! {
        report = &mut join => report,
        () = stop => {
            controller.shutdown();
            join.await
        }
    };
    settler.await.expect("settler");
    // What the broker stream had prefetched but the pipeline never pulled:
    // still pending on the broker, so a peer claims it.
    let handed_back = match back.await {
        Some(rest) => rest.prefetched().len(),
        None => 0,
    };
    (report, handed_back)
}

// ===== the scenario, across processes =====

/// A `redis-server` started by `scripts/redis-server.sh`, stopped on drop.
pub struct Server {
    dir: std::path::PathBuf,
    pub port: u16,
}

impl Server {
    pub fn start() -> Server {
        let dir =
            std::env::temp_dir().join(format!("bp-redis-{}-{}", std::process::id(), rand_suffix()));
        let out = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/redis-server.sh"
        ))
        .arg("start")
        .arg(&dir)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/redis-server.sh");
        assert!(out.status.success(), "redis-server did not start");
        let port = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a port");
        Server { dir, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/redis-server.sh"
        ))
        .arg("stop")
        .arg(&self.dir)
        .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Kills every child still running when dropped (a failed run leaves none).
pub struct Children(pub Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What the scenario observed.
#[derive(Debug)]
pub struct Run {
    pub books: Books,
    /// Reports printed by the processes that ended on their own or by
    /// SIGTERM (the killed one has none).
    pub reports: Vec<String>,
    pub elapsed: Duration,
}

/// Runs `consumers` consumer processes made by `spawn(port, name)` over `n`
/// messages. With `chaos`, the second is killed with SIGKILL once a third
/// is settled and the third is sent SIGTERM at two thirds.
pub fn scenario(
    n: u64,
    consumers: usize,
    chaos: bool,
    fail_every: Option<u64>,
    spawn: &dyn Fn(u16, &str) -> Child,
) -> Run {
    let server = Server::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut con = rt.block_on(connect(server.port)).expect("connect");
    rt.block_on(produce(&mut con, n, fail_every))
        .expect("produce");
    let start = Instant::now();
    let mut children = Children(
        (1..=consumers)
            .map(|i| {
                let name = format!("c{i}");
                let child = spawn(server.port, &name);
                (name, child)
            })
            .collect(),
    );
    let deadline = start + Duration::from_secs(90);
    let mut killed = false;
    let mut stopped = false;
    loop {
        assert!(
            Instant::now() < deadline,
            "the scenario did not finish in 90 s"
        );
        let settled = rt.block_on(books_settled(&mut con)).expect("books");
        if chaos && consumers >= 3 {
            if !killed && settled >= n / 3 {
                kill(&children.0[1].1, "-KILL");
                killed = true;
            }
            if !stopped && settled >= 2 * n / 3 {
                kill(&children.0[2].1, "-TERM");
                stopped = true;
            }
        }
        let running = children
            .0
            .iter_mut()
            .map(|(_, child)| matches!(child.try_wait(), Ok(None)))
            .filter(|running| *running)
            .count();
        if running == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = start.elapsed();
    let mut reports = Vec::new();
    for (name, child) in &mut children.0 {
        let mut text = String::new();
        if let Some(out) = child.stdout.as_mut() {
            use std::io::Read;
            let _ = out.read_to_string(&mut text);
        }
        // (A test harness may print its own prefix on the same line.)
        reports.extend(
            text.lines()
                .filter_map(|l| l.find("REPORT ").map(|at| &l[at..]))
                .map(|l| format!("{name}: {l}")),
        );
    }
    let books = rt.block_on(books(&mut con)).expect("audit");
    drop(server);
    Run {
        books,
        reports,
        elapsed,
    }
}

fn kill(child: &Child, signal: &str) {
    let _ = Command::new("kill")
        .arg(signal)
        .arg(child.id().to_string())
        .status();
}

/// The body of one consumer process: runs until every message is settled,
/// or until SIGTERM, then prints its report.
pub fn consumer_process(port: u16, name: &str, n: u64, policy: ShedPolicy) {
    // Handler failures are planned: keep their panic messages off stderr,
    // and show any other.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let planned = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|message| message.ends_with("cannot be handled"));
        if !planned {
            default_hook(info);
        }
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        let (report, handed_back) = consume(port, name, n, policy, async move {
            term.recv().await;
        })
        .await;
        println!("REPORT {report}; handed back {handed_back}");
    });
}

#[allow(dead_code)]
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let exe = std::env::current_exe().expect("current exe");
    let n_of = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    match args.get(1).map(String::as_str) {
        Some("consume") => {
            let policy = match args.get(5).map(String::as_str) {
                Some("lossless") => ShedPolicy::Backpressure,
                _ => ShedPolicy::DropNewest,
            };
            consumer_process(n_of(2, 0) as u16, &args[3], n_of(4, 0), policy);
        }
        Some("bench") => {
            let (k, n) = (n_of(2, 1) as usize, n_of(3, 20_000));
            let spawn = |port: u16, name: &str| spawn_self(&exe, port, name, n, "lossless");
            let run = scenario(n, k, false, None, &spawn);
            assert_eq!(run.books.settled(), n);
            println!(
                "{k} consumer process(es), {n} messages: {:.2} s, {:.0} messages/s end to end",
                run.elapsed.as_secs_f64(),
                n as f64 / run.elapsed.as_secs_f64()
            );
        }
        _ => {
            let n = 3000;
            let spawn = |port: u16, name: &str| spawn_self(&exe, port, name, n, "shedding");
            let run = scenario(n, 3, true, Some(FAIL_EVERY), &spawn);
            for report in &run.reports {
                println!("{report}");
            }
            println!("broker: {:?}", run.books);
            assert_eq!(run.books.settled(), n, "every id in one set");
            assert_eq!((run.books.overlap, run.books.pending), (0, 0));
            assert_eq!(run.books.union, run.books.stream_len);
            println!(
                "every message in exactly one of processed / shed / dead; nothing pending. OK."
            );
        }
    }
}

fn spawn_self(exe: &std::path::Path, port: u16, name: &str, n: u64, policy: &str) -> Child {
    Command::new(exe)
        .args(["consume", &port.to_string(), name, &n.to_string(), policy])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn a consumer")
}

//! One pipeline per consumer of a real broker: a Redis Streams consumer
//! group, three consumer processes, one killed with SIGKILL and one stopped
//! with SIGTERM, and books that close on the broker.
//!
//! ```sh
//! cargo run --example redis_streams              # the scenario: 3 consumers, one killed, one stopped
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
//! | processed | `XACK` + `SADD settled:processed`, one Lua script |
//! | shed (dropped, expired) | `XACK` + `SADD settled:shed`, one Lua script |
//! | failed, timed out | left pending, counted (`HINCRBY failures`): retried via `XAUTOCLAIM`; dead-lettered (`XACK` + `SADD settled:dead`) at the claim after 3 failures |
//! | cancelled, handed back | left pending, for a peer to claim |
//!
//! The script adds the id to its set only if `XACK` acknowledged it, so an
//! id lands in exactly one set however often it was delivered.
//!
//! Messages have a kind (field `kind`): `ok` (1 ms of work), `fail` (the
//! handler panics, on every delivery) or `slow` (the handler never
//! finishes: the handler timeout cuts it off, on every delivery). A
//! handler that completes adds its message id to `journal:ran` before it
//! returns: evidence that the settler does not write. A consumer that ends
//! on its own or by SIGTERM leaves on the broker its report, its settler's
//! log (one entry per settlement record: the outcome, and what was done on
//! the broker with what reply) and the ids its handlers completed, so that
//! `tests/broker.rs` can check each against the others.
//!
//! Roles (see [`Role`]): a consumer may freeze once (a zombie: its whole
//! process stops, as in a long GC pause or a `SIGSTOP`, while peers claim
//! what it held), or meet SIGTERM by cutting off a handler in flight.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::{Pin, pin};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use backpressure_pipeline::{
    Controller, FanOutConfig, FanOutExt, JoinReport, Outcome, Report, ShedPolicy, ShedReason, Stage,
};
use futures::{Stream, StreamExt};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
};
use tokio::sync::mpsc;

pub const STREAM: &str = "jobs";
pub const GROUP: &str = "workers";
pub const PROCESSED: &str = "settled:processed";
pub const SHED: &str = "settled:shed";
pub const DEAD: &str = "settled:dead";
/// The handlers' journal: ids whose handler ran to completion (the
/// handler adds its id just before it returns), in any delivery.
pub const RAN: &str = "journal:ran";
/// Failed or timed-out runs per id, counted by the settlers.
pub const FAILURES: &str = "failures";
/// A message that failed (or timed out) this many times is dead-lettered
/// at its next claim. Failures, not deliveries: a delivery cut off by a
/// kill or a shutdown says nothing against the message.
pub const MAX_FAILURES: u64 = 3;
/// `XAUTOCLAIM` min-idle: a message pending this long is claimed by a peer.
pub const CLAIM_AFTER: Duration = Duration::from_millis(1000);
/// Below the claim threshold minus the handler timeout (see README, "Past
/// one machine"): a message that waited longer is shed, not run after a
/// peer may already have claimed it.
pub const MAX_QUEUE_AGE: Duration = Duration::from_millis(500);
pub const HANDLER_TIMEOUT: Duration = Duration::from_millis(300);
/// In the scenarios, `seq % FAIL_EVERY == FAIL_EVERY - 1` is a `fail` message.
pub const FAIL_EVERY: u64 = 100;
/// ... and `seq % SLOW_EVERY == SLOW_EVERY / 2 - 1` a `slow` one.
pub const SLOW_EVERY: u64 = 500;
/// A zombie freezes once its handlers completed this many messages ...
pub const ZOMBIE_AFTER: u64 = 100;
/// ... and at least this many are queued.
pub const ZOMBIE_QUEUED: usize = 8;
/// A zombie stays frozen at least this long (so that everything it had
/// queued is past the maximum queue age when it resumes) and at most
/// [`ZOMBIE_MAX_FREEZE`] waiting for its peers.
pub const ZOMBIE_MIN_FREEZE: Duration = Duration::from_millis(1200);
pub const ZOMBIE_MAX_FREEZE: Duration = Duration::from_secs(20);
/// Set on the broker when a zombie resumes.
pub const ZOMBIE_WOKE: &str = "event:zombie-woke";
/// A request to redis that takes longer fails the consumer (the client's
/// default, 500 ms, is shorter than a loaded machine's stalls).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Acks `ARGV[2]` and records it in the set `KEYS[2]`, in one step, only if
/// the ack acknowledged it (it was still pending). Returns `XACK`'s reply.
pub const ACK_AND_RECORD: &str = r"
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 1 then
    redis.call('SADD', KEYS[2], ARGV[2])
    return 1
end
return 0
";

/// The key of something a consumer leaves on the broker when it ends:
/// `report`, `log`, `completed`, `handed-back`, `zombie`.
pub fn key_of(what: &str, consumer: &str) -> String {
    format!("{what}:{consumer}")
}

/// What a message asks of its handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// 1 ms of work, then done.
    Ok,
    /// The handler panics, on every delivery.
    Fail,
    /// The handler never finishes (the handler timeout cuts it off).
    Slow,
}

impl Kind {
    /// The kind of message `seq` in the scenarios.
    pub fn of(seq: u64) -> Kind {
        if seq % FAIL_EVERY == FAIL_EVERY - 1 {
            Kind::Fail
        } else if seq % SLOW_EVERY == SLOW_EVERY / 2 - 1 {
            Kind::Slow
        } else {
            Kind::Ok
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ok => "ok",
            Kind::Fail => "fail",
            Kind::Slow => "slow",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        match text {
            "ok" => Some(Kind::Ok),
            "fail" => Some(Kind::Fail),
            "slow" => Some(Kind::Slow),
            _ => None,
        }
    }
}

/// One message as a consumer sees it.
#[derive(Debug)]
pub struct Message {
    pub id: String,
    pub seq: u64,
    pub kind: Kind,
}

pub async fn connect(port: u16) -> redis::RedisResult<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Creates the group and writes `n` messages, `seq` 0..n; with `kinds`,
/// of [`Kind::of`] their `seq`, else all `ok`.
pub async fn produce(
    con: &mut MultiplexedConnection,
    n: u64,
    kinds: bool,
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
        for &seq in chunk {
            let kind = if kinds { Kind::of(seq) } else { Kind::Ok };
            pipe.cmd("XADD")
                .arg(STREAM)
                .arg("*")
                .arg("seq")
                .arg(seq)
                .arg("kind")
                .arg(kind.as_str())
                .ignore();
        }
        let _: () = pipe.query_async(con).await?;
    }
    Ok(())
}

/// The broker's books at the end: the three sets, the handlers' journal,
/// what is still pending, and every message with its kind.
#[derive(Debug)]
pub struct Books {
    pub processed: HashSet<String>,
    pub shed: HashSet<String>,
    pub dead: HashSet<String>,
    pub ran: HashSet<String>,
    pub pending: u64,
    pub kinds: HashMap<String, Kind>,
}

impl Books {
    pub fn settled(&self) -> u64 {
        (self.processed.len() + self.shed.len() + self.dead.len()) as u64
    }

    /// Ids in more than one set (counted once per pair of sets).
    pub fn overlap(&self) -> u64 {
        let pairs = [
            (&self.processed, &self.shed),
            (&self.processed, &self.dead),
            (&self.shed, &self.dead),
        ];
        pairs
            .iter()
            .map(|(a, b)| a.intersection(b).count() as u64)
            .sum()
    }

    /// Distinct ids in the three sets.
    pub fn union(&self) -> u64 {
        let all: HashSet<&String> = self
            .processed
            .iter()
            .chain(&self.shed)
            .chain(&self.dead)
            .collect();
        all.len() as u64
    }

    pub fn stream_len(&self) -> u64 {
        self.kinds.len() as u64
    }

    pub fn kind(&self, id: &str) -> Option<Kind> {
        self.kinds.get(id).copied()
    }

    /// Dead-lettered messages that were not made to fail.
    pub fn dead_but_healthy(&self) -> u64 {
        self.dead
            .iter()
            .filter(|id| self.kind(id) == Some(Kind::Ok))
            .count() as u64
    }

    pub fn summary(&self) -> String {
        format!(
            "processed {}, shed {}, dead {}, pending {}, ran {}; {} in more than one set; {} of {} in a set",
            self.processed.len(),
            self.shed.len(),
            self.dead.len(),
            self.pending,
            self.ran.len(),
            self.overlap(),
            self.union(),
            self.stream_len()
        )
    }
}

pub async fn books(con: &mut MultiplexedConnection) -> redis::RedisResult<Books> {
    let (processed, shed, dead, ran): (
        HashSet<String>,
        HashSet<String>,
        HashSet<String>,
        HashSet<String>,
    ) = redis::pipe()
        .smembers(PROCESSED)
        .smembers(SHED)
        .smembers(DEAD)
        .smembers(RAN)
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
            other => panic!("XPENDING summary: unexpected count {other:?}"),
        },
        other => panic!("XPENDING summary: unexpected reply {other:?}"),
    };
    let entries: redis::streams::StreamRangeReply = con.xrange_all(STREAM).await?;
    let kinds = entries
        .ids
        .iter()
        .map(|entry| {
            let kind: String = entry.get("kind").expect("a message without a kind");
            let kind = Kind::parse(&kind).expect("a message of an unknown kind");
            (entry.id.clone(), kind)
        })
        .collect();
    Ok(Books {
        processed,
        shed,
        dead,
        ran,
        pending,
        kinds,
    })
}

/// The entries pending for `consumer` (delivered to it, not acked).
pub async fn pending_for(
    con: &mut MultiplexedConnection,
    consumer: &str,
) -> redis::RedisResult<Vec<String>> {
    let entries: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(STREAM)
        .arg(GROUP)
        .arg("-")
        .arg("+")
        .arg(1_000_000)
        .arg(consumer)
        .query_async(con)
        .await?;
    Ok(entries.into_iter().map(|(id, ..)| id).collect())
}

/// Messages not yet delivered to any consumer of the group (`XINFO GROUPS`
/// lag), if the server knows.
pub async fn unread(con: &mut MultiplexedConnection) -> redis::RedisResult<Option<u64>> {
    let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(STREAM)
        .query_async(con)
        .await?;
    Ok(groups
        .iter()
        .find(|group| group.get("name") == Some(&redis::Value::BulkString(GROUP.into())))
        .and_then(|group| match group.get("lag") {
            Some(redis::Value::Int(lag)) => u64::try_from(*lag).ok(),
            _ => None,
        }))
}

fn message(entry: &StreamId) -> Option<Message> {
    let kind: String = entry.get("kind")?;
    Some(Message {
        id: entry.id.clone(),
        seq: entry.get("seq")?,
        kind: Kind::parse(&kind)?,
    })
}

/// What this process's handlers did, exactly: written synchronously, so a
/// completed handler is in `completed` exactly when its future returned.
#[derive(Default)]
pub struct Journal(Mutex<Pages>);

#[derive(Default)]
struct Pages {
    /// Taken by the pipeline from the input, per id.
    pulled: HashMap<String, (u32, Kind)>,
    /// Handlers started, per id.
    started: HashMap<String, u32>,
    /// Handlers completed, in order (an id twice if handled twice here).
    completed: Vec<String>,
}

impl Journal {
    fn pages(&self) -> MutexGuard<'_, Pages> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pulled(&self, message: &Message) {
        let mut pages = self.pages();
        let entry = pages
            .pulled
            .entry(message.id.clone())
            .or_insert((0, message.kind));
        entry.0 += 1;
    }

    fn started(&self, id: &str) {
        *self.pages().started.entry(id.to_owned()).or_insert(0) += 1;
    }

    fn completed(&self, id: String) {
        self.pages().completed.push(id);
    }

    fn completed_count(&self) -> u64 {
        self.pages().completed.len() as u64
    }

    /// Taken from the input but not started: queued, or held by the intake
    /// waiting for room.
    fn waiting(&self) -> Vec<(String, Kind)> {
        let pages = self.pages();
        pages
            .pulled
            .iter()
            .filter(|(id, (n, _))| pages.started.get(*id).copied().unwrap_or(0) < *n)
            .map(|(id, (_, kind))| (id.clone(), *kind))
            .collect()
    }

    fn completed_ids(&self) -> Vec<String> {
        self.pages().completed.clone()
    }
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
/// every other command on a multiplexed connection, acks included. A redis
/// error panics the stream (the pipeline reports `input panicked`), so
/// that no failure passes for the end of the input.
fn messages(
    reader: MultiplexedConnection,
    con: MultiplexedConnection,
    name: String,
    n: u64,
    journal: Arc<Journal>,
) -> Messages {
    let prefetch = Arc::new(Mutex::new(VecDeque::<Message>::new()));
    let shared = Arc::clone(&prefetch);
    let pop = move |buffer: &Mutex<VecDeque<Message>>| {
        buffer.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
    };
    let state = (reader, con, name, shared, Instant::now());
    let inner = futures::stream::unfold(
        state,
        move |(mut reader, mut con, name, buffer, mut claimed_at)| {
            let journal = Arc::clone(&journal);
            async move {
                loop {
                    if let Some(next) = pop(&buffer) {
                        journal.pulled(&next);
                        return Some((next, (reader, con, name, buffer, claimed_at)));
                    }
                    let mut read = VecDeque::new();
                    if claimed_at.elapsed() >= CLAIM_AFTER / 4 {
                        claimed_at = Instant::now();
                        claim(&mut con, &name, &mut read).await.expect("XAUTOCLAIM");
                    }
                    if read.is_empty() {
                        let options = StreamReadOptions::default()
                            .group(GROUP, &name)
                            .count(16)
                            .block(100);
                        let reply: Option<StreamReadReply> = reader
                            .xread_options(&[STREAM], &[">"], &options)
                            .await
                            .expect("XREADGROUP");
                        for key in reply.map(|r| r.keys).unwrap_or_default() {
                            read.extend(key.ids.iter().map(|entry| {
                                message(entry).expect("a message without seq or kind")
                            }));
                        }
                    }
                    if read.is_empty() && books_settled(&mut con).await.expect("SCARD") >= n {
                        return None;
                    }
                    buffer
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(read);
                }
            }
        },
    );
    Messages {
        inner: Box::pin(inner),
        prefetch,
    }
}

pub async fn books_settled(con: &mut MultiplexedConnection) -> redis::RedisResult<u64> {
    let (a, b, c): (u64, u64, u64) = redis::pipe()
        .scard(PROCESSED)
        .scard(SHED)
        .scard(DEAD)
        .query_async(con)
        .await?;
    Ok(a + b + c)
}

/// Claims messages idle for `CLAIM_AFTER` (a dead, frozen or stopped
/// peer's, or a failed one's); dead-letters those that failed
/// `MAX_FAILURES` times.
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
        let failures: Option<u64> = con.hget(FAILURES, &entry.id).await?;
        if failures.unwrap_or(0) >= MAX_FAILURES {
            let _: i64 = dead_letter
                .key(STREAM)
                .key(DEAD)
                .arg(GROUP)
                .arg(&entry.id)
                .invoke_async(con)
                .await?;
        } else {
            buffer.push_back(message(entry).expect("a message without seq or kind"));
        }
    }
    Ok(())
}

/// What a consumer does besides consuming.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Runs until every message is settled; SIGTERM shuts it down
    /// gracefully (queued and in-flight messages are still handled).
    Plain,
    /// Like `Plain`, but freezes once (the whole process: its only thread
    /// blocks), after [`ZOMBIE_AFTER`] completed handlers with at least
    /// [`ZOMBIE_QUEUED`] messages queued, until its peers have claimed and
    /// settled every healthy message it held: when it resumes, what it had
    /// queued has expired and its acks find those messages already acked.
    Zombie,
    /// On SIGTERM, the next handler to start holds (never finishes); once
    /// one holds and messages are queued, the pipeline is aborted: one
    /// handler at least is cut off in flight, and queued messages are
    /// cancelled, all left pending for a peer.
    CutOff,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Plain => "plain",
            Role::Zombie => "zombie",
            Role::CutOff => "cut-off",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "plain" => Some(Role::Plain),
            "zombie" => Some(Role::Zombie),
            "cut-off" => Some(Role::CutOff),
            _ => None,
        }
    }
}

pub fn policy_name(policy: ShedPolicy) -> &'static str {
    match policy {
        ShedPolicy::DropNewest => "drop-newest",
        ShedPolicy::DropOldest => "drop-oldest",
        ShedPolicy::Backpressure => "backpressure",
        _ => "other",
    }
}

pub fn parse_policy(text: &str) -> Option<ShedPolicy> {
    match text {
        "drop-newest" => Some(ShedPolicy::DropNewest),
        "drop-oldest" => Some(ShedPolicy::DropOldest),
        "backpressure" => Some(ShedPolicy::Backpressure),
        _ => None,
    }
}

/// One consumer process's settings.
#[derive(Clone, Debug)]
pub struct Consumer {
    pub port: u16,
    pub name: String,
    /// Messages in the stream: the input ends once this many are settled.
    pub n: u64,
    pub policy: ShedPolicy,
    pub role: Role,
    /// Write the handlers' journal (`journal:ran`): one more round trip per
    /// message, off for the throughput runs.
    pub journal: bool,
}

/// The settlement record's outcome, as a word.
pub fn label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Processed => "processed",
        Outcome::Shed(ShedReason::Newest) => "queue-full",
        Outcome::Shed(ShedReason::Oldest) => "evicted",
        Outcome::Failed => "failed",
        Outcome::TimedOut => "timed-out",
        Outcome::Expired => "expired",
        Outcome::Cancelled(Stage::Queued) => "cancelled-queued",
        Outcome::Cancelled(Stage::InFlight) => "cancelled-in-flight",
        _ => "other",
    }
}

/// What the settler did with one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Ran the ack script for the set; `acked`: `XACK` acknowledged it.
    Ack { set: String, acked: bool },
    /// Counted a failure; left pending.
    Failure,
    /// Left pending.
    Pending,
}

/// One line of a settler's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub outcome: String,
    pub key: String,
    pub action: Action,
}

impl Entry {
    pub fn encode(&self) -> String {
        match &self.action {
            Action::Ack { set, acked } => {
                format!(
                    "{} {} ack {set} {}",
                    self.outcome,
                    self.key,
                    u8::from(*acked)
                )
            }
            Action::Failure => format!("{} {} failure", self.outcome, self.key),
            Action::Pending => format!("{} {} pending", self.outcome, self.key),
        }
    }

    pub fn decode(line: &str) -> Option<Entry> {
        let words: Vec<&str> = line.split(' ').collect();
        let action = match words.get(2..)? {
            ["ack", set, "1"] => Action::Ack {
                set: (*set).to_owned(),
                acked: true,
            },
            ["ack", set, "0"] => Action::Ack {
                set: (*set).to_owned(),
                acked: false,
            },
            ["failure"] => Action::Failure,
            ["pending"] => Action::Pending,
            _ => return None,
        };
        Some(Entry {
            outcome: (*words.first()?).to_owned(),
            key: (*words.get(1)?).to_owned(),
            action,
        })
    }
}

/// How a consumer ended.
pub struct Ended {
    pub report: Report,
    /// The settler's log, one entry per settlement record, in order.
    pub log: Vec<Entry>,
    /// The ids whose handler completed in this process, in order.
    pub completed: Vec<String>,
    /// Read from the broker, never pulled: handed back after a stop.
    pub handed_back: Vec<String>,
    pub frozen: Option<Frozen>,
}

/// A zombie's freeze.
#[derive(Clone, Debug)]
pub struct Frozen {
    /// Messages taken from the input and not started when it froze.
    pub waiting: usize,
    /// Of those, the healthy ones.
    pub healthy: usize,
    /// Of those, how many peers had settled when it resumed, and how many
    /// of them as processed.
    pub settled_by_peers: usize,
    pub processed_by_peers: usize,
    pub frozen_for: Duration,
}

/// The `CutOff` role's hold: armed at SIGTERM, taken by the next handler
/// to start, which then never finishes.
struct Hold {
    armed: AtomicBool,
    holders: mpsc::UnboundedSender<Arc<AtomicBool>>,
}

/// Cleared when the holding handler's future is dropped (cut off, or timed out).
struct Alive(Arc<AtomicBool>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// The consumer: one pipeline over this consumer's share of the group.
/// Run it on a current-thread runtime: the `Zombie` and `CutOff` roles rely
/// on no handler running while the consumer's own task looks at the
/// pipeline.
pub async fn consume(consumer: &Consumer, stop: impl Future<Output = ()>) -> Ended {
    let con = connect(consumer.port).await.expect("connect");
    let reader = connect(consumer.port).await.expect("connect");
    let journal = Arc::new(Journal::default());
    let (hold, mut holders) = if consumer.role == Role::CutOff {
        let (tx, rx) = mpsc::unbounded_channel();
        let hold = Hold {
            armed: AtomicBool::new(false),
            holders: tx,
        };
        (Some(Arc::new(hold)), Some(rx))
    } else {
        (None, None)
    };
    // Under DropNewest or DropOldest the broker delivers faster than 4
    // workers at 1 ms per message (a read of 16 is one round trip, a
    // message is at least one), so some messages are shed (and acked as
    // shed). A consumer that must handle everything picks `Backpressure`:
    // the broker holds the backlog.
    let config = FanOutConfig::new(4, consumer.policy)
        .capacity(64)
        .max_queue_age(MAX_QUEUE_AGE)
        .handler_timeout(HANDLER_TIMEOUT);
    let handler = {
        let journal = Arc::clone(&journal);
        let hold = hold.clone();
        let con = con.clone();
        let record = consumer.journal;
        move |message: Message| {
            let journal = Arc::clone(&journal);
            let hold = hold.clone();
            let mut con = con.clone();
            async move {
                journal.started(&message.id);
                if let Some(hold) = hold.filter(|hold| hold.armed.swap(false, Ordering::SeqCst)) {
                    let alive = Arc::new(AtomicBool::new(true));
                    let _alive = Alive(Arc::clone(&alive));
                    // The consumer's task holds the receiver while the
                    // pipeline runs; should it be gone, this still holds.
                    let _ = hold.holders.send(alive);
                    std::future::pending::<()>().await;
                }
                match message.kind {
                    Kind::Fail => panic!("message {} cannot be handled", message.seq),
                    Kind::Slow => std::future::pending::<()>().await,
                    Kind::Ok => {}
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                if record {
                    let () = con.sadd(RAN, &message.id).await.expect("SADD journal:ran");
                }
                // Nothing awaited after this: the id is in `completed`
                // exactly when the handler completed.
                journal.completed(message.id);
                message.seq
            }
        }
    };
    let input = messages(
        reader,
        con.clone(),
        consumer.name.clone(),
        consumer.n,
        Arc::clone(&journal),
    );
    // Every outcome comes back keyed by the message id; the input comes back
    // after a stop, with what it prefetched.
    let (config, settlements) = config.settle_by(|message: &Message| message.id.clone());
    let (input, input_back) = backpressure_pipeline::hand_back(input);
    let (results, shutdown) = input.bounded_fan_out_with(config, handler);
    drop(results);
    let settler = {
        let mut con = con.clone();
        tokio::spawn(async move {
            let mut log = Vec::new();
            // Whatever records are ready, acked in one round trip.
            let mut batches = settlements.ready_chunks(64);
            while let Some(batch) = batches.next().await {
                let mut pipe = redis::pipe();
                // (outcome, key, the ack's set, or what else was done)
                let mut done = Vec::with_capacity(batch.len());
                for settled in batch {
                    let outcome = label(settled.outcome);
                    let set = match settled.outcome {
                        Outcome::Processed => PROCESSED,
                        Outcome::Shed(_) | Outcome::Expired => SHED,
                        Outcome::Failed | Outcome::TimedOut => {
                            pipe.cmd("HINCRBY")
                                .arg(FAILURES)
                                .arg(&settled.key)
                                .arg(1)
                                .ignore();
                            done.push((outcome, settled.key, Err(Action::Failure)));
                            continue;
                        }
                        // Cancelled: left pending, claimed by a peer later.
                        _ => {
                            done.push((outcome, settled.key, Err(Action::Pending)));
                            continue;
                        }
                    };
                    pipe.cmd("EVAL")
                        .arg(ACK_AND_RECORD)
                        .arg(2)
                        .arg(STREAM)
                        .arg(set)
                        .arg(GROUP)
                        .arg(&settled.key);
                    done.push((outcome, settled.key, Ok(set)));
                }
                let acks = done.iter().filter(|(_, _, set)| set.is_ok()).count();
                let replies: Vec<i64> = if acks > 0 {
                    pipe.query_async(&mut con).await.expect("ack")
                } else if !pipe.is_empty() {
                    let () = pipe.query_async(&mut con).await.expect("HINCRBY failures");
                    Vec::new()
                } else {
                    Vec::new()
                };
                assert_eq!(replies.len(), acks, "one reply per ack");
                let mut replies = replies.into_iter();
                for (outcome, key, set) in done {
                    let action = match set {
                        Ok(set) => {
                            let reply = replies.next().expect("one reply per ack");
                            assert!(reply == 0 || reply == 1, "the ack script replied {reply}");
                            Action::Ack {
                                set: set.to_owned(),
                                acked: reply == 1,
                            }
                        }
                        Err(action) => action,
                    };
                    log.push(Entry {
                        outcome: outcome.to_owned(),
                        key,
                        action,
                    });
                }
            }
            log
        })
    };
    let controller = shutdown.controller();
    // Polled through `&mut`: dropping the `JoinReport` in `select!` would drop the
    // handle, and with `results` gone that aborts the pipeline.
    let mut join = shutdown.join();
    let mut stop = pin!(stop);
    let mut stopping = false;
    let mut zombie = consumer.role == Role::Zombie;
    let mut frozen = None;
    let report = loop {
        tokio::select! {
            report = &mut join => break report,
            () = &mut stop, if !stopping => {
                stopping = true;
                match (&hold, holders.as_mut()) {
                    (Some(hold), Some(holders)) => {
                        if let Some(report) = cut_off(&controller, &mut join, hold, holders).await {
                            break report;
                        }
                    }
                    _ => controller.shutdown(),
                }
            }
            () = tokio::time::sleep(Duration::from_millis(5)), if zombie => {
                // One thread: no worker moves while this looks and freezes.
                if journal.completed_count() >= ZOMBIE_AFTER
                    && controller.stats().queue_depth >= ZOMBIE_QUEUED
                {
                    zombie = false;
                    let waiting = journal.waiting();
                    let freeze = freeze(consumer.port, &waiting);
                    frozen = Some(freeze.expect("the zombie's redis connection"));
                }
            }
        }
    };
    let log = settler.await.expect("settler");
    // What the broker stream had prefetched but the pipeline never pulled:
    // still pending on the broker, so a peer claims it.
    let handed_back = match input_back.await {
        Some(rest) => rest.prefetched(),
        None => Vec::new(),
    };
    Ended {
        report,
        log,
        completed: journal.completed_ids(),
        handed_back,
        frozen,
    }
}

/// The `CutOff` role at SIGTERM: arms the hold and aborts once a handler
/// holds and messages are queued. On one thread nothing moves between the
/// look and the abort, so the holding handler is cut off in flight (not
/// timed out), and the queued messages are cancelled. A holder that timed
/// out before this task saw it (a stalled machine) is replaced by the next
/// handler to start. Returns the report if the pipeline ended first.
async fn cut_off(
    controller: &Controller,
    join: &mut JoinReport,
    hold: &Hold,
    holders: &mut mpsc::UnboundedReceiver<Arc<AtomicBool>>,
) -> Option<Report> {
    hold.armed.store(true, Ordering::SeqCst);
    loop {
        let alive = tokio::select! {
            report = &mut *join => return Some(report),
            alive = holders.recv() => alive?,
        };
        loop {
            if !alive.load(Ordering::SeqCst) {
                hold.armed.store(true, Ordering::SeqCst);
                break;
            }
            if controller.stats().queue_depth >= 1 {
                controller.abort();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// The `Zombie` role's freeze: blocks this process's only thread, polling
/// the broker on a connection of its own, until every healthy message in
/// `waiting` is settled by a peer (at least `ZOMBIE_MIN_FREEZE`, at most
/// `ZOMBIE_MAX_FREEZE`); then says so on the broker.
fn freeze(port: u16, waiting: &[(String, Kind)]) -> redis::RedisResult<Frozen> {
    let started = Instant::now();
    let healthy: Vec<&String> = waiting
        .iter()
        .filter(|(_, kind)| *kind == Kind::Ok)
        .map(|(id, _)| id)
        .collect();
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut con = client.get_connection()?;
    let (mut settled, mut processed) = (0, 0);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        if !healthy.is_empty() {
            let (p, s, d): (Vec<bool>, Vec<bool>, Vec<bool>) = redis::pipe()
                .cmd("SMISMEMBER")
                .arg(PROCESSED)
                .arg(&healthy)
                .cmd("SMISMEMBER")
                .arg(SHED)
                .arg(&healthy)
                .cmd("SMISMEMBER")
                .arg(DEAD)
                .arg(&healthy)
                .query(&mut con)?;
            settled = (0..healthy.len()).filter(|&i| p[i] || s[i] || d[i]).count();
            processed = p.iter().filter(|&&p| p).count();
        }
        let elapsed = started.elapsed();
        if (settled == healthy.len() && elapsed >= ZOMBIE_MIN_FREEZE)
            || elapsed >= ZOMBIE_MAX_FREEZE
        {
            break;
        }
    }
    let () = redis::cmd("SET").arg(ZOMBIE_WOKE).arg(1).query(&mut con)?;
    Ok(Frozen {
        waiting: waiting.len(),
        healthy: healthy.len(),
        settled_by_peers: settled,
        processed_by_peers: processed,
        frozen_for: started.elapsed(),
    })
}

/// Leaves what a consumer ended with on the broker, for the audit.
async fn leave(
    con: &mut MultiplexedConnection,
    name: &str,
    ended: &Ended,
) -> redis::RedisResult<()> {
    let r = &ended.report;
    let fields: [(&str, String); 13] = [
        ("produced", r.produced.to_string()),
        ("processed", r.processed.to_string()),
        ("dropped", r.dropped.to_string()),
        ("failed", r.failed.to_string()),
        ("timed_out", r.timed_out.to_string()),
        ("expired", r.expired.to_string()),
        ("cancelled", r.cancelled.to_string()),
        ("delivered", r.delivered.to_string()),
        ("discarded", r.discarded.to_string()),
        ("workers", r.workers.to_string()),
        ("aborted", r.aborted.to_string()),
        ("conserved", u8::from(r.is_conserved()).to_string()),
        ("intake", format!("{:?}", r.intake)),
    ];
    let mut pipe = redis::pipe();
    pipe.hset_multiple(key_of("report", name), &fields).ignore();
    for chunk in ended.log.chunks(500) {
        let lines: Vec<String> = chunk.iter().map(Entry::encode).collect();
        pipe.rpush(key_of("log", name), lines).ignore();
    }
    for chunk in ended.completed.chunks(500) {
        pipe.rpush(key_of("completed", name), chunk).ignore();
    }
    if !ended.handed_back.is_empty() {
        pipe.rpush(key_of("handed-back", name), &ended.handed_back)
            .ignore();
    }
    if let Some(f) = &ended.frozen {
        let fields = [
            ("waiting", f.waiting.to_string()),
            ("healthy", f.healthy.to_string()),
            ("settled_by_peers", f.settled_by_peers.to_string()),
            ("processed_by_peers", f.processed_by_peers.to_string()),
            ("frozen_ms", f.frozen_for.as_millis().to_string()),
        ];
        pipe.hset_multiple(key_of("zombie", name), &fields).ignore();
    }
    pipe.query_async(con).await
}

// ===== the scenario, across processes =====

/// A `redis-server` started by `scripts/redis-server.sh`, stopped on drop.
pub struct Server {
    dir: std::path::PathBuf,
    pub port: u16,
}

pub const REDIS_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/redis-server.sh");

impl Server {
    pub fn start() -> Server {
        let dir =
            std::env::temp_dir().join(format!("bp-redis-{}-{}", std::process::id(), rand_suffix()));
        let out = Command::new(REDIS_SCRIPT)
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
        // Best effort: a server left behind has no persistence and is
        // bound to 127.0.0.1; its directory goes either way.
        let _ = Command::new(REDIS_SCRIPT)
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
            // Already gone is fine: only a live child needs killing.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a consumer left on the broker (nothing if it was killed).
#[derive(Debug, Default)]
pub struct Left {
    pub report: HashMap<String, String>,
    pub log: Vec<Entry>,
    pub completed: Vec<String>,
    pub handed_back: Vec<String>,
    pub zombie: HashMap<String, String>,
}

impl Left {
    /// A report field as a number.
    pub fn count(&self, field: &str) -> u64 {
        let value = self
            .report
            .get(field)
            .unwrap_or_else(|| panic!("no {field} in the report {:?}", self.report));
        value
            .parse()
            .unwrap_or_else(|_| panic!("{field} = {value} is not a number"))
    }

    /// Settler log entries with this outcome.
    pub fn outcomes(&self, outcome: &str) -> u64 {
        self.log.iter().filter(|e| e.outcome == outcome).count() as u64
    }
}

/// The chaos of a scenario.
#[derive(Clone, Copy, Debug)]
pub struct Chaos {
    /// SIGKILL the second consumer once this many messages are settled
    /// (and a zombie, if any, has resumed), at a moment it holds pending
    /// messages.
    pub kill_at: Option<u64>,
    /// SIGTERM the third consumer once this many are settled (and after
    /// the kill, if any).
    pub stop_at: Option<u64>,
    /// One consumer is a zombie: wait for it to resume before the kill.
    pub zombie: bool,
}

impl Chaos {
    pub const NONE: Chaos = Chaos {
        kill_at: None,
        stop_at: None,
        zombie: false,
    };
}

/// What the scenario observed.
#[derive(Debug)]
pub struct Run {
    pub books: Books,
    /// Per consumer, in order: what it left on the broker.
    pub consumers: Vec<(String, Left)>,
    /// Printed `REPORT` lines.
    pub reports: Vec<String>,
    /// The ids pending for the killed consumer at its kill (it was stopped
    /// with SIGSTOP, its pending entries read, then killed).
    pub killed_holding: Option<Vec<String>>,
    /// The replies of the ack script run once more for every settled id,
    /// against a set it is not in (each must be 0), and whether the sets
    /// were unchanged afterwards.
    pub probe_replies: Vec<i64>,
    pub probe_left_sets_alone: bool,
    /// The chaos as it happened: what, at how many settled, when.
    pub events: Vec<(String, u64, Duration)>,
    pub elapsed: Duration,
}

impl Run {
    pub fn left(&self, name: &str) -> &Left {
        &self
            .consumers
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no consumer {name}"))
            .1
    }
}

/// Runs `consumers` consumer processes made by `spawn(port, name)` (named
/// c1, c2, ...) over `n` messages (of [`Kind::of`] their `seq` with
/// `kinds`), with `chaos`; then audits the broker and collects what the
/// consumers left there.
pub fn scenario(
    n: u64,
    consumers: usize,
    kinds: bool,
    chaos: Chaos,
    spawn: &dyn Fn(u16, &str) -> Child,
) -> Run {
    let server = Server::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut con = rt.block_on(connect(server.port)).expect("connect");
    rt.block_on(produce(&mut con, n, kinds)).expect("produce");
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
    let mut killed_holding = None;
    let mut stopped = false;
    let mut events = Vec::new();
    let mut woke_seen = false;
    loop {
        assert!(
            Instant::now() < deadline,
            "the scenario did not finish in 90 s"
        );
        let settled = rt.block_on(books_settled(&mut con)).expect("books");
        if chaos.zombie && !woke_seen {
            let woke: Option<u8> = rt.block_on(con.get(ZOMBIE_WOKE)).expect("GET");
            if woke.is_some() {
                woke_seen = true;
                events.push(("zombie resumed".to_owned(), settled, start.elapsed()));
            }
        }
        let kill_due = chaos.kill_at.is_some_and(|at| settled >= at);
        let kill_now = kill_due && consumers >= 2 && killed_holding.is_none();
        if kill_now && (!chaos.zombie || woke_seen) {
            let (name, child) = &children.0[1];
            // Frozen, it cannot ack: what is pending for it now is what it
            // holds when killed.
            signal(child, "-STOP");
            let holding = rt.block_on(pending_for(&mut con, name)).expect("XPENDING");
            if holding.is_empty() {
                signal(child, "-CONT");
            } else {
                signal(child, "-KILL");
                let unread = rt.block_on(unread(&mut con)).expect("XINFO GROUPS");
                let what = format!(
                    "SIGKILL {name} holding {} ({unread:?} unread)",
                    holding.len()
                );
                events.push((what, settled, start.elapsed()));
                killed_holding = Some(holding);
            }
        }
        let stop_due = chaos.stop_at.is_some_and(|at| settled >= at);
        if stop_due
            && consumers >= 3
            && (killed_holding.is_some() || chaos.kill_at.is_none())
            && !stopped
        {
            signal(&children.0[2].1, "-TERM");
            let unread = rt.block_on(unread(&mut con)).expect("XINFO GROUPS");
            let what = format!("SIGTERM {} ({unread:?} unread)", children.0[2].0);
            events.push((what, settled, start.elapsed()));
            stopped = true;
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
            out.read_to_string(&mut text).expect("a consumer's stdout");
        }
        // (A test harness may print its own prefix on the same line.)
        reports.extend(
            text.lines()
                .filter_map(|l| l.find("REPORT ").map(|at| &l[at..]))
                .map(|l| format!("{name}: {l}")),
        );
    }
    let books = rt.block_on(books(&mut con)).expect("audit");
    let consumers = children
        .0
        .iter()
        .map(|(name, _)| {
            let left = rt
                .block_on(left_by(&mut con, name))
                .expect("what a consumer left");
            (name.clone(), left)
        })
        .collect();
    let (probe_replies, probe_left_sets_alone) =
        rt.block_on(probe(&mut con, &books)).expect("probe");
    drop(server);
    Run {
        books,
        consumers,
        reports,
        killed_holding,
        probe_replies,
        probe_left_sets_alone,
        events,
        elapsed,
    }
}

async fn left_by(con: &mut MultiplexedConnection, name: &str) -> redis::RedisResult<Left> {
    type Fields = HashMap<String, String>;
    let (report, log, completed, handed_back, zombie): (
        Fields,
        Vec<String>,
        Vec<String>,
        Vec<String>,
        Fields,
    ) = redis::pipe()
        .hgetall(key_of("report", name))
        .lrange(key_of("log", name), 0, -1)
        .lrange(key_of("completed", name), 0, -1)
        .lrange(key_of("handed-back", name), 0, -1)
        .hgetall(key_of("zombie", name))
        .query_async(con)
        .await?;
    let log = log
        .iter()
        .map(|line| Entry::decode(line).unwrap_or_else(|| panic!("a log line: {line}")))
        .collect();
    Ok(Left {
        report,
        log,
        completed,
        handed_back,
        zombie,
    })
}

/// Runs the ack script once more for every settled id, against a set it is
/// not in: `XACK` finds nothing pending, so each reply must be 0 and no set
/// may change.
async fn probe(
    con: &mut MultiplexedConnection,
    books: &Books,
) -> redis::RedisResult<(Vec<i64>, bool)> {
    let mut pipe = redis::pipe();
    let wrong = [
        (&books.processed, SHED),
        (&books.shed, PROCESSED),
        (&books.dead, PROCESSED),
    ];
    for (ids, set) in wrong {
        for id in ids {
            pipe.cmd("EVAL")
                .arg(ACK_AND_RECORD)
                .arg(2)
                .arg(STREAM)
                .arg(set)
                .arg(GROUP)
                .arg(id);
        }
    }
    let replies: Vec<i64> = if pipe.is_empty() {
        Vec::new()
    } else {
        pipe.query_async(con).await?
    };
    let after = self::books(con).await?;
    let alone =
        after.processed == books.processed && after.shed == books.shed && after.dead == books.dead;
    Ok((replies, alone))
}

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .arg(signal)
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {} failed", child.id());
}

/// The body of one consumer process: runs until every message is settled,
/// or until SIGTERM, then leaves its report, log and journal on the broker
/// and prints its report.
pub fn consumer_process(consumer: &Consumer) {
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
    // One thread: see `consume`.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        let ended = consume(consumer, async move {
            term.recv().await;
        })
        .await;
        let mut con = connect(consumer.port).await.expect("connect");
        leave(&mut con, &consumer.name, &ended)
            .await
            .expect("leave the report on the broker");
        println!(
            "REPORT {}; handed back {}",
            ended.report,
            ended.handed_back.len()
        );
    });
}

#[allow(dead_code)]
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let exe = std::env::current_exe().expect("current exe");
    let n_of = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    match args.get(1).map(String::as_str) {
        Some("consume") => {
            // consume PORT NAME N POLICY ROLE JOURNAL
            let consumer = Consumer {
                port: n_of(2, 0) as u16,
                name: args[3].clone(),
                n: n_of(4, 0),
                policy: parse_policy(&args[5]).expect("a policy"),
                role: Role::parse(&args[6]).expect("a role"),
                journal: args[7] == "1",
            };
            consumer_process(&consumer);
        }
        Some("bench") => {
            let (k, n) = (n_of(2, 1) as usize, n_of(3, 20_000));
            let spawn = |port: u16, name: &str| {
                spawn_self(
                    &exe,
                    port,
                    name,
                    n,
                    ShedPolicy::Backpressure,
                    Role::Plain,
                    false,
                )
            };
            let run = scenario(n, k, false, Chaos::NONE, &spawn);
            assert_eq!(run.books.settled(), n);
            println!(
                "{k} consumer process(es), {n} messages: {:.2} s, {:.0} messages/s end to end",
                run.elapsed.as_secs_f64(),
                n as f64 / run.elapsed.as_secs_f64()
            );
        }
        _ => {
            // c1 sheds the newest, c2 (killed) too, c3 evicts the oldest
            // and is stopped with a handler cut off in flight.
            let n = 3000;
            let spawn = |port: u16, name: &str| {
                let (policy, role) = match name {
                    "c3" => (ShedPolicy::DropOldest, Role::CutOff),
                    _ => (ShedPolicy::DropNewest, Role::Plain),
                };
                spawn_self(&exe, port, name, n, policy, role, true)
            };
            let chaos = Chaos {
                kill_at: Some(n / 4),
                stop_at: Some(n / 2),
                zombie: false,
            };
            let run = scenario(n, 3, true, chaos, &spawn);
            for report in &run.reports {
                println!("{report}");
            }
            for (name, left) in &run.consumers {
                let mut outcomes: Vec<(&str, u64)> = Vec::new();
                for entry in &left.log {
                    match outcomes.iter_mut().find(|(o, _)| *o == entry.outcome) {
                        Some((_, count)) => *count += 1,
                        None => outcomes.push((entry.outcome.as_str(), 1)),
                    }
                }
                match &run.killed_holding {
                    Some(holding) if left.report.is_empty() => {
                        println!("{name}: killed holding {} pending messages", holding.len());
                    }
                    _ => println!("{name}: settlement records {outcomes:?}"),
                }
            }
            println!("broker: {}", run.books.summary());
            assert_eq!(run.books.settled(), n, "every id in one set");
            assert_eq!((run.books.overlap(), run.books.pending), (0, 0));
            assert_eq!(run.books.union(), run.books.stream_len());
            assert!(run.books.processed.is_subset(&run.books.ran));
            println!(
                "every message in exactly one of processed / shed / dead, every processed one run \
                 to completion by a handler; nothing pending. OK ({:.1} s).",
                run.elapsed.as_secs_f64()
            );
        }
    }
}

fn spawn_self(
    exe: &std::path::Path,
    port: u16,
    name: &str,
    n: u64,
    policy: ShedPolicy,
    role: Role,
    journal: bool,
) -> Child {
    Command::new(exe)
        .args([
            "consume",
            &port.to_string(),
            name,
            &n.to_string(),
            policy_name(policy),
            role.as_str(),
            if journal { "1" } else { "0" },
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn a consumer")
}

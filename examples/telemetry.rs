//! Real telemetry over real UDP sockets on 127.0.0.1: a position flood shed
//! with `DropOldest`, and a command feed shed with `DropNewest` behind a
//! rate-limited alarm. Prints where every datagram went (lost in the kernel,
//! shed, processed) and exits non-zero if the accounting does not balance.
//!
//! Run with `cargo run --example telemetry` (about 1.2 s).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use backpressure_pipeline::{FanOutConfig, FanOutExt, Report, ShedPolicy, ShutdownHandle};
use bytes::{Buf, BufMut, BytesMut};
use futures::{SinkExt, Stream, StreamExt, future};
use tokio::{net::UdpSocket, task::JoinHandle, time::sleep, time::timeout};
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::{sync::CancellationToken, udp::UdpFramed};

const SEND_FOR: Duration = Duration::from_secs(1); // how long each sender runs
const END_GRACE: Duration = Duration::from_millis(500); // for an end marker, once the sender is done
const DEADLINE: Duration = Duration::from_secs(10); // whole run; past it everything is aborted
const ALARM_EVERY: Duration = Duration::from_millis(500);
// Sender pacing, (burst, pause between bursts): positions as fast as the
// socket takes them; 4000 commands/s, far more than one worker handles.
const FLOOD: (u64, Duration) = (1000, Duration::ZERO);
const COMMANDS: (u64, Duration) = (40, Duration::from_millis(10));

/// One datagram is one message: a tag byte, then big-endian fields.
#[derive(Clone, Copy, Debug)]
enum Msg {
    Position(Position),
    Command(u64),
    End,
}

#[derive(Clone, Copy, Debug)]
struct Position {
    seq: u64,
    x: f64,
    y: f64,
}

struct WireCodec;

impl Decoder for WireCodec {
    type Item = Msg;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Msg>> {
        if src.is_empty() {
            return Ok(None);
        }
        // UdpFramed hands over exactly one datagram. Take all of it, also when
        // it is malformed: after an error UdpFramed keeps its buffer and would
        // decode the same bytes again on every poll.
        let mut d = src.split();
        let (tag, len) = (d.get_u8(), d.len());
        Ok(Some(match (tag, len) {
            (b'P', 24) => Msg::Position(Position {
                seq: d.get_u64(),
                x: d.get_f64(),
                y: d.get_f64(),
            }),
            (b'C', 8) => Msg::Command(d.get_u64()),
            (b'E', 0) => Msg::End,
            _ => {
                let why = format!("tag {tag:#04x} with {len} payload bytes");
                return Err(io::Error::new(io::ErrorKind::InvalidData, why));
            }
        }))
    }
}

impl Encoder<Msg> for WireCodec {
    type Error = io::Error;

    fn encode(&mut self, msg: Msg, dst: &mut BytesMut) -> io::Result<()> {
        match msg {
            Msg::Position(p) => {
                dst.put_u8(b'P');
                dst.put_u64(p.seq);
                dst.put_f64(p.x);
                dst.put_f64(p.y);
            }
            Msg::Command(id) => {
                dst.put_u8(b'C');
                dst.put_u64(id);
            }
            Msg::End => dst.put_u8(b'E'),
        }
        Ok(())
    }
}

/// What both ends of one UDP link saw, shared by its sender, input and handler.
#[derive(Default)]
struct Link {
    sent: AtomicU64, // datagrams handed to the kernel, malformed ones included
    newest_sent: AtomicU64,
    received: AtomicU64, // well-formed items the socket delivered
    newest_received: AtomicU64,
    malformed: AtomicU64,   // delivered, but undecodable or of the other kind
    end: CancellationToken, // cancelled by the first end marker
}

/// The socket as a pipeline input. A malformed datagram is counted and
/// skipped: one bad packet must not end a feed. A socket error ends the
/// input: a broken socket would return it again on every poll. The end
/// marker cancels `link.end` instead of becoming an item.
fn input<T>(
    socket: UdpSocket,
    link: Arc<Link>,
    pick: fn(Msg) -> Option<(u64, T)>,
) -> impl Stream<Item = T> {
    let frames = UdpFramed::new(socket, WireCodec);
    // `Some(Some(item))` passes an item on, `Some(None)` skips, `None` ends.
    let steps = frames.scan((), move |(), frame| {
        future::ready(match frame {
            Ok((Msg::End, _)) => {
                link.end.cancel();
                Some(None)
            }
            Ok((msg, _from)) => match pick(msg) {
                Some((seq, item)) => {
                    link.received.fetch_add(1, Relaxed);
                    link.newest_received.fetch_max(seq, Relaxed);
                    Some(Some(item))
                }
                None => {
                    // Well formed, but meant for the other socket.
                    link.malformed.fetch_add(1, Relaxed);
                    Some(None)
                }
            },
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                link.malformed.fetch_add(1, Relaxed);
                Some(None)
            }
            Err(e) => {
                eprintln!("socket error, ending this input: {e}");
                None
            }
        })
    });
    steps.filter_map(future::ready)
}

/// Sends `make(0)`, `make(1)`, ... for `SEND_FOR`, paced by `(burst, pause)`,
/// then the end marker. The kernel may drop that too while the receive buffer is
/// full, so it goes out five times, 20 ms apart.
async fn send(
    link: Arc<Link>,
    to: SocketAddr,
    make: fn(u64) -> Msg,
    pace: (u64, Duration),
) -> io::Result<()> {
    let (burst, pause) = pace;
    let mut out = UdpFramed::new(bind().await?, WireCodec);
    let (start, mut seq, mut next) = (Instant::now(), 0, tokio::time::Instant::now());
    while start.elapsed() < SEND_FOR {
        for _ in 0..burst {
            out.send((make(seq), to)).await?;
            link.sent.fetch_add(1, Relaxed);
            link.newest_sent.store(seq, Relaxed);
            seq += 1;
        }
        if !pause.is_zero() {
            next += pause; // a schedule, not a delay: late bursts catch up
            tokio::time::sleep_until(next).await;
        }
    }
    for _ in 0..5 {
        out.send((Msg::End, to)).await?;
        sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Positions go round the unit circle, so a decoded one can be checked.
fn position(seq: u64) -> Msg {
    let (y, x) = (seq as f64).sin_cos();
    Msg::Position(Position { seq, x, y })
}

async fn bind() -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind("127.0.0.1:0").await;
    socket.map_err(|e| io::Error::new(e.kind(), format!("bind 127.0.0.1:0: {e}")))
}

/// The commands' `on_shed` hook. It runs on the intake task once per shed
/// command, so it counts, and prints at most one line per `ALARM_EVERY`
/// with the count since the previous line. It cannot panic: a poisoned
/// lock is recovered and a failed write to stdout is ignored.
struct Alarm {
    start: Instant,
    since_last: Mutex<(Option<Instant>, u64)>,
    total: AtomicU64,
}

impl Alarm {
    fn new() -> Self {
        let since_last = Mutex::new((None, 0));
        Alarm {
            start: Instant::now(),
            since_last,
            total: AtomicU64::new(0),
        }
    }

    /// (last line printed, shed since). A poisoned lock only means another
    /// call panicked while holding it; the counts are still good.
    fn state(&self) -> MutexGuard<'_, (Option<Instant>, u64)> {
        self.since_last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn shed(&self, id: u64) {
        self.total.fetch_add(1, Relaxed);
        let mut state = self.state();
        state.1 += 1;
        if state.0.is_some_and(|last| last.elapsed() < ALARM_EVERY) {
            return;
        }
        let (_, count) = std::mem::replace(&mut *state, (Some(Instant::now()), 0));
        drop(state);
        let at = self.start.elapsed().as_secs_f64();
        let line = format!("  ALARM +{at:.2}s: {count} command(s) shed, latest #{id}");
        _ = writeln!(io::stdout(), "{line}");
    }
}

/// Waits for the sender to finish and for its end marker (or `END_GRACE`,
/// in case the kernel dropped every copy), then stops intake: `shutdown`
/// still lets the workers finish what is queued and in flight.
async fn stop_after_end(
    name: &str,
    mut sender: JoinHandle<io::Result<()>>,
    link: &Link,
    pipeline: &ShutdownHandle,
) -> Result<(), String> {
    let limit = SEND_FOR * 3;
    let sent = match timeout(limit, &mut sender).await {
        Ok(Ok(sent)) => sent.map_err(|e| format!("{name} sender: {e}")),
        Ok(Err(e)) => Err(format!("{name} sender task: {e}")),
        Err(_) => Err(format!("{name} sender still running after {limit:?}")),
    };
    sender.abort(); // no-op unless it timed out
    if timeout(END_GRACE, link.end.cancelled()).await.is_err() {
        println!("  {name}: no end marker within {END_GRACE:?}; stopping anyway");
    }
    pipeline.shutdown();
    sent
}

/// Prints where one link's datagrams went; returns the failed checks.
fn account(name: &str, link: &Link, report: &Report, results: usize) -> Vec<String> {
    let sent = link.sent.load(Relaxed);
    let (received, malformed) = (link.received.load(Relaxed), link.malformed.load(Relaxed));
    let lost = sent.saturating_sub(received + malformed);
    let pct = 100.0 * lost as f64 / sent.max(1) as f64;
    println!("  sent {sent}; the socket delivered {received} + {malformed} malformed (skipped)");
    println!("  lost in the kernel (UDP has no flow control): {lost} ({pct:.1}%)");
    println!("  report: {report}");
    let conserved = report.is_conserved();
    println!("  conserved: {conserved}; results received: {results}");
    let mut failures = Vec::new();
    if !conserved {
        failures.push(format!("{name}: conservation broken: {report}"));
    }
    if results as u64 != report.processed {
        failures.push(format!("{name}: {results} results for {report}"));
    }
    failures
}

/// min/p50/p99/max, nearest rank.
fn spread(mut gaps: Vec<u64>) -> String {
    if gaps.is_empty() {
        return "no samples".into();
    }
    gaps.sort_unstable();
    let [min, p50, p99, max] = [0, 50, 99, 100].map(|p| gaps[(gaps.len() - 1) * p / 100]);
    format!("min {min:4}  p50 {p50:4}  p99 {p99:4}  max {max:4}")
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(failures) if failures.is_empty() => {
            println!("telemetry OK");
            ExitCode::SUCCESS
        }
        Ok(failures) => {
            failures.iter().for_each(|f| eprintln!("FAILED: {f}"));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("telemetry: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let (pos_socket, cmd_socket) = (bind().await?, bind().await?);
    let (pos_addr, cmd_addr) = (pos_socket.local_addr()?, cmd_socket.local_addr()?);
    let (pos, cmd) = (Arc::new(Link::default()), Arc::new(Link::default()));
    let drain = Duration::from_secs(1); // bounds `shutdown`; the work left is a few ms

    // Positions: only the freshest matters, so a full queue evicts the
    // oldest. Four workers at 2 ms each handle under 2000/s of a faster flood.
    let config = FanOutConfig::new(4, ShedPolicy::DropOldest)
        .capacity(8)
        .drain_timeout(drain);
    let positions = input(pos_socket, pos.clone(), |m| match m {
        Msg::Position(p) => Some((p.seq, p)),
        _ => None,
    });
    let link = pos.clone();
    let (pos_results, pos_pipeline) = positions.bounded_fan_out_with(config, move |p: Position| {
        // Staleness in sequence numbers: how many newer positions had arrived
        // when a worker took this one, and when its result was ready.
        let behind = move |newest: &AtomicU64| newest.load(Relaxed).saturating_sub(p.seq);
        let (link, at_pickup) = (link.clone(), behind(&link.newest_received));
        async move {
            sleep(Duration::from_millis(2)).await;
            let when_done = behind(&link.newest_received);
            (p, [at_pickup, when_done, behind(&link.newest_sent)])
        }
    });

    // Commands: order matters and loss must be visible, so a full queue
    // sheds the arriving command and sounds the (rate-limited) alarm.
    let alarm = Arc::new(Alarm::new());
    let hook = alarm.clone();
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
        .capacity(16)
        .drain_timeout(drain)
        .on_shed(move |id| hook.shed(id));
    let commands = input(cmd_socket, cmd.clone(), |m| match m {
        Msg::Command(id) => Some((id, id)),
        _ => None,
    });
    let (cmd_results, cmd_pipeline) = commands.bounded_fan_out_with(config, |id| async move {
        sleep(Duration::from_millis(1)).await;
        id
    });

    println!("positions: flood -> 4 workers x 2 ms, capacity 8, DropOldest");
    println!("commands: 40 every 10 ms -> 1 worker x 1 ms, capacity 16, DropNewest");
    // Two malformed datagrams on purpose, so the decode-error path runs.
    let junk = bind().await?;
    for bad in [&b"?"[..], b"P\x01\x02"] {
        junk.send_to(bad, pos_addr).await?;
        pos.sent.fetch_add(1, Relaxed);
    }
    // The senders start last, so both pipelines are already pulling.
    let pos_sender = tokio::spawn(send(pos.clone(), pos_addr, position, FLOOD));
    let cmd_sender = tokio::spawn(send(cmd.clone(), cmd_addr, Msg::Command, COMMANDS));
    let control = async {
        let stopped = tokio::join!(
            stop_after_end("positions", pos_sender, &pos, &pos_pipeline),
            stop_after_end("commands", cmd_sender, &cmd, &cmd_pipeline),
        );
        let reports = tokio::join!(pos_pipeline.join(), cmd_pipeline.join());
        (stopped, reports)
    };
    // Read both result streams while stopping and joining (`join` waits for
    // the results to be consumed). On timeout, dropping all of it aborts both.
    let pos_all = pos_results.collect::<Vec<_>>();
    let cmd_all = cmd_results.collect::<Vec<_>>();
    let all = async { tokio::join!(pos_all, cmd_all, control) };
    let Ok(done) = timeout(DEADLINE, all).await else {
        return Err(format!("not finished after {DEADLINE:?}; aborted").into());
    };
    let (positions, commands, ((pos_stop, cmd_stop), (pos_report, cmd_report))) = done;
    let mut failures: Vec<String> = pos_stop.err().into_iter().chain(cmd_stop.err()).collect();

    println!("\n-- positions --");
    failures.extend(account("positions", &pos, &pos_report, positions.len()));
    let gaps = |i: usize| spread(positions.iter().map(|(_, gaps)| gaps[i]).collect());
    println!("  staleness of processed positions: how many newer ones had been");
    println!("    received, when picked up: {}", gaps(0));
    println!("    received, when done:      {}", gaps(1));
    println!("    sent, when done:          {}", gaps(2));
    // A cheap check that the codec round-trips.
    let off_circle = |p: &Position| (p.x.hypot(p.y) - 1.0).abs() > 1e-9;
    if positions.iter().any(|(p, _)| off_circle(p)) {
        failures.push("positions: decoded a position off the unit circle".into());
    }

    println!("\n-- commands --");
    failures.extend(account("commands", &cmd, &cmd_report, commands.len()));
    let (shed, dropped) = (alarm.total.load(Relaxed), cmd_report.dropped);
    let unreported = alarm.state().1;
    println!("  on_shed saw {shed} (dropped {dropped}); {unreported} after the last alarm line");
    let in_order = commands.windows(2).all(|w| w[0] < w[1]);
    println!("  the commands processed kept their order: {in_order}");
    if shed != dropped {
        failures.push(format!("commands: on_shed saw {shed}, dropped {dropped}"));
    }
    Ok(failures)
}

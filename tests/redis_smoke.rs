//! Smoke test of the Redis test infrastructure: `scripts/redis-server.sh`
//! starts a throwaway `redis-server` on a free 127.0.0.1 port (installing the
//! Debian package first if it is missing), and the `redis` crate's tokio
//! multiplexed connection drives a consumer group through the commands the
//! broker example relies on: XGROUP CREATE ... MKSTREAM, XADD, XREADGROUP,
//! XACK, XPENDING, XAUTOCLAIM and a Lua script that acks and counts in one
//! atomic step. A guard stops the server and removes its directory on drop,
//! so a failed assertion leaves nothing running.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamPendingReply, StreamReadOptions,
    StreamReadReply,
};
use redis::{AsyncCommands, AsyncConnectionConfig, RedisResult};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/redis-server.sh");
/// `start` may have to `apt-get install` redis-server first.
const START_BOUND: Duration = Duration::from_secs(300);
/// `stop` waits at most ~10 s itself.
const STOP_BOUND: Duration = Duration::from_secs(30);
/// Any one command or connection attempt.
const CMD_BOUND: Duration = Duration::from_secs(10);

const STREAM: &str = "smoke:stream";
const GROUP: &str = "smoke:group";
const COUNTER: &str = "smoke:acked";

/// XACK one id and, only if it was pending, INCR a counter: atomically, as
/// one script. Returns `{acked, counter}`.
const ACK_AND_COUNT: &str = r"
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if acked == 1 then
    redis.call('INCR', KEYS[2])
end
return {acked, tonumber(redis.call('GET', KEYS[2]) or '0')}
";

/// Runs the script with `args`, killing it if it takes longer than `bound`;
/// returns its stdout, or why it failed.
fn run_script(args: &[&str], bound: Duration) -> Result<String, String> {
    let mut child = Command::new("bash")
        .arg(SCRIPT)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn {SCRIPT}: {e}"))?;
    let deadline = Instant::now() + bound;
    let status = loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{SCRIPT} {args:?} took over {bound:?}"));
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    // The daemonized server does not hold the pipe (the script sends its
    // output to stderr, and redis-server detaches from it), so this ends.
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_string(&mut out)
        .map_err(|e| e.to_string())?;
    if status.success() {
        Ok(out)
    } else {
        Err(format!("{SCRIPT} {args:?} failed: {status}"))
    }
}

/// A running redis-server; stopped, and its directory removed, on drop.
struct Server {
    dir: PathBuf,
    port: u16,
}

impl Server {
    fn start() -> Server {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "bp-redis-smoke-{}-{nanos}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        // The guard exists before the server does: a failed start is cleaned up too.
        let mut server = Server { dir, port: 0 };
        let out = run_script(&["start", path_str(&server.dir)], START_BOUND)
            .unwrap_or_else(|e| panic!("{e}"));
        server.port = out
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("start printed {out:?}, not a port: {e}"));
        assert_ne!(server.port, 0);
        server
    }

    async fn connect(&self) -> MultiplexedConnection {
        let client =
            redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).expect("client");
        // The crate's defaults are 1 s to connect and 500 ms per response.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CMD_BOUND))
            .set_response_timeout(Some(CMD_BOUND));
        bounded(client.get_multiplexed_async_connection_with_config(&config)).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(e) = run_script(&["stop", path_str(&self.dir)], STOP_BOUND) {
            eprintln!("stopping redis-server: {e}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

/// Awaits one redis call within [`CMD_BOUND`]; panics on a timeout or an error.
async fn bounded<T>(fut: impl Future<Output = RedisResult<T>>) -> T {
    match tokio::time::timeout(CMD_BOUND, fut).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("redis error: {e}"),
        Err(_) => panic!("redis call took over {CMD_BOUND:?}"),
    }
}

async fn pending(con: &mut MultiplexedConnection) -> (usize, Vec<(String, usize)>) {
    let reply: StreamPendingReply = bounded(con.xpending(STREAM, GROUP)).await;
    // The enum is #[non_exhaustive]: Empty, Data(..) and a wildcard.
    match reply {
        StreamPendingReply::Data(data) => (
            data.count,
            data.consumers
                .into_iter()
                .map(|c| (c.name, c.pending))
                .collect(),
        ),
        other => (other.count(), Vec::new()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_group_round_trip_on_a_real_redis_server() {
    let server = Server::start();
    let mut con = server.connect().await;
    let pong: String = bounded(redis::cmd("PING").query_async(&mut con)).await;
    assert_eq!(pong, "PONG");

    // XGROUP CREATE smoke:stream smoke:group 0 MKSTREAM
    let () = bounded(con.xgroup_create_mkstream(STREAM, GROUP, "0")).await;

    // XADD smoke:stream * n <i>, ten times.
    let mut ids = Vec::new();
    for i in 0..10u32 {
        let id: String = bounded(con.xadd(STREAM, "*", &[("n", i)])).await;
        ids.push(id);
    }
    let len: usize = bounded(con.xlen(STREAM)).await;
    assert_eq!(len, 10);

    // XREADGROUP GROUP smoke:group c1 COUNT 10 STREAMS smoke:stream >
    let opts = StreamReadOptions::default().group(GROUP, "c1").count(10);
    let reply: StreamReadReply = bounded(con.xread_options(&[STREAM], &[">"], &opts)).await;
    assert_eq!(reply.keys.len(), 1);
    assert_eq!(reply.keys[0].key, STREAM);
    let read: Vec<&str> = reply.keys[0].ids.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(read, ids);
    let ns: Vec<Option<u32>> = reply.keys[0].ids.iter().map(|e| e.get("n")).collect();
    assert_eq!(ns, (0..10).map(Some).collect::<Vec<_>>());

    // Nothing new for the group: XREADGROUP ... BLOCK 50 answers nil.
    let opts = StreamReadOptions::default()
        .group(GROUP, "c1")
        .count(10)
        .block(50);
    let none: Option<StreamReadReply> = bounded(con.xread_options(&[STREAM], &[">"], &opts)).await;
    assert!(none.is_none(), "{none:?}");

    // XACK the first four.
    let acked: usize = bounded(con.xack(STREAM, GROUP, &ids[..4])).await;
    assert_eq!(acked, 4);

    // XPENDING summary: six, all c1's, from the 5th id to the 10th.
    let summary: StreamPendingReply = bounded(con.xpending(STREAM, GROUP)).await;
    let StreamPendingReply::Data(data) = summary else {
        panic!("nothing pending");
    };
    assert_eq!(data.count, 6);
    assert_eq!(data.start_id, ids[4]);
    assert_eq!(data.end_id, ids[9]);
    assert_eq!(data.consumers.len(), 1);
    assert_eq!(data.consumers[0].name, "c1");
    assert_eq!(data.consumers[0].pending, 6);

    // XAUTOCLAIM smoke:stream smoke:group c2 0 0-0 COUNT 10: c2 takes all six.
    let claim: StreamAutoClaimReply = bounded(con.xautoclaim_options(
        STREAM,
        GROUP,
        "c2",
        0,
        "0-0",
        StreamAutoClaimOptions::default().count(10),
    ))
    .await;
    let claimed: Vec<&str> = claim.claimed.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(claimed, ids[4..]);
    let claimed_ns: Vec<Option<u32>> = claim.claimed.iter().map(|e| e.get("n")).collect();
    assert_eq!(claimed_ns, (4..10).map(Some).collect::<Vec<_>>());
    assert_eq!(claim.next_stream_id, "0-0", "the whole PEL was scanned");
    assert!(claim.deleted_ids.is_empty(), "{:?}", claim.deleted_ids);
    assert!(!claim.invalid_entries);
    assert_eq!(pending(&mut con).await, (6, vec![("c2".to_owned(), 6)]));

    // Lua via EVAL: ack the 5th id and count it, atomically.
    let eval = |id: &str| {
        redis::cmd("EVAL")
            .arg(ACK_AND_COUNT)
            .arg(2)
            .arg(STREAM)
            .arg(COUNTER)
            .arg(GROUP)
            .arg(id)
            .clone()
    };
    let first: (u32, u32) = bounded(eval(&ids[4]).query_async(&mut con)).await;
    assert_eq!(first, (1, 1));
    // The same id again: no longer pending, so not counted twice.
    let again: (u32, u32) = bounded(eval(&ids[4]).query_async(&mut con)).await;
    assert_eq!(again, (0, 1));
    assert_eq!(pending(&mut con).await, (5, vec![("c2".to_owned(), 5)]));

    // The same script through redis::Script (EVALSHA, loading it on NOSCRIPT).
    let script = redis::Script::new(ACK_AND_COUNT);
    let second: (u32, u32) = bounded(
        script
            .key(STREAM)
            .key(COUNTER)
            .arg(GROUP)
            .arg(&ids[5])
            .invoke_async(&mut con),
    )
    .await;
    assert_eq!(second, (1, 2));
    let counter: u32 = bounded(con.get(COUNTER)).await;
    assert_eq!(counter, 2);
    assert_eq!(pending(&mut con).await, (4, vec![("c2".to_owned(), 4)]));

    // Acking the rest empties the PEL; the entries stay in the stream.
    let acked: usize = bounded(con.xack(STREAM, GROUP, &ids[6..])).await;
    assert_eq!(acked, 4);
    assert_eq!(pending(&mut con).await, (0, Vec::new()));
    let len: usize = bounded(con.xlen(STREAM)).await;
    assert_eq!(len, 10);

    drop(con);
    let dir = server.dir.clone();
    drop(server);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

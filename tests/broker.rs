//! The broker scenario of `examples/redis_streams.rs` against a real
//! `redis-server` (installed if missing and started on 127.0.0.1 by
//! `scripts/redis-server.sh`, stopped at the end): 3 consumer processes in
//! one group, one killed with SIGKILL mid-run, one shut down with SIGTERM;
//! at the end every message id is in exactly one of processed / shed /
//! dead-lettered, and nothing is pending.
//!
//! The consumer processes are this test binary itself, run with only
//! `broker_consumer_process` selected and the consumer's settings in the
//! environment.

#[path = "../examples/redis_streams.rs"]
#[allow(dead_code, unreachable_pub)]
mod scenario;

use std::process::{Child, Command, Stdio};

use backpressure_pipeline::ShedPolicy;

const N: u64 = 3000;

fn spawn_consumer(port: u16, name: &str, lossless: bool) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .env("BP_BROKER_LOSSLESS", if lossless { "1" } else { "0" })
        .args([
            "--exact",
            "broker_consumer_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("BP_BROKER_PORT", port.to_string())
        .env("BP_BROKER_NAME", name)
        .env("BP_BROKER_N", N.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn a consumer process")
}

/// Not a test: the body of a consumer process, which the scenario tests run
/// as a child of this binary (hence ignored in a normal run).
#[test]
#[ignore = "a consumer process of the broker scenarios, started by them"]
fn broker_consumer_process() {
    let (Ok(port), Ok(name), Ok(n)) = (
        std::env::var("BP_BROKER_PORT"),
        std::env::var("BP_BROKER_NAME"),
        std::env::var("BP_BROKER_N"),
    ) else {
        panic!("run only by the broker scenarios, which set BP_BROKER_PORT, _NAME and _N");
    };
    let policy = match std::env::var("BP_BROKER_LOSSLESS").as_deref() {
        Ok("1") => ShedPolicy::Backpressure,
        _ => ShedPolicy::DropNewest,
    };
    scenario::consumer_process(port.parse().unwrap(), &name, n.parse().unwrap(), policy);
}

/// What must hold after any run: the broker's books close.
fn assert_books_close(books: &scenario::Books) {
    assert_eq!(books.stream_len, N);
    assert_eq!(books.settled(), N, "every id settled: {books:?}");
    assert_eq!(books.overlap, 0, "an id in two sets: {books:?}");
    assert_eq!(books.union, N, "the sets cover the stream: {books:?}");
    assert_eq!(books.pending, 0, "left pending: {books:?}");
    assert_eq!(
        books.dead_but_healthy, 0,
        "a healthy message dead-lettered: {books:?}"
    );
}

#[test]
fn shedding_consumers_one_killed_one_stopped_settle_every_message_exactly_once() {
    let run = scenario::scenario(N, 3, true, Some(scenario::FAIL_EVERY), &|port, name| {
        spawn_consumer(port, name, false)
    });
    for report in &run.reports {
        println!("{report}");
    }
    println!("{:?} in {:?}", run.books, run.elapsed);
    assert_books_close(&run.books);
    // Overloaded consumers shed, and every shed message is acked as shed.
    assert!(run.books.shed > 0, "{:?}", run.books);
    // A failing message is dead-lettered after MAX_DELIVERIES, unless a
    // delivery of it was shed first.
    assert!(
        run.books.dead <= N / scenario::FAIL_EVERY,
        "{:?}",
        run.books
    );
    // The graceful one and the survivor report; the killed one cannot.
    assert_eq!(run.reports.len(), 2, "{:?}", run.reports);
}

#[test]
fn lossless_consumers_one_killed_one_stopped_dead_letter_exactly_the_failing_messages() {
    let run = scenario::scenario(N, 3, true, Some(scenario::FAIL_EVERY), &|port, name| {
        spawn_consumer(port, name, true)
    });
    for report in &run.reports {
        println!("{report}");
    }
    println!("{:?} in {:?}", run.books, run.elapsed);
    assert_books_close(&run.books);
    // Backpressure sheds nothing (and nothing waits past the maximum age
    // here): every healthy message is processed, every failing one dead.
    assert_eq!(run.books.dead, N / scenario::FAIL_EVERY, "{:?}", run.books);
    assert_eq!(run.books.shed, 0, "{:?}", run.books);
    assert_eq!(run.books.processed, N - N / scenario::FAIL_EVERY);
    assert_eq!(run.reports.len(), 2, "{:?}", run.reports);
}

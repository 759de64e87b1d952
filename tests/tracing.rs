//! The optional `tracing` feature: one span per pipeline, one event per
//! overload edge and one with the final report. Run with
//! `cargo test --features tracing --test tracing`.
#![cfg(feature = "tracing")]

use std::sync::{Arc, Mutex};

use backpressure_pipeline::{FanOutConfig, FanOutExt, ShedPolicy};
use futures::StreamExt;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Records span names and event messages; just enough of a subscriber.
#[derive(Clone, Default)]
struct Recorder {
    spans: Arc<Mutex<Vec<String>>>,
    /// Each span's fields, as `name=value ` pairs.
    span_fields: Arc<Mutex<Vec<String>>>,
    events: Arc<Mutex<Vec<String>>>,
}

struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={:?} ", field.name(), value));
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut fields = Message(String::new());
        span.record(&mut fields);
        self.span_fields.lock().unwrap().push(fields.0);
        let mut spans = self.spans.lock().unwrap();
        spans.push(span.metadata().name().to_owned());
        Id::from_u64(spans.len() as u64)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        self.events.lock().unwrap().push(message.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn one_span_per_pipeline_and_events_for_overload_and_report() {
    let recorder = Recorder::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    tracing::subscriber::with_default(recorder.clone(), || {
        runtime.block_on(async {
            // A worker busy 1 ms per item takes 0, 1 waits in the one slot,
            // and the other 8 of the burst meet a full queue.
            let config = FanOutConfig::new(1, ShedPolicy::DropNewest).capacity(1);
            let (results, shutdown) =
                futures::stream::iter(0..10u32).bounded_fan_out_with(config, |x| async move {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    x
                });
            let (_, report) = tokio::join!(results.collect::<Vec<_>>(), shutdown.join());
            assert_eq!(report.dropped, 8);
        })
    });
    assert_eq!(*recorder.spans.lock().unwrap(), ["bounded_fan_out"]);
    let fields = recorder.span_fields.lock().unwrap();
    assert!(fields[0].starts_with("pipeline=default "), "{fields:?}");
    let events = recorder.events.lock().unwrap();
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(events[0].contains("overload started"), "{events:?}");
    assert!(
        events[1].contains("overload ended: 8 items shed"),
        "{events:?}"
    );
    assert!(events[2].contains("pipeline finished"), "{events:?}");
    assert!(events[2].contains("conserved=true"), "{events:?}");
}

#[test]
fn the_span_carries_the_pipeline_name() {
    let recorder = Recorder::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tracing::subscriber::with_default(recorder.clone(), || {
        runtime.block_on(async {
            let config = FanOutConfig::new(2, ShedPolicy::DropOldest).name(format!("shard-{}", 7));
            let (results, shutdown) =
                futures::stream::iter(0..3u32).bounded_fan_out_with(config, |x| async move { x });
            let (_, report) = shutdown.join_collect(results).await;
            assert_eq!(report.processed, 3);
        })
    });
    assert_eq!(*recorder.spans.lock().unwrap(), ["bounded_fan_out"]);
    assert_eq!(
        *recorder.span_fields.lock().unwrap(),
        ["pipeline=shard-7 workers=2 capacity=64 policy=DropOldest "]
    );
}

//! Model of the stop phase: a worker that sees a stop sees its deadline.

use crate::control::{Phase, Start};

/// `phase` invariant 2: the drain deadline is published before the phase
/// moves to draining, so a worker that sees the stop can check the
/// deadline (and never takes a draining pipeline for one without it).
///
/// Guard: the deadline is stored with `Release` before the phase's
/// `Release` step, and loaded with `Acquire`. Shown to fail by setting the
/// phase first: loom finds a worker that sees `DRAINING` and no deadline
/// (the assertion below fires).
#[test]
fn loom_a_worker_that_sees_the_stop_sees_the_drain_deadline() {
    loom::model(|| {
        let phase = std::sync::Arc::new(Phase::new(None, std::time::Duration::ZERO));
        let stopper = super::spawn(&phase, |phase| phase.drain());
        if phase.is_stopping() {
            assert!(phase.drain_deadline().is_some(), "stop without deadline");
        }
        // A zero drain: once the stop is seen, its deadline has passed and
        // nothing may start; before, everything may.
        assert_ne!(phase.may_start(), Start::Refused);
        stopper.join().unwrap();
        assert!(phase.drain_deadline().is_some());
        assert_eq!(phase.may_start(), Start::RefusedAbort);
    });
}

//! The optional `tracing` feature: a span per pipeline, an event per
//! overload episode (in `overload`) and one with the final report. With the
//! feature off every function here compiles to nothing.

use std::future::Future;

use crate::{Report, ShedPolicy};

#[cfg(feature = "tracing")]
pub(crate) type Span = tracing::Span;

/// Stands in for `tracing::Span` when the feature is off: zero-sized.
#[cfg(not(feature = "tracing"))]
#[derive(Clone)]
pub(crate) struct Span;

/// The pipeline's span: `bounded_fan_out`, its name in the `pipeline` field.
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn pipeline_span(
    name: &str,
    workers: usize,
    capacity: usize,
    policy: ShedPolicy,
) -> Span {
    #[cfg(feature = "tracing")]
    return tracing::info_span!("bounded_fan_out", pipeline = %name, workers, capacity, %policy);
    #[cfg(not(feature = "tracing"))]
    Span
}

/// Runs `future` inside `span`.
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn in_span<F: Future>(
    span: &Span,
    future: F,
) -> impl Future<Output = F::Output> + use<F> {
    #[cfg(feature = "tracing")]
    return tracing::Instrument::instrument(future, span.clone());
    #[cfg(not(feature = "tracing"))]
    future
}

#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn finished(report: &Report) {
    #[cfg(feature = "tracing")]
    tracing::info!(%report, conserved = report.is_conserved(), "pipeline finished");
}

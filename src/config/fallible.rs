//! Marking a handler fallible: one setting, on every front.

use super::FanOutConfig;

/// The default handler kind of a [`FanOutConfig`]: outputs are not
/// inspected, whatever their type.
#[derive(Clone, Copy, Debug, Default)]
pub struct Plain;

/// The handler kind of a [`FanOutConfig::fallible`] configuration: the
/// handler returns a `Result`, and every `Err` output is counted in
/// [`Report::errored`](crate::Report::errored).
#[derive(Clone, Copy, Debug, Default)]
pub struct Fallible;

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Plain {}
    impl Sealed for super::Fallible {}
}

/// How a pipeline reads its handler's output `O`: [`Plain`] does not,
/// [`Fallible`] counts `Err` outputs (and needs `O` to be a `Result`).
/// Sealed: the two kinds are all there is.
#[diagnostic::on_unimplemented(
    message = "a `fallible()` configuration needs a handler that returns a `Result`, not `{O}`",
    label = "this handler's output is not a `Result`"
)]
pub trait HandlerKind<O>: sealed::Sealed {
    /// Whether an output is an `Err`, if outputs are inspected at all.
    #[doc(hidden)]
    const IS_ERR: Option<fn(&O) -> bool>;
}

impl<O> HandlerKind<O> for Plain {
    const IS_ERR: Option<fn(&O) -> bool> = None;
}

impl<T, E> HandlerKind<Result<T, E>> for Fallible {
    const IS_ERR: Option<fn(&Result<T, E>) -> bool> = Some(Result::is_err);
}

impl<Item> FanOutConfig<Item, Plain> {
    /// Marks the handler fallible: it returns a `Result`, and the
    /// [`Report`](crate::Report) (and [`Stats`](crate::Stats)) count the
    /// `Err` outputs in [`errored`](crate::Report::errored). An `Err` is
    /// still a completed handler: it counts `processed` and is delivered
    /// like an `Ok`, so the laws are unchanged and `processed - errored`
    /// outputs were `Ok`. (A panic is `failed`, not `errored`.)
    ///
    /// Works on every front. A handler whose output is not a `Result` does
    /// not compile with a fallible configuration.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{FanOutConfig, FanOutExt, ShedPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let config = FanOutConfig::new(2, ShedPolicy::DropNewest).fallible();
    /// let (results, shutdown) = futures::stream::iter(0..10u32)
    ///     .bounded_fan_out_with(config, |x| async move {
    ///         if x % 3 == 0 { Err(format!("{x} is a multiple of 3")) } else { Ok(x) }
    ///     });
    /// let (out, report) = shutdown.join_collect(results).await;
    /// assert_eq!(out.iter().filter(|r| r.is_err()).count(), 4); // 0, 3, 6, 9
    /// assert_eq!((report.processed, report.errored), (10, 4));
    /// # }
    /// ```
    pub fn fallible(self) -> FanOutConfig<Item, Fallible> {
        self.with_kind()
    }
}

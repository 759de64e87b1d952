//! The settle stage: every item's outcome reaches the caller once, as a key
//! it extracted from the item, for acking to a broker; and the input comes
//! back after a stop.
//!
//! * `record`: the outcome types, the recorder the pipeline writes to and
//!   the [`Settlements`] stream the caller reads.
//! * `credits`: what bounds the records' memory.
//! * `hand_back`: [`hand_back`] and [`InputBack`], the input's return.
//!
//! # Bounds
//!
//! Settlement is exact, so it can never shed its own records. Its memory is
//! bounded by *credits* instead: a front takes one credit for each item
//! before it takes the item, and a credit comes back when the caller reads
//! that item's record from [`Settlements`]. So at most
//! [`settle_capacity`](crate::FanOutConfig::settle_capacity) items are
//! unsettled at once (queued, in flight, or with a record waiting), records
//! are sent without ever waiting, and the channel that carries them never
//! holds more than that. A settler that falls behind by `settle_capacity`
//! records throttles intake (the stream front waits, the push front answers
//! `Full`), which leaves the input's items where they are (a broker keeps
//! them undelivered): the one place the pipeline waits on a consumer under a
//! shedding policy, and the price of books that close. Workers never wait
//! for the settler.
//!
//! Records are sent outside every lock, from the task where the outcome is
//! decided: the front (shed), a worker (processed, failed, timed out,
//! expired, cut off) or the caller of `abort` (queued items abandoned).

mod credits;
mod hand_back;
mod record;

pub(crate) use credits::Credits;
pub use hand_back::{HandBack, InputBack, hand_back};
pub use record::{Outcome, Settlement, Settlements, ShedReason, Stage};
pub(crate) use record::{PendingKey, Record, Settle, channel};

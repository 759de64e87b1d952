//! The answer slot of one call: where a caller waits for its answer, and
//! where a running handler hears that its caller went away.
//!
//! One slot per call, shared by the [`Call`](crate::Call) future and the job
//! in the pipeline (queued, then in its handler's future, then as the
//! output being handed over). Two waits meet here, each the mirror of the
//! other: the caller waits for an answer; the handler, while pending, waits
//! to hear that the caller is gone.
//!
//! # Invariants
//!
//! 1. **Answered at most once.** `answered` is set under the lock by the
//!    one answer that is stored; every later answer (and every answer to a
//!    caller that is gone) is refused and handed back to whoever gave it,
//!    who disposes of it: a response refused here is counted discarded,
//!    one stored is counted delivered (see `results`).
//! 2. **No lost caller wake-up.** The caller registers its waker under the
//!    lock after finding no answer; the answer takes that waker under the
//!    same lock and wakes it after unlocking.
//! 3. **No lost handler wake-up.** A pending handler registers its waker
//!    under the lock after finding the caller still there; the caller's
//!    leaving sets `gone` and takes that waker under the same lock, and
//!    wakes it after unlocking.
//! 4. **Gone is final.** Once `gone` is set, no answer is stored, and the
//!    caller never polls again.
//! 5. **No foreign code under the lock.** Answers (a response, a request:
//!    user types with user `Drop`s) are moved out under the lock and
//!    dropped by the caller after unlocking; wakers are woken after
//!    unlocking.
//!
//! # Lock order
//!
//! The slot's lock is taken alone.

use std::task::{Context, Poll, Waker};

use super::rejected::{RejectReason, Rejected};
use crate::sync::{Mutex, MutexGuard, lock};

/// What the caller gets: the response, or why there is none.
pub(crate) type Answer<Req, Resp> = Result<Resp, Rejected<Req>>;

pub(crate) struct Slot<Req, Resp> {
    state: Mutex<State<Req, Resp>>,
}

struct State<Req, Resp> {
    /// The stored answer until the caller takes it.
    answer: Option<Answer<Req, Resp>>,
    /// An answer was stored, taken or not (invariant 1).
    answered: bool,
    /// The caller, waiting for the answer (invariant 2).
    caller: Option<Waker>,
    /// The caller went away (invariant 4).
    gone: bool,
    /// The handler, waiting to hear that the caller went away (invariant 3).
    handler: Option<Waker>,
    /// Why the job ends, decided where its outcome was decided, for a job
    /// that is dropped unstarted.
    verdict: Option<RejectReason>,
}

impl<Req, Resp> Slot<Req, Resp> {
    pub(crate) fn new() -> Self {
        Slot {
            state: Mutex::new(State {
                answer: None,
                answered: false,
                caller: None,
                gone: false,
                handler: None,
                verdict: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<Req, Resp>> {
        lock(&self.state)
    }

    /// Stores an answer for the caller and wakes it; `Err` hands `value`
    /// back if the caller is gone or was answered already (invariant 1).
    pub(crate) fn answer<A>(&self, value: A, into: fn(A) -> Answer<Req, Resp>) -> Result<(), A> {
        let caller = {
            let mut state = self.lock();
            if state.gone || state.answered {
                return Err(value);
            }
            state.answered = true;
            state.answer = Some(into(value));
            // Invariant 2: taken under the lock the answer was stored under.
            state.caller.take()
        };
        if let Some(caller) = caller {
            caller.wake();
        }
        Ok(())
    }

    /// The caller's side: the answer, or `Pending` with the caller
    /// registered to be woken by it.
    pub(crate) fn poll_answer(&self, cx: &mut Context<'_>) -> Poll<Answer<Req, Resp>> {
        let mut state = self.lock();
        debug_assert!(
            !state.gone,
            "Slot: polled after its caller left (invariant 4)"
        );
        if let Some(answer) = state.answer.take() {
            return Poll::Ready(answer);
        }
        debug_assert!(!state.answered, "Slot: an answer taken twice (invariant 1)");
        match &mut state.caller {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            caller => *caller = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The caller goes away. Returns an answer stored and not taken (for the
    /// caller to drop after this returns) and whether any answer was
    /// stored; wakes a handler waiting to hear of it (invariant 3).
    pub(crate) fn leave(&self) -> (Option<Answer<Req, Resp>>, bool) {
        let (unread, answered, handler) = {
            let mut state = self.lock();
            state.gone = true;
            state.caller = None;
            (state.answer.take(), state.answered, state.handler.take())
        };
        if let Some(handler) = handler {
            handler.wake();
        }
        (unread, answered)
    }

    /// The handler's side: whether the caller is gone; if not, registers
    /// the handler to be woken when it goes.
    pub(crate) fn poll_gone(&self, cx: &mut Context<'_>) -> bool {
        let mut state = self.lock();
        if state.gone {
            return true;
        }
        match &mut state.handler {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            handler => *handler = Some(cx.waker().clone()),
        }
        false
    }

    /// Whether the caller is gone, without registering.
    pub(crate) fn is_gone(&self) -> bool {
        self.lock().gone
    }

    /// Records why the job ends, for when it is dropped unstarted.
    pub(crate) fn set_verdict(&self, reason: RejectReason) {
        self.lock().verdict = Some(reason);
    }

    /// Why the job ends, if that was decided.
    pub(crate) fn verdict(&self) -> Option<RejectReason> {
        self.lock().verdict
    }
}

//! Keyed pipelines from the producers' side (the push and call fronts
//! under `Backpressure`, and the keys themselves): a key's room first come,
//! first served, producers waiting for a full key never keeping other keys
//! out, a `Sink` handle and a `send` never waiting on each other, drops at
//! every stage giving everything back, stops answering every waiter, keys
//! dropped outside the queue's lock, and 2-thread stress loops. One test
//! binary (one link) for the tests written in fresh-user trials.

mod after_the_end;
mod keys;
mod room_call;
mod room_push;
mod room_stress;
mod settle_call;
mod settle_push;
mod settle_stress;
mod sink_and_send;
mod support;

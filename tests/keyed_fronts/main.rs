//! Keyed `Backpressure` on the push and call fronts, from the producers'
//! side: a key's room first come, first served, producers waiting for a
//! full key never keeping other keys out, drops at every stage giving
//! everything back, stops answering every waiter, and 2-thread stress
//! loops. One test binary (one link) for six files of tests written in
//! fresh-user trials.

mod room_call;
mod room_push;
mod room_stress;
mod settle_call;
mod settle_push;
mod settle_stress;

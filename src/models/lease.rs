//! Model of the hook shelf: a release waits for the last lease, and the
//! hooks are dropped before it returns.

use std::sync::Arc;

use loom::future::block_on;
use loom::sync::atomic::{AtomicBool, Ordering::SeqCst};

use crate::control::Shelf;

/// Sets its flag when dropped: stands for a user closure.
struct Hook(Arc<AtomicBool>);

impl Drop for Hook {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

/// `lease` invariants 2 and 4: against a lease taken and returned on
/// another thread, `release` returns only once the hooks are dropped, and a
/// lease taken after the release began gets nothing.
///
/// Guard: the lease that brings `leases` to 0 takes the releaser's waker
/// under the lock. Shown to fail by not waking it: deadlock; and by
/// decrementing before dropping the `Arc` (invariant 2): the hook is still
/// alive when `release` returns, and the final assertion fails.
#[test]
fn loom_release_waits_for_the_last_lease_and_drops_the_hooks_first() {
    loom::model(|| {
        let dropped = Arc::new(AtomicBool::new(false));
        let shelf = Arc::new(Shelf::new(Hook(Arc::clone(&dropped))));
        let borrower = super::spawn(&shelf, |shelf| {
            if let Some(hook) = shelf.lease() {
                // The hook is alive while lent.
                assert!(!hook.0.load(SeqCst));
            }
        });
        block_on(shelf.release());
        assert!(dropped.load(SeqCst), "the hooks outlived the release");
        assert!(shelf.lease().is_none());
        borrower.join().unwrap();
    });
}

#!/usr/bin/env bash
# Shows that each loom model catches the bug it exists for: removes one
# guard at a time from a copy of the crate, runs that guard's model, and
# reports why the model failed (it must). Not part of CI: it rebuilds the
# crate once per mutation (about half a minute each on two cores).
#
#   scripts/loom-mutations.sh            # every mutation
#   scripts/loom-mutations.sh push-wake  # some, by name
set -uo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
[ -n "${KEEP_OUTPUT:-}" ] && trap - EXIT
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/loom-mutations}"
export RUSTFLAGS="--cfg loom -C debug-assertions" LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"

# One mutation per line: name, file, the guard's text, its replacement, the
# model that must catch it; fields separated by " ~ ", "\n" a newline.
mutations='
push-wake ~ src/queue/mod.rs ~ let woken = state.idle.wake(len - before); ~ let woken = state.idle.wake(0); ~ loom_a_push_wakes_a_worker_that_is_registering
take-drop-pass-on ~ src/queue/mod.rs ~ let next = self.queue.lock().idle.leave(self.ticket.take()); ~ let next: Option<Waker> = { self.queue.lock().idle.forget(&mut self.ticket); None }; ~ loom_a_woken_take_that_is_dropped_passes_its_wake_up_on
close-wake ~ src/queue/mod.rs ~ let mut idle = state.idle.wake_all(); ~ let mut idle: Vec<Waker> = Vec::new(); ~ loom_close_wakes_a_worker_that_is_registering
abandon-count-under-lock ~ src/queue/mod.rs ~             count(items.len());\n            (items, idle, state.batch.waiter.take(), forgotten)\n        }; ~             (items, idle, state.batch.waiter.take(), forgotten)\n        };\n        count(items.len()); ~ loom_abandon_push_and_take_end_every_item_exactly_once
low-water-wake ~ src/queue/room.rs ~             self.waiter.take() ~             None ~ loom_a_take_at_the_low_water_mark_wakes_the_producer_waiting_for_room
abort-wakes-senders ~ src/results/mod.rs ~ let senders = inner.waiting.wake_all(); ~ let senders: Vec<Waker> = Vec::new(); ~ loom_an_abort_releases_a_waiting_sender_and_each_result_ends_once
last-sender-wakes-consumer ~ src/results/sender.rs ~ (inner.consumer.take(), inner.buf.holds_no_result()) ~ (None, inner.buf.holds_no_result()) ~ loom_the_last_sender_leaving_ends_the_stream_for_a_waiting_consumer
hand-over-drop-pass-on ~ src/results/sender.rs ~ inner.waiting.leave(self.ticket.take()) ~ { inner.waiting.forget(&mut self.ticket); None } ~ loom_a_woken_hand_over_that_is_dropped_passes_its_wake_up_on
fates-release ~ src/books.rs ~ counter.store(counter.load(Relaxed) + n, Release); ~ counter.store(counter.load(Relaxed) + n, Relaxed); ~ loom_a_snapshot_never_shows_more_finished_than_taken
lease-wakes-releaser ~ src/control/lease.rs ~                 state.releaser.take() ~                 None::<Waker> ~ loom_release_waits_for_the_last_lease_and_drops_the_hooks_first
lease-drop-before-count ~ src/control/lease.rs ~         drop_quietly(self.value.take());\n        let releaser = { ~         let value = self.value.take();\n        let releaser = { ~ loom_release_waits_for_the_last_lease_and_drops_the_hooks_first
abort-leases-first ~ src/control/mod.rs ~         let hooks = self.hooks.lease();\n        let abandoned = self.queue.abandon(|n| self.books.cancel_unqueued(n)); ~         let abandoned = self.queue.abandon(|n| self.books.cancel_unqueued(n));\n        let hooks = self.hooks.lease(); ~ loom_an_abort_settles_what_it_abandoned_before_the_hooks_are_released
keyed-finished-wakes ~ src/queue/keyed.rs ~ (if ready { state.idle.wake_one() } else { None }, forgotten) ~ (None::<Waker>, forgotten) ~ loom_a_finished_key_wakes_the_worker_waiting_for_it
keyed-take-after-finishes ~ src/queue/keyed.rs ~             keyed.finished(done); ~             let _ = done; ~ loom_the_take_that_empties_a_closed_keyed_queue_wakes_every_waiter
keyed-end-wakes-all ~ src/queue/keyed.rs ~ let woken = (state.closed && queued == 0).then(|| state.idle.wake_all()); ~ let woken = (state.closed && queued == 0).then(Vec::<Waker>::new); ~ loom_the_take_that_empties_a_closed_keyed_queue_wakes_every_waiter
deadline-before-phase ~ src/control/phase.rs ~     pub(crate) fn drain(&self) {\n ~     pub(crate) fn drain(&self) {\n        self.phase.fetch_max(DRAINING, Release);\n ~ loom_a_worker_that_sees_the_stop_sees_the_drain_deadline
slot-answer-wakes-caller ~ src/front/slot.rs ~             // Invariant 2: taken under the lock the answer was stored under.\n            state.caller.take() ~             None::<std::task::Waker> ~ loom_an_answer_wakes_the_caller_waiting_for_it
slot-leave-wakes-handler ~ src/front/slot.rs ~ (state.answer.take(), state.answered, state.handler.take()) ~ (state.answer.take(), state.answered, None::<Waker>) ~ loom_a_caller_leaving_wakes_the_handler_listening_for_it
slot-answer-checks-gone-under-its-lock ~ src/front/slot.rs ~             if state.gone || state.answered {\n                return Err(value);\n            } ~             let gone = state.gone;\n            drop(state);\n            if gone || self.lock().answered {\n                return Err(value);\n            }\n            let mut state = self.lock(); ~ loom_an_answer_racing_the_callers_leaving_ends_exactly_once
withdraw-counts-under-lock ~ src/queue/mod.rs ~             count();\n            let producer = state.batch.on_take(queued, self.capacity);\n            (item, producer, woken, forgotten)\n        }; ~             let producer = state.batch.on_take(queued, self.capacity);\n            (item, producer, woken, forgotten)\n        };\n        count(); ~ loom_a_withdrawal_is_counted_before_a_worker_can_find_the_queue_empty
keyed-room-grants ~ src/queue/keyed.rs ~         slot.granted = true;\n        Some(next) ~         slot.granted = true;\n        drop(next);\n        None ~ loom_a_take_gives_a_full_keys_place_to_the_producer_waiting_for_it
keyed-grant-passes-on ~ src/queue/keyed.rs ~             self.passed = self.grant_next(id); ~             self.passed = None; ~ loom_a_grant_holders_push_passes_the_next_place_on
keyed-grant-lapse-passes-on ~ src/queue/keyed.rs ~             slot.granted = false;\n            self.grant_next(id) ~             slot.granted = false;\n            None ~ loom_a_producer_that_gives_up_its_kept_place_passes_it_on
keyed-place-one-at-a-time ~ src/queue/keyed.rs ~ if ticket.is_none() && !slot.granted && ~ if ticket.is_none() && ~ loom_places_taken_before_a_slot_go_one_at_a_time_in_line
books-waiting-after-processed ~ src/books.rs ~     let taken = results.delivered() + results.discarded(); ~     let taken = counts.delivered + counts.discarded; ~ loom_a_snapshot_never_shows_more_results_waiting_than_wait
overload-shed-wakes-emitter ~ src/front/overload.rs ~         if state.pending.len() > before {\n            state.emitter.take()\n ~         if state.pending.len() > before {\n            None\n ~ loom_a_shed_wakes_the_front_task_registering_to_emit
push-leases-under-lock ~ src/front/push.rs ~             if shed > 0 && hooks.is_none() && front.shed_needs.hooks(disposal) {\n                hooks = front.stopper.hooks();\n                debug_assert!(hooks.is_some(), "Producers: hooks released, queue open");\n            }\n        };\n        let mut unkeyed = Vec::new();\n        let pushed = match keyer.as_mut() {\n            Some(keyer) => keyer.push(front, &mut batch, &mut shed, &mut unkeyed, count),\n            None => front.queue.push(&mut batch, &mut shed, count),\n        }; ~         };\n        let mut unkeyed = Vec::new();\n        let pushed = match keyer.as_mut() {\n            Some(keyer) => keyer.push(front, &mut batch, &mut shed, &mut unkeyed, count),\n            None => front.queue.push(&mut batch, &mut shed, count),\n        };\n        if hooks.is_none() {\n            hooks = front.stopper.hooks();\n        } ~ loom_a_shed_racing_an_abort_reaches_on_shed
books-shed-before-produced ~ src/books.rs ~         let dropped = self.intake.dropped.load(Acquire);\n        let produced = self.intake.produced.load(Acquire); ~         let produced = self.intake.produced.load(Acquire);\n        let dropped = self.intake.dropped.load(Acquire); ~ loom_a_snapshot_never_shows_more_shed_than_produced
keyed-withdraw-ends-waiters ~ src/queue/mod.rs ~                         woken.extend(state.idle.wake_all());\n                    } ~                     } ~ loom_a_withdrawal_that_empties_a_closed_keyed_queue_ends_the_waiting_worker
'

status=0
while IFS= read -r row; do
  [ -z "$row" ] && continue
  name=${row%% ~ *}
  if [ $# -gt 0 ] && [[ " $* " != *" $name "* ]]; then continue; fi
  rm -rf "$work/crate" && mkdir -p "$work/crate"
  cp -r Cargo.toml Cargo.lock README.md src benches examples tests "$work/crate/"
  model=$(python3 - "$work/crate" "$row" <<'PY'
import sys
root, row = sys.argv[1], sys.argv[2]
name, path, old, new, model = [field.replace('\\n', '\n') for field in row.split(' ~ ')]
text = open(f'{root}/{path}').read()
if old not in text:
    sys.exit(2)
open(f'{root}/{path}', 'w').write(text.replace(old, new, 1))
print(model)
PY
  ) || { echo "$name: the guard's text is gone; update this script"; status=1; continue; }
  if (cd "$work/crate" && timeout 600 cargo test --release --lib "$model" >"$work/out" 2>&1); then
    echo "$name: NOT caught by $model"; status=1
  elif ! grep -qE "^test .*$model|^thread '.*$model' .*panicked" "$work/out"; then
    # (A model whose destructors panic after loom's own panic aborts the
    # process before the test harness prints its line.)
    echo "$name: the model did not run (build failed?); fix this script"; status=1
  else
    why=$(grep -m1 -iE "deadlock|assertion|outlived|stop without|more finished|more shed|hooks released|exited before|exactly one|saw it|not counted|got in|results waiting|never reached" "$work/out" | cut -c1-110)
    echo "$name: caught by $model: ${why:-failed}"
  fi
done <<<"$mutations"
exit $status

//! Doubly linked lists threaded through the key slots, by id: the keyed
//! queue's ring of ready keys and its keys grouped by queued count. Every
//! operation is O(1) and allocates nothing, so a key can leave a list from
//! anywhere in it (shed empty, or one item longer) without a search.

use super::keys::KeyId;

/// A slot's place in one list.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Links {
    prev: Option<KeyId>,
    next: Option<KeyId>,
    linked: bool,
}

impl Links {
    pub(super) fn is_linked(&self) -> bool {
        self.linked
    }
}

/// A list's ends: head (oldest) and tail (newest).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct List {
    ends: Option<(KeyId, KeyId)>,
}

impl List {
    pub(super) fn head(&self) -> Option<KeyId> {
        self.ends.map(|(head, _)| head)
    }

    pub(super) fn tail(&self) -> Option<KeyId> {
        self.ends.map(|(_, tail)| tail)
    }

    /// Appends `id`, which must not be in this list, at the tail.
    pub(super) fn push_back<S>(
        &mut self,
        slots: &mut [S],
        id: KeyId,
        links: impl Fn(&mut S) -> &mut Links,
    ) {
        let prev = self.ends.map(|(_, tail)| tail);
        *links(&mut slots[id]) = Links {
            prev,
            next: None,
            linked: true,
        };
        match &mut self.ends {
            Some((_, tail)) => {
                let old = std::mem::replace(tail, id);
                links(&mut slots[old]).next = Some(id);
            }
            None => self.ends = Some((id, id)),
        }
    }

    /// Unlinks the head and returns it (O(1), as `remove` of the head,
    /// with fewer branches: the ring's take).
    pub(super) fn pop_front<S>(
        &mut self,
        slots: &mut [S],
        links: impl Fn(&mut S) -> &mut Links,
    ) -> Option<KeyId> {
        let (head, tail) = self.ends?;
        let next = std::mem::take(links(&mut slots[head])).next;
        self.ends = match next {
            Some(next) => {
                links(&mut slots[next]).prev = None;
                Some((next, tail))
            }
            None => None,
        };
        Some(head)
    }

    /// Unlinks `id` if it is in this list; false if it was not.
    pub(super) fn remove<S>(
        &mut self,
        slots: &mut [S],
        id: KeyId,
        links: impl Fn(&mut S) -> &mut Links,
    ) -> bool {
        let Links { prev, next, linked } = std::mem::take(links(&mut slots[id]));
        if !linked {
            return false;
        }
        match prev {
            Some(prev) => links(&mut slots[prev]).next = next,
            None => self.set_end(next, true),
        }
        match next {
            Some(next) => links(&mut slots[next]).prev = prev,
            None => self.set_end(prev, false),
        }
        true
    }

    /// Sets the head (or tail) to `to`; `None` empties the list.
    fn set_end(&mut self, to: Option<KeyId>, head: bool) {
        self.ends = match (self.ends, to) {
            (_, None) => None,
            (Some((_, tail)), Some(to)) if head => Some((to, tail)),
            (Some((head, _)), Some(to)) => Some((head, to)),
            (None, Some(to)) => Some((to, to)),
        };
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn order(list: &List, slots: &[Links]) -> Vec<KeyId> {
        let mut ids = Vec::new();
        let mut at = list.head();
        while let Some(id) = at {
            ids.push(id);
            at = slots[id].next;
        }
        ids
    }

    #[test]
    fn removes_from_anywhere_and_keeps_the_rest_in_order() {
        let mut slots = vec![Links::default(); 4];
        let mut list = List::default();
        for id in 0..4 {
            list.push_back(&mut slots, id, |links| links);
        }
        assert_eq!(order(&list, &slots), [0, 1, 2, 3]);
        assert!(list.remove(&mut slots, 2, |links| links));
        assert!(!list.remove(&mut slots, 2, |links| links));
        assert!(list.remove(&mut slots, 0, |links| links));
        assert_eq!(order(&list, &slots), [1, 3]);
        assert!(list.remove(&mut slots, 3, |links| links));
        list.push_back(&mut slots, 0, |links| links);
        assert_eq!(order(&list, &slots), [1, 0]);
        assert_eq!((list.head(), list.tail()), (Some(1), Some(0)));
        assert_eq!(list.pop_front(&mut slots, |links| links), Some(1));
        assert_eq!((list.head(), list.tail()), (Some(0), Some(0)));
        assert_eq!(list.pop_front(&mut slots, |links| links), Some(0));
        assert_eq!(list.pop_front(&mut slots, |links| links), None);
        assert_eq!(list.head(), None);
        assert!(slots.iter().all(|links| !links.is_linked()));
    }
}

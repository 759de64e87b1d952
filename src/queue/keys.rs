//! The caller's key type, erased for the queue: keys interned to dense ids,
//! exactly (by `Eq`, not by hash alone), and forgotten when idle.
//!
//! A front hands keys over in a `VecDeque<K>` behind `dyn Any` (one
//! downcast per call, no allocation per key); the queue works with ids.

use std::any::Any;
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash};

use hashbrown::{DefaultHashBuilder, HashTable};

/// A key's dense id, its slot's index.
pub(crate) type KeyId = usize;

/// The caller's key type, erased: interns keys to dense ids, exactly (by
/// `Eq`, not by hash alone), and forgets them.
pub(crate) trait KeyTable: Send {
    /// Interns the front key of `keys` (a `VecDeque<K>`), popping it;
    /// unless it is already interned and `refuse` says no to its id, which
    /// leaves it in place (one hash either way).
    fn intern_front(&mut self, keys: &mut dyn Any, refuse: &dyn Fn(KeyId) -> bool)
    -> Option<KeyId>;
    /// The id of the front key of `keys` (a `VecDeque<K>`), if tracked.
    fn find_front(&self, keys: &dyn Any) -> Option<KeyId>;
    /// Forgets `id`; returns the key if its `Drop` may run user code.
    fn forget(&mut self, id: KeyId) -> Option<Box<dyn Any + Send>>;
}

/// A [`KeyTable`] for keys of type `K`: a slab of keys (with their hash)
/// by id, and a raw hash table of ids that compares through the slab, so
/// each key is hashed once, when it is interned, and needs no `Clone`.
struct Table<K> {
    keys: Vec<Option<(K, u64)>>,
    free: Vec<KeyId>,
    ids: HashTable<KeyId>,
    /// foldhash, seeded per table (hashbrown's default hasher), not std's
    /// SipHash, which cost this table most of its time. Keys may come from
    /// the network: foldhash is only "minimally DoS-resistant" (no set of
    /// keys collides under every seed; an attacker who learns the seed can
    /// still collide, <https://github.com/orlp/foldhash#hashdos-resistance>),
    /// but the table never holds more than capacity + workers + waiting
    /// producers keys (invariant 4 of `keyed`), so even total collision
    /// makes a lookup scan that many, never a number that grows.
    hasher: DefaultHashBuilder,
}

/// A key table for `K`.
pub(crate) fn table<K: Hash + Eq + Send + 'static>() -> Box<dyn KeyTable> {
    Box::new(Table::<K> {
        keys: Vec::new(),
        free: Vec::new(),
        ids: HashTable::new(),
        hasher: DefaultHashBuilder::default(),
    })
}

fn downcast<K: 'static>(keys: &dyn Any) -> &VecDeque<K> {
    match keys.downcast_ref::<VecDeque<K>>() {
        Some(keys) => keys,
        None => unreachable!("KeyTable: keys of another type"),
    }
}

impl<K: Hash + Eq> Table<K> {
    fn lookup(&self, key: &K, hash: u64) -> Option<KeyId> {
        let keys = &self.keys;
        self.ids
            .find(hash, |id| keys[*id].as_ref().is_some_and(|(k, _)| k == key))
            .copied()
    }
}

impl<K: Hash + Eq + Send + 'static> KeyTable for Table<K> {
    fn intern_front(
        &mut self,
        keys: &mut dyn Any,
        refuse: &dyn Fn(KeyId) -> bool,
    ) -> Option<KeyId> {
        let Some(keys) = keys.downcast_mut::<VecDeque<K>>() else {
            unreachable!("KeyTable: keys of another type")
        };
        let Some(front) = keys.front() else {
            unreachable!("KeyTable: one key per item")
        };
        let hash = self.hasher.hash_one(front);
        if let Some(id) = self.lookup(front, hash) {
            if refuse(id) {
                return None;
            }
            keys.pop_front();
            return Some(id);
        }
        let key = keys.pop_front()?;
        let id = match self.free.pop() {
            Some(id) => {
                self.keys[id] = Some((key, hash));
                id
            }
            None => {
                self.keys.push(Some((key, hash)));
                self.keys.len() - 1
            }
        };
        let keys = &self.keys;
        self.ids.insert_unique(hash, id, |id| {
            keys[*id].as_ref().map_or(0, |(_, hash)| *hash)
        });
        Some(id)
    }

    fn find_front(&self, keys: &dyn Any) -> Option<KeyId> {
        let key = downcast::<K>(keys).front()?;
        self.lookup(key, self.hasher.hash_one(key))
    }

    fn forget(&mut self, id: KeyId) -> Option<Box<dyn Any + Send>> {
        let (key, hash) = self.keys[id].take()?;
        if let Ok(entry) = self.ids.find_entry(hash, |other| *other == id) {
            entry.remove();
        }
        self.free.push(id);
        std::mem::needs_drop::<K>().then(|| Box::new(key) as Box<dyn Any + Send>)
    }
}

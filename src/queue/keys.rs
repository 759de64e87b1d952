//! The caller's key type, erased for the queue: keys interned to dense ids,
//! exactly (by `Eq`, not by hash alone), and forgotten when idle.
//!
//! A front hands keys over in a `VecDeque<K>` behind `dyn Any` (one
//! downcast per call, no allocation per key); the queue works with ids.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, RandomState};

/// A key's dense id, its slot's index.
pub(crate) type KeyId = usize;

/// The caller's key type, erased: interns keys to dense ids, exactly (by
/// `Eq`, not by hash alone), and forgets them.
pub(crate) trait KeyTable: Send {
    /// Interns the front key of `keys` (a `VecDeque<K>`), popping it.
    fn intern_front(&mut self, keys: &mut dyn Any) -> KeyId;
    /// The id of the front key of `keys` (a `VecDeque<K>`), if tracked.
    fn find_front(&self, keys: &dyn Any) -> Option<KeyId>;
    /// Forgets `id`; returns the key if its `Drop` may run user code.
    fn forget(&mut self, id: KeyId) -> Option<Box<dyn Any + Send>>;
}

/// A [`KeyTable`] for keys of type `K`: a slab of keys by id, and the ids
/// by hash (a list per hash, compared with `Eq`).
struct Table<K> {
    keys: Vec<Option<K>>,
    free: Vec<KeyId>,
    by_hash: HashMap<u64, Vec<KeyId>>,
    hasher: RandomState,
}

/// A key table for `K`.
pub(crate) fn table<K: Hash + Eq + Send + 'static>() -> Box<dyn KeyTable> {
    Box::new(Table::<K> {
        keys: Vec::new(),
        free: Vec::new(),
        by_hash: HashMap::new(),
        hasher: RandomState::new(),
    })
}

fn downcast<K: 'static>(keys: &dyn Any) -> &VecDeque<K> {
    match keys.downcast_ref::<VecDeque<K>>() {
        Some(keys) => keys,
        None => unreachable!("KeyTable: keys of another type"),
    }
}

impl<K: Hash + Eq> Table<K> {
    fn lookup(&self, key: &K) -> Option<KeyId> {
        let ids = self.by_hash.get(&self.hasher.hash_one(key))?;
        ids.iter()
            .copied()
            .find(|id| self.keys[*id].as_ref() == Some(key))
    }
}

impl<K: Hash + Eq + Send + 'static> KeyTable for Table<K> {
    fn intern_front(&mut self, keys: &mut dyn Any) -> KeyId {
        let Some(keys) = keys.downcast_mut::<VecDeque<K>>() else {
            unreachable!("KeyTable: keys of another type")
        };
        let Some(key) = keys.pop_front() else {
            unreachable!("KeyTable: one key per item")
        };
        if let Some(id) = self.lookup(&key) {
            return id;
        }
        let hash = self.hasher.hash_one(&key);
        let id = match self.free.pop() {
            Some(id) => {
                self.keys[id] = Some(key);
                id
            }
            None => {
                self.keys.push(Some(key));
                self.keys.len() - 1
            }
        };
        self.by_hash.entry(hash).or_default().push(id);
        id
    }

    fn find_front(&self, keys: &dyn Any) -> Option<KeyId> {
        self.lookup(downcast::<K>(keys).front()?)
    }

    fn forget(&mut self, id: KeyId) -> Option<Box<dyn Any + Send>> {
        let key = self.keys[id].take()?;
        let hash = self.hasher.hash_one(&key);
        if let Some(ids) = self.by_hash.get_mut(&hash) {
            ids.retain(|other| *other != id);
            if ids.is_empty() {
                self.by_hash.remove(&hash);
            }
        }
        self.free.push(id);
        std::mem::needs_drop::<K>().then(|| Box::new(key) as Box<dyn Any + Send>)
    }
}

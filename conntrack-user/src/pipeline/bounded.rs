//! One bounded, insertion-ordered map for everything the correlator holds while it waits
//! (verdicts for their fate, reasons for their verdict, resets for their lookup, `midstream`
//! records for their lost entry, and what was reported, for resets that come later). Waits end
//! in arrival order (a deadline is the arrival time plus a fixed wait), so ageing is popping
//! from the old end while an entry is due; a full map makes room by giving its oldest entry
//! back to the caller, who reports it with what is known: nothing is dropped unseen.
//!
//! The entries are kept in arrival order in a queue of slots, found by key through a map of
//! sequence numbers. Removal by key is O(1): it empties its slot, which is dropped once at the
//! front (a key removed and inserted again gets a new slot, young). Empty slots are compacted
//! away when they outnumber the live ones, so memory stays within a constant factor of the
//! capacity.

use std::{
    collections::{hash_map::Entry, HashMap, VecDeque},
    hash::{BuildHasher, Hash, Hasher, RandomState},
};

/// The hasher of the maps: keys are integers the kernel made (`sk_buff` addresses, boot-clock
/// stamps) or ct-trace's own tokens, never chosen by a peer, so SipHash's defence against chosen
/// keys is not needed and costs a large share of the per-event time in a storm. A multiply-mix
/// of the key's words with a per-map random seed, and a final avalanche.
#[derive(Clone, Copy)]
pub struct KeyHash(u64);

impl Default for KeyHash {
    fn default() -> Self {
        Self(RandomState::new().hash_one(0u64))
    }
}

impl BuildHasher for KeyHash {
    type Hasher = Mix;
    fn build_hasher(&self) -> Mix {
        Mix(self.0)
    }
}

pub struct Mix(u64);

impl Hasher for Mix {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(23) ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_u32(&mut self, x: u32) {
        self.write_u64(u64::from(x));
    }

    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }

    fn finish(&self) -> u64 {
        // murmur3's finaliser: every input bit reaches the low bits the table indexes by.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

pub struct Bounded<K, V> {
    /// Where each key's entry is: its sequence number, `slots[seq - base]`. The values live in
    /// `slots`, not here: the map stays small (a key and a number), so the kernel's storms of
    /// insertions and removals rehash and probe a few bytes per entry instead of moving reports
    /// of a few hundred bytes around.
    map: HashMap<K, u64, KeyHash>,
    /// The entries oldest first, at consecutive sequence numbers from `base`; a removed entry
    /// leaves its slot empty until the slots before it go.
    slots: VecDeque<Slot<K, V>>,
    base: u64,
    cap: usize,
}

struct Slot<K, V> {
    key: K,
    /// `None` once removed.
    value: Option<V>,
}

impl<K: Copy + Eq + Hash, V> Bounded<K, V> {
    /// A map that holds at most `cap` entries (at least one).
    pub fn new(cap: usize) -> Self {
        Self {
            map: HashMap::default(),
            slots: VecDeque::new(),
            base: 0,
            cap: cap.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn contains_key(&self, k: &K) -> bool {
        self.map.contains_key(k)
    }

    fn index(&self, k: &K) -> Option<usize> {
        self.map.get(k).map(|seq| (seq - self.base) as usize)
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        self.slots.get(self.index(k)?)?.value.as_ref()
    }

    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let i = self.index(k)?;
        self.slots.get_mut(i)?.value.as_mut()
    }

    /// Stores `v` under `k`. A new key goes to the young end, and when the map is full the
    /// oldest entry makes room and is returned; a key already present keeps its place and gets
    /// the new value (the old one is dropped), and nothing is evicted.
    pub fn insert(&mut self, k: K, v: V) -> Option<(K, V)> {
        let seq = self.base + self.slots.len() as u64;
        match self.map.entry(k) {
            Entry::Occupied(e) => {
                let i = (*e.get() - self.base) as usize;
                self.slots[i].value = Some(v);
                return None;
            }
            Entry::Vacant(e) => {
                e.insert(seq);
                self.slots.push_back(Slot {
                    key: k,
                    value: Some(v),
                });
            }
        }
        // The new entry is the youngest of at least two: never the one that goes.
        if self.map.len() > self.cap {
            self.pop_oldest()
        } else {
            None
        }
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        let seq = self.map.remove(k)?;
        let v = self.slots[(seq - self.base) as usize].value.take();
        if seq == self.base {
            self.drop_empty_front();
        } else if self.slots.len() > 2 * self.map.len() + 16 {
            self.compact();
        }
        v
    }

    /// The oldest entry.
    pub fn oldest(&self) -> Option<(&K, &V)> {
        // The front is kept live: this looks at one slot.
        self.iter().next()
    }

    pub fn pop_oldest(&mut self) -> Option<(K, V)> {
        self.pop_front_if(|_| true)
    }

    /// Removes and returns the oldest entries while `due` says so, oldest first; stops at the
    /// first one that is not due.
    pub fn pop_oldest_while(&mut self, mut due: impl FnMut(&V) -> bool) -> Vec<(K, V)> {
        let mut out = Vec::new();
        while let Some(e) = self.pop_front_if(&mut due) {
            out.push(e);
        }
        out
    }

    /// Pops the oldest entry if `due` says so (one hash removal), and the empty slots after it.
    fn pop_front_if(&mut self, due: impl FnOnce(&V) -> bool) -> Option<(K, V)> {
        let front = self.slots.front()?;
        if !due(front.value.as_ref()?) {
            return None;
        }
        let Slot { key, value } = self.slots.pop_front()?;
        self.base += 1;
        self.map.remove(&key);
        self.drop_empty_front();
        Some((key, value?))
    }

    /// The entries, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.slots
            .iter()
            .filter_map(|s| s.value.as_ref().map(|v| (&s.key, v)))
    }

    /// Drops empty slots from the front: the oldest entry is then found at once.
    fn drop_empty_front(&mut self) {
        while self.slots.front().is_some_and(|s| s.value.is_none()) {
            self.slots.pop_front();
            self.base += 1;
        }
    }

    /// Drops the empty slots in the middle, once they outnumber the entries (so this is paid
    /// for by as many removals as entries it moves), and numbers the entries again.
    fn compact(&mut self) {
        self.slots.retain(|s| s.value.is_some());
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(seq) = self.map.get_mut(&s.key) {
                *seq = self.base + i as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys<V>(b: &Bounded<u32, V>) -> Vec<u32> {
        b.iter().map(|(k, _)| *k).collect()
    }

    #[test]
    fn a_full_map_gives_back_its_oldest_entry_for_each_new_key() {
        let mut b = Bounded::new(3);
        for k in 0..3 {
            assert_eq!(b.insert(k, k * 10), None);
        }
        assert_eq!(b.insert(3, 30), Some((0, 0)));
        assert_eq!(b.insert(4, 40), Some((1, 10)));
        assert_eq!(b.len(), 3);
        assert_eq!(keys(&b), [2, 3, 4]);
        // A key already present keeps its place, takes the value, evicts nothing.
        assert_eq!(b.insert(2, 21), None);
        assert_eq!(keys(&b), [2, 3, 4]);
        assert_eq!(b.get(&2), Some(&21));
    }

    #[test]
    fn removed_entries_neither_count_nor_come_back() {
        let mut b = Bounded::new(3);
        for k in 0..3 {
            b.insert(k, ());
        }
        assert_eq!(b.remove(&1), Some(()));
        assert_eq!(b.remove(&1), None);
        // Room for one more without an eviction; then the oldest live one goes.
        assert_eq!(b.insert(3, ()), None);
        assert_eq!(b.insert(4, ()), Some((0, ())));
        assert_eq!(b.insert(5, ()), Some((2, ())));
        assert_eq!(keys(&b), [3, 4, 5]);
        // Removed and inserted again: young, not in its old place.
        b.remove(&3);
        b.insert(3, ());
        assert_eq!(keys(&b), [4, 5, 3]);
        assert_eq!(b.oldest(), Some((&4, &())));
    }

    #[test]
    fn ageing_pops_the_due_front_only() {
        let mut b = Bounded::new(10);
        for (k, deadline) in [(1, 5), (2, 7), (3, 6), (4, 9)] {
            b.insert(k, deadline);
        }
        b.remove(&2);
        let due: Vec<_> = b.pop_oldest_while(|d| *d <= 6);
        assert_eq!(due, [(1, 5), (3, 6)]);
        assert_eq!(b.pop_oldest_while(|d| *d <= 6), []);
        assert_eq!(keys(&b), [4]);
        assert_eq!(b.pop_oldest_while(|_| true), [(4, 9)]);
        assert!(b.is_empty() && b.oldest().is_none() && b.pop_oldest().is_none());
    }

    #[test]
    fn stale_slots_do_not_pile_up() {
        let mut b = Bounded::new(100);
        b.insert(u32::MAX, ());
        for k in 0..10_000 {
            b.insert(k, ());
            b.remove(&k);
        }
        assert_eq!(b.len(), 1);
        assert!(b.slots.len() <= 2 * b.len() + 17, "{}", b.slots.len());
        assert!(b.contains_key(&u32::MAX) && b.get_mut(&u32::MAX).is_some());
    }
}

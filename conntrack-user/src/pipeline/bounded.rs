//! One bounded, insertion-ordered map for everything the correlator holds while it waits
//! (verdicts for their fate, reasons for their verdict, resets for their lookup, `midstream`
//! records for their lost entry, and what was reported, for resets that come later). Waits end
//! in arrival order (a deadline is the arrival time plus a fixed wait), so ageing is popping
//! from the old end while an entry is due; a full map makes room by giving its oldest entry
//! back to the caller, who reports it with what is known: nothing is dropped unseen.
//!
//! Removal by key is O(1): it leaves a stale slot in the order queue that is skipped later (a
//! slot is live while the map holds its key with the same sequence number, so a key removed
//! and inserted again is not mistaken for its old self). Stale slots are dropped from the front
//! at once and compacted away when they outnumber the live ones, so memory stays within a
//! constant factor of the capacity.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
};

pub struct Bounded<K, V> {
    map: HashMap<K, (u64, V)>,
    /// Keys oldest first, with the sequence number they were inserted under.
    order: VecDeque<(u64, K)>,
    next: u64,
    cap: usize,
}

impl<K: Copy + Eq + Hash, V> Bounded<K, V> {
    /// A map that holds at most `cap` entries (at least one).
    pub fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
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

    pub fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.map.get_mut(k).map(|(_, v)| v)
    }

    /// Stores `v` under `k`. A new key goes to the young end, and when the map is full the
    /// oldest entry makes room and is returned; a key already present keeps its place and gets
    /// the new value (the old one is dropped), and nothing is evicted.
    pub fn insert(&mut self, k: K, v: V) -> Option<(K, V)> {
        if let Some(slot) = self.map.get_mut(&k) {
            slot.1 = v;
            return None;
        }
        let evicted = if self.map.len() >= self.cap {
            self.pop_oldest()
        } else {
            None
        };
        let seq = self.next;
        self.next += 1;
        self.map.insert(k, (seq, v));
        self.order.push_back((seq, k));
        evicted
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        let (_, v) = self.map.remove(k)?;
        self.tidy();
        Some(v)
    }

    /// The oldest entry.
    pub fn oldest(&self) -> Option<(&K, &V)> {
        // `tidy` keeps the front live: this looks at one slot.
        self.iter().next()
    }

    pub fn pop_oldest(&mut self) -> Option<(K, V)> {
        while let Some((seq, k)) = self.order.pop_front() {
            if self.live(seq, &k) {
                let (_, v) = self.map.remove(&k)?;
                self.tidy();
                return Some((k, v));
            }
        }
        None
    }

    /// Removes and returns the oldest entries while `due` says so, oldest first; stops at the
    /// first one that is not due.
    pub fn pop_oldest_while(&mut self, mut due: impl FnMut(&V) -> bool) -> Vec<(K, V)> {
        let mut out = Vec::new();
        while self.oldest().is_some_and(|(_, v)| due(v)) {
            out.extend(self.pop_oldest());
        }
        out
    }

    /// The entries, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.order
            .iter()
            .filter_map(|(seq, k)| match self.map.get_key_value(k) {
                Some((k, (s, v))) if s == seq => Some((k, v)),
                _ => None,
            })
    }

    fn live(&self, seq: u64, k: &K) -> bool {
        self.map.get(k).is_some_and(|(s, _)| *s == seq)
    }

    /// Drops stale slots from the front, and all of them when they outnumber the live ones.
    fn tidy(&mut self) {
        while let Some((seq, k)) = self.order.front() {
            if self.live(*seq, k) {
                break;
            }
            self.order.pop_front();
        }
        if self.order.len() > 2 * self.map.len() + 16 {
            let map = &self.map;
            self.order
                .retain(|(seq, k)| map.get(k).is_some_and(|(s, _)| s == seq));
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
        assert!(b.order.len() <= 2 * b.len() + 17, "{}", b.order.len());
        assert!(b.contains_key(&u32::MAX) && b.get_mut(&u32::MAX).is_some());
    }
}

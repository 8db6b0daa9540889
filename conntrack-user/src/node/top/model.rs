//! The table `top` keeps between dumps: each entry's group keys, kept up to date by
//! ctnetlink's events and reconciled with dumps.
//!
//! Per entry (bounded by the table, itself bounded by `nf_conntrack_max`): a 64-bit key (the
//! entry's `CTA_ID` and 32 bits of a hash of its original tuple: CTA_ID is itself a 32-bit
//! hash, and 262,144 entries would share some ids) and the four slots of its groups, ~30
//! bytes in the map. Per grouping at most `cap` keys have a slot; the rest count as `other`.
//! A group's slot is freed when its last entry goes, so keys do not pile up over time.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    net::{IpAddr, SocketAddr},
};

use super::{proto_name, rows, Group};
use crate::node::netlink::{tcp_state_name, Entry, Event, Tuple};

/// The slot of the keys beyond the cap.
const OTHER: u32 = u32::MAX;

/// One grouping's counts: entries and entries new in the interval, by key.
pub(super) struct Groups<K> {
    index: HashMap<K, u32>,
    slots: Vec<(Option<K>, u64, u64)>,
    /// Each slot's key as shown, made when the slot is taken: a snapshot of a grouping of
    /// 65,536 keys, all as heavy, finds the first ones by key without formatting them all.
    shown: Vec<Box<str>>,
    show: fn(&K) -> String,
    free: Vec<u32>,
    other: (u64, u64),
    cap: usize,
}

impl<K: Hash + Eq + Clone> Groups<K> {
    pub(super) fn new(cap: usize, show: fn(&K) -> String) -> Self {
        Self {
            index: HashMap::new(),
            slots: Vec::new(),
            shown: Vec::new(),
            show,
            free: Vec::new(),
            other: (0, 0),
            cap,
        }
    }

    /// The slot of `k`, taken now if the cap allows. Always followed by an `add` (an empty
    /// slot is freed by `sub` only).
    fn slot(&mut self, k: &K) -> u32 {
        if let Some(i) = self.index.get(k) {
            return *i;
        }
        if self.index.len() >= self.cap {
            return OTHER;
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = (Some(k.clone()), 0, 0);
                self.shown[i as usize] = (self.show)(k).into();
                i
            }
            None => {
                self.slots.push((Some(k.clone()), 0, 0));
                self.shown.push((self.show)(k).into());
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(k.clone(), i);
        i
    }

    fn add(&mut self, i: u32, new: bool) {
        let (e, n) = if i == OTHER {
            (&mut self.other.0, &mut self.other.1)
        } else {
            let s = &mut self.slots[i as usize];
            (&mut s.1, &mut s.2)
        };
        *e += 1;
        *n += u64::from(new);
    }

    fn sub(&mut self, i: u32, new: bool) {
        if i == OTHER {
            self.other.0 = self.other.0.saturating_sub(1);
            self.other.1 = self.other.1.saturating_sub(u64::from(new));
            return;
        }
        let s = &mut self.slots[i as usize];
        s.1 = s.1.saturating_sub(1);
        s.2 = s.2.saturating_sub(u64::from(new));
        if s.1 == 0 {
            if let Some(k) = s.0.take() {
                self.index.remove(&k);
            }
            self.shown[i as usize] = Box::default();
            s.2 = 0;
            self.free.push(i);
        }
    }

    /// The interval's new entries start again from 0.
    fn reset_new(&mut self) {
        for s in &mut self.slots {
            s.2 = 0;
        }
        self.other.1 = 0;
    }

    /// Keys with entries (`other` counts as one when it has some).
    pub(super) fn distinct(&self) -> usize {
        self.index.len() + usize::from(self.other.0 > 0)
    }

    /// Heaviest first (ties by key, as shown), `limit` of them, then `other`; `name`: the
    /// name of a key, asked of the rows shown only.
    pub(super) fn rows(&self, limit: usize, name: impl Fn(&K) -> Option<String>) -> Vec<Group> {
        let mut live: Vec<(u64, &str, u32)> = (self.slots.iter().enumerate())
            .filter(|(_, s)| s.0.is_some() && s.1 > 0)
            .map(|(i, s)| (s.1, &*self.shown[i], i as u32))
            .collect();
        let mut rest = self.other;
        for (e, _, i) in &live {
            rest.0 += e;
            rest.1 += self.slots[*i as usize].2;
        }
        let order = |a: &(u64, &str, u32), b: &(u64, &str, u32)| b.0.cmp(&a.0).then(a.1.cmp(b.1));
        if limit > 0 && live.len() > limit {
            live.select_nth_unstable_by(limit - 1, order);
            live.truncate(limit);
        }
        live.sort_unstable_by(order);
        let shown: Vec<Group> = live
            .into_iter()
            .map(|(entries, key, i)| {
                let (k, _, new) = &self.slots[i as usize];
                rest.0 -= entries;
                rest.1 -= new;
                Group {
                    key: key.to_string(),
                    name: k.as_ref().and_then(&name),
                    entries,
                    new: *new,
                }
            })
            .collect();
        rows(shown, rest, limit)
    }
}

/// An entry's groups, the interval its NEW event came in (`born`: it counts as new in its
/// groups while that interval lasts, also when it moves to another state), whether it has sent
/// an event (`WATCHED`: the kernel will tell its changes) and whether the dump under way
/// listed it (`SEEN`).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Slots {
    groups: [u32; 4],
    born: u32,
    flags: u8,
}

const WATCHED: u8 = 1;
const SEEN: u8 = 2;

/// The table as events and dumps tell it.
pub(super) struct Model {
    entries: HashMap<u64, Slots>,
    pub(super) service: Groups<(SocketAddr, u8)>,
    pub(super) backend: Groups<(SocketAddr, u8)>,
    pub(super) client: Groups<IpAddr>,
    pub(super) state: Groups<&'static str>,
    /// Entries known from a dump only, which have sent no event yet.
    unwatched: u64,
    /// NEW events since the last snapshot.
    pub(super) new: u64,
    /// The interval, counted in snapshots (0 is no interval: entries not created by an event).
    interval: u32,
}

/// The map's key of an entry: its id, and 32 bits of its original tuple's hash.
fn key(id: u32, orig: &Tuple) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    orig.hash(&mut h);
    u64::from(id) << 32 | (h.finish() & 0xffff_ffff)
}

/// A Service's or a backend's key as shown: `addr:port/proto`.
fn addr((a, p): &(SocketAddr, u8)) -> String {
    format!("{a}/{}", proto_name(*p))
}

/// The state group of an entry: its TCP state, or its protocol.
fn state_of(e: &Entry) -> &'static str {
    match (e.orig.proto, e.tcp_state) {
        (6, Some(s)) => tcp_state_name(s),
        (p, _) => proto_name(p),
    }
}

impl Model {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            entries: HashMap::new(),
            service: Groups::new(cap, addr),
            backend: Groups::new(cap, addr),
            client: Groups::new(cap, IpAddr::to_string),
            state: Groups::new(cap, |s| s.to_string()),
            unwatched: 0,
            new: 0,
            interval: 1,
        }
    }

    pub(super) fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    pub(super) fn unwatched(&self) -> u64 {
        self.unwatched
    }

    fn count(&mut self, g: [u32; 4], new: bool) {
        self.service.add(g[0], new);
        self.backend.add(g[1], new);
        self.client.add(g[2], new);
        self.state.add(g[3], new);
    }

    fn uncount(&mut self, g: [u32; 4], new: bool) {
        self.service.sub(g[0], new);
        self.backend.sub(g[1], new);
        self.client.sub(g[2], new);
        self.state.sub(g[3], new);
    }

    /// The slots of `e`'s groups (taken, and counted by the caller).
    fn groups_of(&mut self, e: &Entry, state: &'static str) -> [u32; 4] {
        let p = e.orig.proto;
        [
            self.service
                .slot(&(SocketAddr::new(e.orig.dst, e.orig.dport), p)),
            self.backend
                .slot(&(SocketAddr::new(e.reply.src, e.reply.sport), p)),
            self.client.slot(&e.orig.src),
            self.state.slot(&state),
        ]
    }

    /// Puts `e` in the table (replacing what was under its key), in `state`.
    fn put(&mut self, k: u64, e: &Entry, state: &'static str, new: bool, flags: u8) {
        self.remove(k);
        let groups = self.groups_of(e, state);
        self.count(groups, new);
        self.unwatched += u64::from(flags & WATCHED == 0);
        let born = if new { self.interval } else { 0 };
        self.entries.insert(
            k,
            Slots {
                groups,
                born,
                flags,
            },
        );
    }

    fn remove(&mut self, k: u64) {
        if let Some(s) = self.entries.remove(&k) {
            self.uncount(s.groups, s.born == self.interval);
            self.unwatched -= u64::from(s.flags & WATCHED == 0);
        }
    }

    /// Moves entry `k` to the state group `state`.
    fn restate(&mut self, k: u64, state: &'static str) {
        let Some(mut s) = self.entries.get(&k).copied() else {
            return;
        };
        let slot = self.state.slot(&state);
        if slot != s.groups[3] {
            let new = s.born == self.interval;
            self.state.add(slot, new);
            self.state.sub(s.groups[3], new);
            s.groups[3] = slot;
            self.entries.insert(k, s);
        }
    }

    fn watch(&mut self, k: u64) {
        if let Some(s) = self.entries.get_mut(&k) {
            if s.flags & WATCHED == 0 {
                s.flags |= WATCHED;
                self.unwatched -= 1;
            }
        }
    }

    /// Applies one event. A NEW event's entry is new (even when the dump that preceded it saw
    /// it already: it was created after the subscription); an update moves the entry to the
    /// state it carries, if any; a destroy removes it. Updates and destroys of entries not in
    /// the table are of entries gone before the dump reached them (their destroy follows or
    /// came): nothing to do.
    pub(super) fn apply(&mut self, ev: &Event) {
        match ev {
            Event::New(id, e) => {
                let k = key(*id, &e.orig);
                self.put(k, e, state_of(e), true, WATCHED);
                self.new += 1;
            }
            Event::Update(id, e) => {
                let k = key(*id, &e.orig);
                self.watch(k);
                if e.tcp_state.is_some() {
                    self.restate(k, state_of(e));
                }
            }
            Event::Destroy(id, e) => self.remove(key(*id, &e.orig)),
        }
    }

    /// A dump starts: entries it does not list are removed by `end_dump`. (A mark cleared on
    /// every entry, not an epoch's parity: a dump that failed half-way must not leave marks.)
    pub(super) fn begin_dump(&mut self) {
        for s in self.entries.values_mut() {
            s.flags &= !SEEN;
        }
    }

    /// One entry of the dump: added (`new`: counted as created, when there are no events to
    /// count them; otherwise it may have been there before the last look), or its state taken
    /// from the dump.
    pub(super) fn dumped(&mut self, id: u32, e: &Entry, new: bool) {
        let k = key(id, &e.orig);
        match self.entries.get_mut(&k) {
            Some(s) => {
                s.flags |= SEEN;
                self.restate(k, state_of(e));
            }
            None => {
                self.put(k, e, state_of(e), new, SEEN);
                self.new += u64::from(new);
            }
        }
    }

    /// The dump ended: entries it did not list are gone.
    pub(super) fn end_dump(&mut self) {
        let gone: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, s)| s.flags & SEEN == 0)
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            self.remove(k);
        }
    }

    /// A snapshot was taken: new entries count from 0 again.
    pub(super) fn reset_new(&mut self) {
        self.new = 0;
        // Wraps after 2^32 snapshots (272 years at 2 s): no entry lives that long.
        self.interval = self.interval.checked_add(1).unwrap_or(1);
        self.service.reset_new();
        self.backend.reset_new();
        self.client.reset_new();
        self.state.reset_new();
    }
}

use super::*;

#[test]
fn tally_keeps_cap_keys_and_counts_the_rest_as_other() {
    let mut t = Tally::<u32>::new(2);
    for (k, new) in [
        (1, true),
        (1, false),
        (2, false),
        (3, true),
        (3, true),
        (1, false),
    ] {
        t.add(k, new);
    }
    let rows = t.rows(10, |k| (k.to_string(), None));
    let got: Vec<(&str, u64, u64)> = rows
        .iter()
        .map(|g| (g.key.as_str(), g.entries, g.new))
        .collect();
    assert_eq!(got, [("1", 3, 1), ("2", 1, 0), ("other", 2, 2)]);
}

#[test]
fn rows_are_heaviest_first_and_limited() {
    let mut t = Tally::<&str>::new(100);
    for k in ["b", "a", "c", "c", "b", "c"] {
        t.add(k, false);
    }
    let rows = t.rows(2, |k| (k.to_string(), None));
    let got: Vec<(&str, u64)> = rows.iter().map(|g| (g.key.as_str(), g.entries)).collect();
    assert_eq!(got, [("c", 3), ("b", 2), ("other", 1)]);
}

use super::model::Model;
use crate::node::netlink::{Event, Tuple};

/// A TCP entry from client `c` port `p` to 10.96.0.10:80, answered by 10.77.2.2:8080, in
/// `state` (None: an event without the state).
fn tcp(c: u8, p: u16, state: Option<u8>) -> Entry {
    let ip = |s: &str| s.parse().unwrap();
    Entry {
        orig: Tuple {
            src: ip(&format!("10.0.0.{c}")),
            sport: p,
            dst: ip("10.96.0.10"),
            dport: 80,
            proto: 6,
        },
        reply: Tuple {
            src: ip("10.77.2.2"),
            sport: 8080,
            dst: ip(&format!("10.0.0.{c}")),
            dport: p,
            proto: 6,
        },
        status: 0,
        tcp_state: state,
    }
}

const EST: Option<u8> = Some(3);
const FIN_WAIT: Option<u8> = Some(4);
const TIME_WAIT: Option<u8> = Some(7);

/// (key, entries, new) of a grouping's rows.
fn got(rows: Vec<Group>) -> Vec<(String, u64, u64)> {
    rows.into_iter()
        .map(|g| (g.key, g.entries, g.new))
        .collect()
}

fn row(k: &str, e: u64, n: u64) -> (String, u64, u64) {
    (k.to_string(), e, n)
}

fn states(m: &Model) -> Vec<(String, u64, u64)> {
    got(m.state.rows(10, |_| None))
}

/// A dump, as `Sampler::dump` gives it to the model.
fn dump(m: &mut Model, entries: &[(u32, Entry)]) {
    m.begin_dump();
    for (id, e) in entries {
        m.dumped(*id, e, false);
    }
    m.end_dump();
}

#[test]
fn events_after_the_dump_add_move_and_remove_entries() {
    let mut m = Model::new(100);
    dump(
        &mut m,
        &[(1, tcp(1, 1000, EST)), (2, tcp(2, 2000, TIME_WAIT))],
    );
    assert_eq!((m.len(), m.unwatched()), (2, 2));
    m.apply(&Event::New(3, tcp(1, 1001, Some(1))));
    m.apply(&Event::Update(3, tcp(1, 1001, EST)));
    m.apply(&Event::Update(1, tcp(1, 1000, FIN_WAIT)));
    // An update without the state (a status change) leaves it where it was.
    m.apply(&Event::Update(1, tcp(1, 1000, None)));
    m.apply(&Event::Destroy(2, tcp(2, 2000, None)));
    // Events of entries the model does not have (gone before the dump reached them).
    m.apply(&Event::Update(9, tcp(9, 9000, EST)));
    m.apply(&Event::Destroy(9, tcp(9, 9000, None)));
    assert_eq!((m.len(), m.unwatched(), m.new), (2, 0, 1));
    assert_eq!(
        states(&m),
        [row("ESTABLISHED", 1, 1), row("FIN_WAIT", 1, 0)]
    );
    assert_eq!(got(m.client.rows(10, |_| None)), [row("10.0.0.1", 2, 1)]);
    m.reset_new();
    assert_eq!(
        states(&m),
        [row("ESTABLISHED", 1, 0), row("FIN_WAIT", 1, 0)]
    );
}

#[test]
fn events_queued_during_the_dump_end_as_the_table_is() {
    let mut m = Model::new(100);
    // Created during the dump and listed by it: its NEW, applied after, does not count it twice.
    // Listed, then destroyed: its DESTROY removes it. Listed in SYN_SENT, its later updates
    // take it to ESTABLISHED.
    dump(
        &mut m,
        &[
            (1, tcp(1, 1000, Some(1))),
            (2, tcp(2, 2000, EST)),
            (3, tcp(3, 3000, Some(1))),
        ],
    );
    m.apply(&Event::New(1, tcp(1, 1000, Some(1))));
    m.apply(&Event::Destroy(2, tcp(2, 2000, None)));
    m.apply(&Event::Update(3, tcp(3, 3000, Some(2))));
    m.apply(&Event::Update(3, tcp(3, 3000, EST)));
    // Created after the dump passed its place: added by its NEW.
    m.apply(&Event::New(4, tcp(4, 4000, Some(1))));
    assert_eq!(m.len(), 3);
    assert_eq!(
        states(&m),
        [row("SYN_SENT", 2, 2), row("ESTABLISHED", 1, 0)]
    );
}

#[test]
fn a_dump_removes_what_it_does_not_list_and_corrects_states() {
    let mut m = Model::new(100);
    dump(&mut m, &[(1, tcp(1, 1000, EST)), (2, tcp(2, 2000, EST))]);
    m.apply(&Event::New(3, tcp(3, 3000, EST)));
    // Entry 1 ended and entry 2 moved to TIME_WAIT without events (created before top
    // listened); the same id with another tuple is another entry.
    dump(
        &mut m,
        &[
            (2, tcp(2, 2000, TIME_WAIT)),
            (3, tcp(3, 3000, EST)),
            (1, tcp(5, 5000, EST)),
        ],
    );
    assert_eq!((m.len(), m.unwatched()), (3, 2));
    assert_eq!(
        states(&m),
        [row("ESTABLISHED", 2, 1), row("TIME_WAIT", 1, 0)]
    );
}

#[test]
fn groups_beyond_the_cap_are_other_and_freed_slots_are_taken_again() {
    let mut m = Model::new(2);
    for c in 1..=3 {
        m.apply(&Event::New(u32::from(c), tcp(c, 1000, EST)));
    }
    let clients = |m: &Model| got(m.client.rows(10, |_| None));
    assert_eq!(
        clients(&m),
        [
            row("10.0.0.1", 1, 1),
            row("10.0.0.2", 1, 1),
            row("other", 1, 1)
        ]
    );
    assert_eq!(m.client.distinct(), 3);
    m.apply(&Event::Destroy(1, tcp(1, 1000, None)));
    m.apply(&Event::Destroy(3, tcp(3, 1000, None)));
    m.reset_new();
    m.apply(&Event::New(4, tcp(4, 1000, EST)));
    assert_eq!(clients(&m), [row("10.0.0.2", 1, 0), row("10.0.0.4", 1, 1)]);
    assert_eq!(m.client.distinct(), 2);
}

#[test]
fn rows_of_many_groups_are_the_heaviest_then_the_first_by_key() {
    let mut m = Model::new(100);
    // Clients 10.0.0.1..=12: two entries each, 10.0.0.12 three; 10.0.0.10 and .11 sort
    // before .2 as shown.
    let mut id = 0;
    for c in 1..=12u8 {
        for p in 0..2 + u16::from(c == 12) {
            id += 1;
            m.apply(&Event::New(id, tcp(c, 1000 + p, EST)));
        }
    }
    let rows = got(m.client.rows(4, |_| None));
    assert_eq!(
        rows,
        [
            row("10.0.0.12", 3, 3),
            row("10.0.0.1", 2, 2),
            row("10.0.0.10", 2, 2),
            row("10.0.0.11", 2, 2),
            row("other", 16, 16)
        ]
    );
}

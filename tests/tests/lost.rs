//! Lost entries: a flow whose conntrack entry went (deleted with `conntrack -D`, or expired
//! after an idle spell) has its next reply picked up mid-stream without the Service's NAT; the
//! client resets it. ct-trace reports the `midstream` packet with the entry it lost and how,
//! and attributes each reset to it (`cause: "entry_lost"`), ten flows at a time, beside
//! unrelated traffic. A clean run of short connections shows none of the table-pressure kinds.
//!
//! Traffic stays in the namespaces the tests create; every wait is bounded.

use std::{collections::HashSet, time::Duration};

use integration_tests::{
    in_vm, need_root, poll, python, Background, CtTrace, Output, Topology, CLIENT, SERVER, SERVICE,
};

const FLOWS: usize = 10;

/// Every flow has one `midstream` (lost `how`) and one `entry_lost` attribution naming client,
/// Service and backend; the counts reconcile.
fn assert_each_lost(out: &Output, ports: &[u16], how: &str) {
    let mids = out.of_kind("midstream");
    let attributions = out.of_kind("attribution");
    for p in ports {
        let client = format!("{CLIENT}:{p}");
        let m: Vec<_> = mids.iter().filter(|m| m["dport"] == *p).collect();
        assert_eq!(m.len(), 1, "one midstream for {client}: {mids:#?}");
        let m = m[0];
        assert_eq!(m["src"], SERVER, "{m}");
        assert_eq!(m["sport"], 8080, "{m}");
        assert_eq!(m["lost"]["how"], how, "{m}");
        assert_eq!(m["lost"]["certain"], true, "{m}");
        assert_eq!(m["lost"]["entry"]["orig_src"], client.as_str(), "{m}");
        assert_eq!(
            m["lost"]["entry"]["orig_dst"],
            format!("{SERVICE}:80"),
            "{m}"
        );
        assert_eq!(
            m["lost"]["entry"]["reply_src"],
            format!("{SERVER}:8080"),
            "{m}"
        );
        let a: Vec<_> = attributions
            .iter()
            .filter(|a| a["client"] == client.as_str())
            .collect();
        assert_eq!(
            a.len(),
            1,
            "one attribution for {client}: {attributions:#?}"
        );
        let a = a[0];
        assert_eq!(a["cause"], "entry_lost", "{a}");
        assert_eq!(a["service"], format!("{SERVICE}:80"), "{a}");
        assert_eq!(a["backend"], format!("{SERVER}:8080"), "{a}");
        assert_eq!(a["reset_src"], client.as_str(), "{a}");
        assert_eq!(a["lost"]["how"], how, "{a}");
        let r: Vec<_> = out.events_of("rst_sent", |r| r["src"] == CLIENT && r["sport"] == *p);
        assert_eq!(r.len(), 1, "{r:#?}");
        assert_eq!(r[0]["cause"], "entry_lost", "{}", r[0]);
        assert_eq!(r[0]["caused_by_invalid"], false, "{}", r[0]);
    }
    assert_eq!(mids.len(), ports.len(), "no other midstream: {mids:#?}");
    assert_eq!(attributions.len(), ports.len(), "{attributions:#?}");
    let table = &out.summary()["table"];
    let m = &table["midstream"];
    assert_eq!(m["counted"], ports.len() as u64, "{table}");
    assert_eq!(
        m["counted"].as_u64(),
        Some(
            ["shown", "suppressed", "filtered", "lost", "unprinted"]
                .iter()
                .map(|k| m[k].as_u64().unwrap())
                .sum()
        ),
        "{table}"
    );
    out.reconciled_invalid();
}

#[test]
fn ten_entries_deleted_with_conntrack_are_ten_entry_lost_attributions() {
    if !need_root("ten_entries_deleted_with_conntrack_are_ten_entry_lost_attributions") {
        return;
    }
    let t = Topology::ipv4_only();
    let ct = CtTrace::start(Some(&t.node), &[]);
    let _chatter = t.ipv6_chatter();
    // Bulk through the same node (another Service port): its entry must stay.
    let _bulk = t.bulk(8);
    // The backend speaks after the deletion (TCG is slow to run `conntrack -D`).
    let speak_after = if in_vm() { 6.0 } else { 1.5 };
    let (ports, out) = t.held_flows(ct, FLOWS, speak_after, |t| {
        t.node
            .exec("conntrack -D -p tcp --orig-dst 10.96.0.10 --dport 80 >/dev/null 2>&1");
    });
    assert_each_lost(&out, &ports, "deleted");
    let ports: HashSet<u16> = ports.into_iter().collect();
    assert_eq!(ports.len(), FLOWS);
}

#[test]
fn ten_entries_that_expired_while_idle_are_ten_entry_lost_attributions() {
    if !need_root("ten_entries_that_expired_while_idle_are_ten_entry_lost_attributions") {
        return;
    }
    let t = Topology::ipv4_only();
    // An established timeout of 1 s in the node's namespace: idle flows lose their entry (and
    // their NAT) there; the backend then speaks after 3 s of silence.
    t.node
        .exec("sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_established=1");
    let ct = CtTrace::start(Some(&t.node), &[]);
    let (ports, out) = t.held_flows(ct, FLOWS, 3.0, |_| {});
    assert_each_lost(&out, &ports, "expired");
}

#[test]
fn a_clean_run_of_short_connections_has_no_table_pressure_events() {
    if !need_root("a_clean_run_of_short_connections_has_no_table_pressure_events") {
        return;
    }
    let t = Topology::ipv4_only();
    let ct = CtTrace::start(Some(&t.node), &[]);
    let server = Background::start(
        &t.server,
        &format!(
            "{} -c \"import socket\nl=socket.socket()\nl.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\nl.bind(('0.0.0.0',8080))\nl.listen(64)\nl.settimeout(20)\nfor _ in range(50):\n  c=l.accept()[0]\n  c.sendall(b'ok')\n  c.close()\"",
            python()
        ),
    );
    poll::listening(&t.server, 8080);
    t.client.exec(&format!(
        "{} -c \"import socket\nfor _ in range(50):\n  s=socket.create_connection(('{SERVICE}',80),timeout=5)\n  assert s.recv(2)==b'ok'\n  s.close()\"",
        python()
    ));
    server.wait(Duration::from_secs(30));
    let out = ct.stop();
    for k in ["midstream", "table_full", "evicted", "attribution"] {
        assert!(out.of_kind(k).is_empty(), "no {k}: {:#?}", out.of_kind(k));
    }
    let table = &out.summary()["table"];
    for k in ["table_full", "midstream"] {
        assert_eq!(table[k]["counted"], 0, "{table}");
    }
    assert_eq!(table["kernel_drop"], 0, "{table}");
    assert_eq!(table["kernel_early_drop"], 0, "{table}");
    assert_eq!(table["evicted"]["shown"], 0, "{table}");
}

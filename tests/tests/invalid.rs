//! Conntrack INVALID verdicts, their fate, and the resets they cause, in the Kubernetes shape in
//! miniature: client -> node (DNAT of a service address) -> server. The server side sends one
//! crafted segment on an established connection; ct-trace runs in the node namespace.
//!
//! Every test also holds ct-trace to its contract: its INVALID count equals the kernel's
//! `invalid` counter delta for the node namespace over the same interval.

use integration_tests::{
    kernel_at_least, need_root, python, scripts, CtTrace, Output, Topology, CLIENT, CLIENT6,
    SERVER, SERVER6, SERVICE,
};
use serde_json::Value;

struct Run {
    t: Topology,
    out: Output,
    seg: Value,
    kernel_delta: u64,
    v6: bool,
}

fn scenario(mode: &str, v6: bool, drop_rule: bool) -> Run {
    scenario_with(mode, v6, drop_rule, &[])
}

fn scenario_with(mode: &str, v6: bool, drop_rule: bool, flags: &[&str]) -> Run {
    let t = Topology::new();
    if drop_rule {
        t.drop_invalid();
    }
    let before = t.node.kernel_invalid();
    // Every reset, not only the attributed ones: the tests also look at the others.
    let mut args = vec!["--resets", "all"];
    args.extend_from_slice(flags);
    let ct = CtTrace::start(Some(&t.node), &args);
    let seg = t.server.exec(&format!(
        "{} {} {mode} {} {}",
        python(),
        scripts().join("segment.py").display(),
        t.client.name,
        if v6 { "v6" } else { "" }
    ));
    let out = ct.stop();
    let kernel_delta = t.node.kernel_invalid() - before;
    assert!(out.status.success(), "{}", out.stderr);
    let seg: Value = serde_json::from_str(seg.trim()).expect("segment.py prints JSON");
    let run = Run {
        t,
        out,
        seg,
        kernel_delta,
        v6,
    };
    // With --summary the events are not printed: the summary test checks the flows instead.
    if flags.is_empty() {
        run.assert_accurate();
    }
    run.assert_mode();
    run
}

impl Run {
    /// The contract: every INVALID verdict of the node namespace, no more, no less.
    fn assert_accurate(&self) {
        let events = self.out.of_kind("invalid").len() as u64;
        assert_eq!(
            events, self.kernel_delta,
            "invalid events vs the kernel's counter: {:#?}\n{}",
            self.out.events, self.out.stderr
        );
        let i = self.out.reconciled_invalid();
        assert_eq!(i["counted"], self.kernel_delta, "{i}");
        assert_eq!(i["shown"], events, "{i}");
        assert_eq!(i["lost"], 0, "{i}");
        assert_eq!(
            self.out.summary()["lost"],
            serde_json::json!({}),
            "nothing lost"
        );
    }

    /// The reason of an event: conntrack's own words where ct-trace's kprobes can read them;
    /// on a kernel without kprobes (the build machine), `unknown` with that reason, which is
    /// what a user sees there.
    fn assert_reason(&self, v: &Value, words: &str) {
        let reason = v["reason"].as_str().unwrap();
        if self.out.reasons_known() {
            assert!(
                reason.starts_with(words),
                "reason {reason:?}, expected {words:?}: {v:#}"
            );
        } else {
            assert!(
                reason.starts_with("unknown (") && reason.contains("no kprobes"),
                "{v:#}\n{}",
                self.out.stderr
            );
            integration_tests::skip(
                "reason words",
                &format!("no kprobes on this kernel: the reason is `{reason}` (conntrack's words are asserted in the VM matrix)"),
            );
        }
    }

    /// With the reason kprobes, the conntrack entry comes from the kernel at the verdict, with
    /// both TCP windows, and the miss is measured.
    fn assert_window(&self, v: &Value) {
        if !self.out.reasons_known() {
            assert_eq!(v["conntrack"]["source"], "ctnetlink", "{v:#}");
            return;
        }
        let ct = &v["conntrack"];
        assert_eq!(ct["source"], "kernel", "{v:#}");
        for w in ["original_window", "reply_window"] {
            assert!(ct[w]["td_maxend"].as_u64().is_some(), "{w}: {v:#}");
            assert_eq!(ct[w]["liberal"], false, "{v:#}");
        }
        let missed = v["missed_by"].as_u64().expect("missed_by");
        assert!(missed > 0 && missed < 1 << 31, "{v:#}");
        eprintln!("window evidence: {ct}, missed_by {missed}");
    }

    /// The attach mode the test asked for is the one that gave the verdicts.
    fn assert_mode(&self) {
        let want = integration_tests::mode();
        if want != "auto" {
            assert_eq!(
                self.out.verdict_source(),
                Some(want.as_str()),
                "{}",
                self.out.stderr
            );
        }
    }

    /// The verdict on the crafted segment itself.
    fn crafted(&self) -> Vec<&Value> {
        let (src, dst) = if self.v6 {
            (SERVER6, CLIENT6)
        } else {
            (SERVER, CLIENT)
        };
        self.out
            .of_kind("invalid")
            .into_iter()
            .filter(|e| {
                e["src"] == src
                    && e["dst"] == dst
                    && e["sport"] == 8080
                    && e["dport"] == self.seg["cport"]
                    && e["seq"] == self.seg["seq"]
            })
            .collect()
    }
}

fn out_of_window_is_attributed(mode: &str, v6: bool) {
    let r = scenario(mode, v6, false);
    let (client, server, service) = if v6 {
        (CLIENT6, SERVER6, "[fd96::10]:80")
    } else {
        (CLIENT, SERVER, "10.96.0.10:80")
    };
    let cport = r.seg["cport"].as_u64().unwrap();

    let crafted = r.crafted();
    assert_eq!(
        crafted.len(),
        1,
        "one verdict on the crafted segment: {:#?}",
        r.out.events
    );
    let v = crafted[0];
    assert_eq!(v["netns"], r.t.node.inode());
    assert_eq!(v["hook"], "prerouting");
    assert_eq!(v["in_iface"], "eth2");
    assert_eq!(v["ack"], r.seg["ack"]);
    assert_eq!(v["flags"], "ACK");
    assert_eq!(
        v["fate"], "passed",
        "no rule dropped it: it went on without its DNAT reversed"
    );
    // Before 6.1 the window messages name no bound ("SEQ is over the upper bound (over the
    // window of the receiver)", logged through "%s"); `missed_by` then comes from the windows.
    let words = match (mode == "seq_over", kernel_at_least(6, 1)) {
        (true, true) => "SEQ is over upper bound",
        (false, true) => "ACK is over upper bound",
        (true, false) => "SEQ is over the upper bound",
        (false, false) => "ACK is over the upper bound",
    };
    r.assert_reason(v, words);
    r.assert_window(v);
    let ct = &v["conntrack"];
    assert_eq!(ct["direction"], "reply", "{v:#}");
    assert_eq!(ct["orig_src"], client);
    assert_eq!(ct["orig_sport"], cport);
    assert_eq!(ct["orig_dst"], if v6 { "fd96::10" } else { SERVICE });
    assert_eq!(ct["orig_dport"], 80);
    assert_eq!(ct["tcp_state"], "ESTABLISHED");

    // The client has no connection with the backend's address and resets it.
    let caused: Vec<_> = r
        .out
        .of_kind("rst_sent")
        .into_iter()
        .filter(|e| e["caused_by_invalid"] == true)
        .collect();
    assert_eq!(caused.len(), 1, "{:#?}", r.out.events);
    assert_eq!(caused[0]["netns"], r.t.client.inode());
    assert_eq!(caused[0]["src"], client);
    assert_eq!(caused[0]["dst"], server);
    assert_eq!(caused[0]["dport"], 8080);

    let attributions = r.out.of_kind("attribution");
    assert_eq!(
        attributions.len(),
        1,
        "exactly one attribution: {:#?}",
        r.out.events
    );
    let a = attributions[0];
    let ep = |addr: &str, port: u64| {
        if v6 {
            format!("[{addr}]:{port}")
        } else {
            format!("{addr}:{port}")
        }
    };
    assert_eq!(a["client"], ep(client, cport));
    assert_eq!(a["service"], service);
    assert_eq!(a["backend"], ep(server, 8080));
    assert_eq!(a["reset_netns"], r.t.client.inode());
    assert_eq!(a["invalid_netns"], r.t.node.inode());
    assert_eq!(a["seq"], r.seg["seq"]);
    assert_eq!(a["ack"], r.seg["ack"]);
    assert_eq!(a["fate"], "passed");
    assert!(a["delay_us"].as_u64().unwrap() < 1_000_000);
    // Shown with --nocapture: the events a user would see.
    eprintln!("{v}\n{}\n{a}", caused[0]);
    // The exit summary ranks the flow.
    assert!(
        r.out
            .stderr
            .contains("resets caused by conntrack (INVALID packets, lost entries), by flow"),
        "{}",
        r.out.stderr
    );
    assert!(
        r.out.stderr.contains(&ep(client, cport)),
        "{}",
        r.out.stderr
    );
}

#[test]
fn seq_over_the_window_through_dnat_is_invalid_and_its_reset_attributed() {
    if need_root("seq_over_the_window_through_dnat_is_invalid_and_its_reset_attributed") {
        out_of_window_is_attributed("seq_over", false);
    }
}

#[test]
fn ack_over_the_window_through_dnat_is_invalid_and_its_reset_attributed() {
    if need_root("ack_over_the_window_through_dnat_is_invalid_and_its_reset_attributed") {
        out_of_window_is_attributed("ack_over", false);
    }
}

#[test]
fn ipv6_out_of_window_is_invalid_and_its_reset_attributed() {
    if need_root("ipv6_out_of_window_is_invalid_and_its_reset_attributed") {
        out_of_window_is_attributed("seq_over", true);
    }
}

#[test]
fn the_incident_a_healthy_server_connection_is_killed() {
    if !need_root("the_incident_a_healthy_server_connection_is_killed") {
        return;
    }
    // SEQ over the window with a valid ACK: the client's RST carries that ACK as its sequence
    // number, which is inside the server's window, so the server drops its healthy connection.
    let r = scenario("seq_over", false, false);
    assert_eq!(r.seg["server_reset"], true, "{}", r.seg);
    let received: Vec<_> = r
        .out
        .of_kind("rst_received")
        .into_iter()
        .filter(|e| e["netns"] == r.t.server.inode())
        .collect();
    assert_eq!(received.len(), 1, "{:#?}", r.out.events);
    assert_eq!(received[0]["src"], CLIENT);
    assert_eq!(received[0]["dst"], SERVER);
    assert_eq!(received[0]["dport"], 8080);
}

#[test]
fn a_drop_rule_protects_and_nothing_is_attributed() {
    if !need_root("a_drop_rule_protects_and_nothing_is_attributed") {
        return;
    }
    let r = scenario("seq_over", false, true);
    let crafted = r.crafted();
    assert_eq!(crafted.len(), 1, "{:#?}", r.out.events);
    assert_eq!(crafted[0]["fate"], "dropped");
    assert_eq!(crafted[0]["drop_reason"], "NETFILTER_DROP");
    assert!(
        r.out.of_kind("attribution").is_empty(),
        "{:#?}",
        r.out.events
    );
    assert_eq!(r.seg["server_reset"], false);
}

#[test]
fn bad_flags_and_out_of_window_rst_are_invalid_without_a_reset() {
    if !need_root("bad_flags_and_out_of_window_rst_are_invalid_without_a_reset") {
        return;
    }
    for mode in ["bad_flags", "rst_out"] {
        let r = scenario(mode, false, false);
        let crafted = r.crafted();
        assert_eq!(crafted.len(), 1, "{mode}: {:#?}", r.out.events);
        if mode == "bad_flags" {
            r.assert_reason(crafted[0], "invalid tcp flag combination");
        } else if r.out.reasons_known() {
            let reason = crafted[0]["reason"].as_str().unwrap();
            assert!(!reason.starts_with("unknown"), "{:#}", crafted[0]);
            eprintln!("rst_out reason: {reason}");
        }
        assert_eq!(
            crafted[0]["flags"],
            if mode == "bad_flags" {
                "FIN|SYN|RST"
            } else {
                "RST"
            }
        );
        // Nobody answers a segment carrying RST.
        assert!(
            r.out.of_kind("attribution").is_empty(),
            "{mode}: {:#?}",
            r.out.events
        );
    }
}

#[test]
fn seq_under_the_window_is_only_ignored_on_6_1_and_later() {
    if !need_root("seq_under_the_window_is_only_ignored_on_6_1_and_later") {
        return;
    }
    // The classic boom-server segment: conntrack keeps the entry (IGNORE, commit 6e250dcbff1d),
    // NAT is still reversed, the client's socket absorbs it. Before 6.1 it was INVALID.
    let r = scenario("ignore", false, false);
    let expected = usize::from(!kernel_at_least(6, 1));
    assert_eq!(r.crafted().len(), expected, "{:#?}", r.out.events);
    // ct-trace labels it: `ignored`, not INVALID, with conntrack's words (needs the kprobes).
    let ignored: Vec<_> = r
        .out
        .of_kind("ignored")
        .into_iter()
        .filter(|e| e["seq"] == r.seg["seq"] && e["src"] == SERVER)
        .collect();
    if r.out.reasons_known() && expected == 0 {
        assert_eq!(ignored.len(), 1, "{:#?}", r.out.events);
        let reason = ignored[0]["reason"].as_str().unwrap();
        assert!(
            reason.contains("under lower bound") || reason.contains("more than expected"),
            "{:#}",
            ignored[0]
        );
        assert_eq!(ignored[0]["fate"], "accepted");
        assert_eq!(ignored[0]["conntrack"]["source"], "kernel");
        eprintln!("ignored: {}", ignored[0]);
    } else {
        assert!(ignored.is_empty(), "{:#?}", r.out.events);
    }
    assert!(
        r.out.of_kind("attribution").len() == expected,
        "{:#?}",
        r.out.events
    );
}

#[test]
fn without_active_conntrack_nothing_is_reported_invalid() {
    if !need_root("without_active_conntrack_nothing_is_reported_invalid") {
        return;
    }
    // No rule and no NAT use conntrack here, so its hooks are not registered and every packet
    // has no entry - none of them is INVALID, and a reset of one is not "caused" by one.
    let ns = integration_tests::Netns::new("bare");
    let ct = CtTrace::start(Some(&ns), &["--resets", "all"]);
    ns.exec(&format!(
        "{} -c \"import socket\ns=socket.socket()\ntry:\n  s.connect(('127.0.0.1',9))\nexcept ConnectionRefusedError:\n  pass\"",
        python()
    ));
    let out = ct.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.of_kind("invalid").is_empty(), "{:#?}", out.events);
    assert!(out.of_kind("attribution").is_empty(), "{:#?}", out.events);
    let rst: Vec<_> = out
        .of_kind("rst_sent")
        .into_iter()
        .filter(|e| e["netns"] == ns.inode())
        .collect();
    assert_eq!(rst.len(), 1, "{:#?}", out.events);
    assert_eq!(rst[0]["caused_by_invalid"], false);
    let i = out.reconciled_invalid();
    assert_eq!(i["counted"], 0, "{i}");
}

#[test]
fn summary_ranks_flows_by_attributed_resets() {
    if !need_root("summary_ranks_flows_by_attributed_resets") {
        return;
    }
    let r = scenario_with("seq_over", false, false, &["--summary"]);
    // --summary prints no events, only the flows, one JSON object each.
    let flows = r.out.of_kind("flow");
    assert_eq!(
        flows.len() + 1,
        r.out.events.len(),
        "the flows, then the summary: {:#?}",
        r.out.events
    );
    r.out.reconciled_invalid();
    assert_eq!(flows.len(), 1, "{:#?}", r.out.events);
    let f = flows[0];
    assert_eq!(f["client"], format!("{CLIENT}:{}", r.seg["cport"]));
    assert_eq!(f["service"], "10.96.0.10:80");
    assert_eq!(f["backend"], "10.77.2.2:8080");
    assert_eq!(f["resets"], 1);
    assert_eq!(f["reasons"].as_array().unwrap().len(), 1);
    assert!(f["first"].as_str().unwrap() <= f["last"].as_str().unwrap());
}

//! `ct-trace doctor` reads a namespace's real posture: the sysctl and the rules the test sets.

use integration_tests::{bin, need_root, Netns, Topology};
use serde_json::Value;

fn doctor(ns: &Netns) -> Value {
    let out = ns.exec(&format!("{} doctor -o json", bin().display()));
    serde_json::from_str(out.trim()).expect("doctor prints one JSON object")
}

#[test]
fn doctor_verdicts_follow_liberal_tracking_and_drop_rules() {
    if !need_root("doctor_verdicts_follow_liberal_tracking_and_drop_rules") {
        return;
    }
    let t = Topology::new();
    let p = doctor(&t.node);
    assert_eq!(p["netns"], t.node.inode());
    assert_eq!(p["tcp_be_liberal"], 0);
    assert_eq!(p["verdict"], "exposed", "{p:#}");
    assert!(p["drop_rules"].as_array().unwrap().is_empty());

    t.drop_invalid();
    let p = doctor(&t.node);
    assert_eq!(p["verdict"], "protected-rule", "{p:#}");
    let rules = p["drop_rules"].as_array().unwrap();
    assert!(
        rules
            .iter()
            .any(|r| r["family"] == "ipv4" && r["rule"].as_str().unwrap().contains("INVALID")),
        "{p:#}"
    );
    assert!(rules.iter().any(|r| r["family"] == "ipv6"), "{p:#}");

    let t2 = Topology::new();
    t2.node
        .exec("sysctl -qw net.netfilter.nf_conntrack_tcp_be_liberal=1");
    let p = doctor(&t2.node);
    assert_eq!(p["tcp_be_liberal"], 1);
    assert_eq!(p["verdict"], "protected-liberal", "{p:#}");

    // The text report says it in words.
    let text = t.node.exec(&format!("{} doctor", bin().display()));
    assert!(text.contains("verdict: protected-rule"), "{text}");
}

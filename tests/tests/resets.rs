//! Resets in namespaces the test creates appear in ct-trace's JSON stream with the right tuple,
//! namespace and reason, whichever namespace ct-trace itself runs in.

use integration_tests::{
    kernel_at_least, need_root, poll, python, Background, CtTrace, Topology, CLIENT, CLIENT6,
    SERVER, SERVER6,
};
use serde_json::Value;

fn connect(t: &Topology, addr: &str, port: u16) -> String {
    let fam = if addr.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    t.client.exec(&format!(
        "{} -c \"import socket\ns=socket.socket(socket.{fam})\ns.settimeout(3)\ntry:\n  s.connect(('{addr}',{port}))\nexcept ConnectionRefusedError:\n  print(s.getsockname()[1])\"",
        python()
    ))
}

fn find<'a>(events: &'a [Value], kind: &str, f: impl Fn(&Value) -> bool) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["kind"] == kind && f(e))
        .collect()
}

#[test]
fn connect_to_a_closed_port_is_an_rst_sent_with_tuple_netns_and_reason() {
    if !need_root("connect_to_a_closed_port_is_an_rst_sent_with_tuple_netns_and_reason") {
        return;
    }
    let t = Topology::new();
    // ct-trace runs in the node namespace; the reset happens in the server namespace.
    let ct = CtTrace::start(Some(&t.node), &["--resets", "all"]);
    let port: u64 = connect(&t, SERVER, 9)
        .trim()
        .parse()
        .expect("refused, with a client port");
    let port6: u64 = connect(&t, SERVER6, 9)
        .trim()
        .parse()
        .expect("refused (v6)");
    let out = ct.stop();
    assert!(out.status.success(), "{}", out.stderr);

    for (src, dst, cport) in [(SERVER, CLIENT, port), (SERVER6, CLIENT6, port6)] {
        let sent = find(&out.events, "rst_sent", |e| {
            e["src"] == src && e["dport"] == cport && e["netns"] == t.server.inode()
        });
        assert_eq!(
            sent.len(),
            1,
            "one rst_sent {src}:9 > {dst}:{cport} in {:#?}",
            out.events
        );
        let e = sent[0];
        assert_eq!(e["sport"], 9);
        assert_eq!(e["dst"], dst);
        assert_eq!(
            e["netns"],
            t.server.inode(),
            "the reset happened in the server namespace"
        );
        assert_eq!(e["flags"], "RST|ACK", "a SYN is answered with RST|ACK");
        assert_eq!(e["trigger"]["flags"], "SYN");
        assert_eq!(
            e["ack"],
            e["trigger"]["seq"].as_u64().unwrap().wrapping_add(1) % (1 << 32)
        );
        assert_eq!(e["socket"], false);
        assert_eq!(e["caused_by_invalid"], false);
        let reason = e["reason"].as_str().unwrap();
        // The reason argument exists from Linux 6.10; older kernels say why it is missing.
        assert!(
            reason == "NO_SOCKET" || reason.starts_with("unknown ("),
            "{reason}"
        );
        assert!(e["time"].as_str().unwrap().ends_with('Z'));
        // The client's connection in SYN_SENT is reset by that RST.
        let recv = find(&out.events, "rst_received", |e| {
            e["dst"] == dst && e["dport"] == cport
        });
        assert_eq!(recv.len(), 1, "{:#?}", out.events);
        assert_eq!(recv[0]["src"], src);
        assert_eq!(recv[0]["netns"], t.client.inode());
    }
    // A reset that has nothing to do with conntrack is attributed to nothing.
    assert!(out.of_kind("attribution").is_empty(), "{:#?}", out.events);
    assert!(
        out.stderr.contains("rst_sent"),
        "summary on stderr: {}",
        out.stderr
    );
}

#[test]
fn an_aborted_established_connection_is_an_rst_received_by_the_peer() {
    if !need_root("an_aborted_established_connection_is_an_rst_received_by_the_peer") {
        return;
    }
    let t = Topology::new();
    let ct = CtTrace::start(None, &["--resets", "all"]);
    // Server accepts, then the client closes with SO_LINGER 0: an abortive close sends a RST.
    let script = format!(
        "import socket,struct,threading,time\n\
         l=socket.socket(); l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); l.bind(('{SERVER}',7000)); l.listen(1)\n\
         print('listening', flush=True)\n\
         c,_=l.accept(); c.settimeout(3)\n\
         try:\n  c.recv(1); print('closed')\n\
         except ConnectionResetError:\n  print('reset')\n"
    );
    let server = std::process::Command::new("ip")
        .args(["netns", "exec", &t.server.name, python(), "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    poll::listening(&t.server, 7000);
    let cport = t.client.exec(&format!(
        "{} -c \"import socket,struct\ns=socket.create_connection(('{SERVER}',7000),3)\nprint(s.getsockname()[1])\ns.setsockopt(socket.SOL_SOCKET,socket.SO_LINGER,struct.pack('ii',1,0))\ns.close()\"",
        python()
    ));
    let cport: u64 = cport.trim().parse().unwrap();
    let so = server.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&so.stdout).contains("reset"),
        "the server saw its connection reset"
    );
    let out = ct.stop();
    let recv = find(&out.events, "rst_received", |e| {
        e["netns"] == t.server.inode()
    });
    assert_eq!(recv.len(), 1, "{:#?}", out.events);
    assert_eq!(recv[0]["src"], CLIENT);
    assert_eq!(recv[0]["sport"], cport);
    assert_eq!(recv[0]["dst"], SERVER);
    assert_eq!(recv[0]["dport"], 7000);
    // The abort is sent by a socket, with no packet causing it.
    let sent = find(&out.events, "rst_sent", |e| e["netns"] == t.client.inode());
    assert_eq!(sent.len(), 1, "{:#?}", out.events);
    assert_eq!(sent[0]["socket"], true);
    assert_eq!(sent[0]["src"], CLIENT);
    assert_eq!(sent[0]["sport"], cport);
    assert_eq!(sent[0]["dst"], SERVER);
    assert_eq!(sent[0]["dport"], 7000);
}

/// A socket that resets its own connection as it closes (TCP_STATE: SO_LINGER 0;
/// TCP_ABORT_ON_CLOSE: closed with data unread) has given its port back by then (the kernel
/// zeroes `inet_num` first): the reset still names its real local port.
#[test]
fn resets_a_closing_socket_sends_carry_its_real_ports() {
    if !need_root("resets_a_closing_socket_sends_carry_its_real_ports") {
        return;
    }
    let t = Topology::new();
    let ct = CtTrace::start(None, &["--resets", "all"]);
    // The server sends a byte on every connection, then waits for the client to go.
    let server = Background::start(
        &t.server,
        &format!(
            "{} -c \"import socket,time\nl=socket.socket(); l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); l.bind(('{SERVER}',7001)); l.listen(8)\nfor _ in range(2):\n  c,_=l.accept(); c.send(b'x'); time.sleep(0.2)\ntime.sleep(3)\"",
            python()
        ),
    );
    poll::listening(&t.server, 7001);
    // First: SO_LINGER 0 (an abortive close). Second: closed with the byte unread.
    let ports = t.client.exec(&format!(
        "{} -c \"import socket,struct,time\na=socket.create_connection(('{SERVER}',7001),3); print(a.getsockname()[1]); time.sleep(0.1); a.recv(1)\na.setsockopt(socket.SOL_SOCKET,socket.SO_LINGER,struct.pack('ii',1,0)); a.close()\nb=socket.create_connection(('{SERVER}',7001),3); print(b.getsockname()[1]); time.sleep(0.3); b.close()\"",
        python()
    ));
    let ports: Vec<u64> = ports
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    drop(server);
    let out = ct.stop();
    let sent = find(&out.events, "rst_sent", |e| e["netns"] == t.client.inode());
    assert_eq!(sent.len(), 2, "{sent:#?}");
    for (r, port) in sent.iter().zip(&ports) {
        assert_eq!(r["socket"], true, "{r}");
        assert_eq!(r["src"], CLIENT, "{r}");
        assert_eq!(r["sport"], *port, "the reset names its socket's port: {r}");
        assert_eq!(r["dst"], SERVER, "{r}");
        assert_eq!(r["dport"], 7001, "{r}");
    }
    if kernel_at_least(6, 10) {
        assert_eq!(sent[0]["reason"], "TCP_STATE", "{}", sent[0]);
        assert_eq!(sent[1]["reason"], "TCP_ABORT_ON_CLOSE", "{}", sent[1]);
    }
}

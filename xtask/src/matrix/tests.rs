//! The matrix's jobs, labels and test binaries.

use super::*;

#[test]
fn kprobe_everywhere_netfilter_from_6_4() {
    use Mode::*;
    use Series::*;
    assert_eq!(
        jobs(&[], &[]),
        [
            (V5_10, Kprobe),
            (V6_1, Kprobe),
            (V6_1, Fexit),
            (V6_12, Netfilter),
            (V6_12, Fexit),
            (V7_2, Kprobe),
            (V7_2, Netfilter)
        ]
    );
    assert_eq!(
        jobs(&[V7_2, V6_1, V7_2], &[]),
        [
            (V7_2, Kprobe),
            (V7_2, Netfilter),
            (V6_1, Kprobe),
            (V6_1, Fexit)
        ]
    );
    // Asked for, fexit runs wherever the kernel has it.
    assert_eq!(
        jobs(&[], &[Fexit]),
        [(V6_1, Fexit), (V6_12, Fexit), (V7_2, Fexit)]
    );
    assert_eq!(
        jobs(&[], &[Netfilter]),
        [(V6_12, Netfilter), (V7_2, Netfilter)]
    );
    assert_eq!(jobs(&[V6_1], &[Netfilter]), []);
    assert_eq!(jobs(&[V5_10], &[]), [(V5_10, Kprobe)]);
    // Asked for, kprobe runs on 6.12 too.
    assert_eq!(
        jobs(&[V6_12], &[Kprobe, Netfilter]),
        [(V6_12, Kprobe), (V6_12, Netfilter)]
    );
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_lab_and_no_procfs_run_on_5_10_and_6_1_unless_targets_are_asked_for() {
    use Mode::*;
    use Series::*;
    let base = strings(VM_TESTS);
    let with_lab: Vec<String> = base
        .iter()
        .cloned()
        .chain(["lab".into(), "no_procfs".into()])
        .collect();
    assert_eq!(job_tests(V5_10, &[]), with_lab);
    assert_eq!(job_tests(V6_1, &[]), with_lab);
    assert_eq!(job_tests(V6_12, &[]), base);
    assert_eq!(job_tests(V7_2, &[]), base);
    let asked = strings(&["resets"]);
    assert_eq!(job_tests(V6_1, &asked), asked);
    assert_eq!(all_tests(&jobs(&[], &[]), &[]), with_lab);
    assert_eq!(all_tests(&jobs(&[V7_2], &[]), &[]), base);
    assert_eq!(all_tests(&jobs(&[], &[]), &asked), asked);

    let built: Vec<(String, PathBuf)> = with_lab
        .iter()
        .map(|t| (t.clone(), PathBuf::from(format!("/t/{t}"))))
        .collect();
    let all: Vec<MatrixJob> = matrix_jobs(&jobs(&[], &[]), &[])
        .into_iter()
        .map(|(s, m, t, x)| MatrixJob::new(s, m, &t, &built, x).unwrap())
        .collect();
    assert_eq!(common_tests(&all), VM_TESTS);
    let extra: Vec<String> = all.iter().map(|j| extra_cell(j, VM_TESTS)).collect();
    // The lab in jobs of its own, after the others: the longest job stays short. The fexit
    // job's targets are common ones: its label names them.
    assert_eq!(
        extra,
        [
            "-",
            "-",
            "-",
            "-",
            "-",
            "lab,no_procfs",
            "lab,no_procfs",
            "-",
            "-"
        ]
    );
    let labels: Vec<String> = all.iter().map(|j| j.label()).collect();
    assert_eq!(labels[0], "kprobe");
    assert_eq!(labels[5], "kprobe+lab+no_procfs");
    assert_eq!((all[5].series, all[6].series), (V5_10, V6_1));
    assert_eq!(
        all[6].binaries,
        [
            ("lab".into(), PathBuf::from("/t/lab")),
            ("no_procfs".into(), PathBuf::from("/t/no_procfs"))
        ]
    );
    // Asked targets: those, in every job, and no extra job.
    assert_eq!(labels[7], "fexit+exact+lost+invalid");
    assert_eq!(labels[8], "fexit+exact+lost+invalid");
    assert_eq!((all[7].series, all[8].series), (V6_1, V6_12));
    assert_eq!(matrix_jobs(&jobs(&[], &[]), &asked).len(), 7);
    let err = MatrixJob::new(V6_1, Kprobe, &strings(&["lab"]), &built[..5], true)
        .err()
        .unwrap();
    assert_eq!(err.to_string(), "no test binary `lab` for 6.1");
}

#[test]
fn finds_the_wanted_test_executables() {
    let msg = |kind: &str, name: &str, test: bool, exe: &str| {
        format!(
            r#"{{"reason":"compiler-artifact","target":{{"kind":["{kind}"],"name":"{name}"}},"profile":{{"test":{test}}},"executable":{exe}}}"#
        )
    };
    let out = [
        msg("test", "resets", true, r#""/t/deps/resets-1""#),
        msg("bin", "ct-trace", false, r#""/t/ct-trace""#),
        msg(
            "lib",
            "integration_tests",
            true,
            r#""/t/deps/integration_tests-2""#,
        ),
        msg("test", "invalid", true, r#""/t/deps/invalid-3""#),
        msg("test", "cli", true, "null"),
        r#"{"reason":"build-finished","success":true}"#.to_string(),
    ]
    .join("\n");
    let wanted = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let found = test_executables(&out, &wanted(&["invalid", "resets"])).unwrap();
    assert_eq!(
        found,
        [
            ("invalid".to_string(), PathBuf::from("/t/deps/invalid-3")),
            ("resets".to_string(), PathBuf::from("/t/deps/resets-1"))
        ]
    );
    let err = test_executables(&out, &wanted(&["doctor"])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no integration test target `doctor` among the built tests (invalid, resets)"
    );
}

#[test]
fn the_guest_gets_mode_binary_and_series() {
    let job = MatrixJob {
        series: Series::V6_1,
        mode: Mode::Kprobe,
        binaries: vec![
            ("resets".into(), "/w/deps/resets-1".into()),
            ("invalid".into(), "/w/deps/invalid-2".into()),
        ],
        extra: false,
    };
    let s = guest_script(Path::new("/w/target/release/ct-trace"), &job).unwrap();
    let lines: Vec<&str> = s.lines().skip(1).collect();
    assert_eq!(
        lines,
        [
            "export CT_TRACE_BIN=/w/target/release/ct-trace",
            "export CT_TRACE_MODE=kprobe",
            "export CT_TRACE_VM=6.1",
            "rc=0",
            "echo 'ct-trace-vm: $ /w/deps/resets-1 --test-threads 1 --nocapture'",
            "/w/deps/resets-1 --test-threads 1 --nocapture || rc=$?",
            "echo 'ct-trace-vm: $ /w/deps/invalid-2 --test-threads 1 --nocapture'",
            "/w/deps/invalid-2 --test-threads 1 --nocapture || rc=$?",
            "exit $rc",
        ]
    );
    // The default fexit job runs part of exact.
    let job = MatrixJob {
        mode: Mode::Fexit,
        binaries: vec![
            ("exact".into(), "/w/deps/exact-3".into()),
            ("lost".into(), "/w/deps/lost-4".into()),
        ],
        extra: true,
        ..job
    };
    let s = guest_script(Path::new("/w/target/release/ct-trace"), &job).unwrap();
    assert!(
        s.contains("/w/deps/exact-3 --test-threads 1 --nocapture ten_out_of_window_replies_in_a_row_are_ten_attributions a_flood_is_counted_exactly two_instances_both_work_and_sigkill_leaves_nothing_attached || rc=$?"),
        "{s}"
    );
    assert!(
        s.contains("\n/w/deps/lost-4 --test-threads 1 --nocapture || rc=$?"),
        "{s}"
    );
}

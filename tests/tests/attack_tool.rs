//! `moat-attack` itself, run from the host with techniques that are safe anywhere: the JSON
//! line, the exit statuses (0 call succeeded, 1 call failed, 2 usage) and the bench loop.
//! Needs no root.

use std::process::{Command, Output};

const ATTACK: &str = env!("CARGO_BIN_EXE_moat-attack");

fn attack(args: &[&str]) -> (Output, serde_json::Value) {
    let output = Command::new(ATTACK).args(args).output().expect("running moat-attack");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null);
    (output, value)
}

#[test]
fn open_reads_an_existing_file() {
    let (output, line) = attack(&["open", ATTACK, "--read-bytes", "4"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(line["technique"], "open");
    assert_eq!(line["ok"], true);
    assert!(line["errno"].is_null());
    assert!(line["detail"].as_str().unwrap_or("").contains("read 4 bytes"), "{line}");
}

#[test]
fn a_failed_call_names_its_errno_and_exits_1() {
    let missing = tempfile::tempdir().expect("temporary directory").path().join("missing");
    let (output, line) = attack(&["open", missing.to_str().expect("utf-8 path")]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(line["ok"], false);
    assert_eq!(line["errno"], "ENOENT");
}

#[test]
fn connect_to_a_closed_port_is_refused() {
    // A port that was free a moment ago: nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let (output, line) = attack(&["connect-tcp", "127.0.0.1", &port.to_string()]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(line["technique"], "connect-tcp");
    assert_eq!(line["errno"], "ECONNREFUSED");
}

#[test]
fn usage_errors_exit_2_without_a_json_line() {
    let (output, line) = attack(&["open"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(line.is_null());
    // An ELF file could be a real module: finit-module refuses to try it.
    let (output, _) = attack(&["finit-module", ATTACK]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn bench_loops_report_time_per_operation() {
    let (output, line) = attack(&["loop", "open", "100", ATTACK]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(line["loop"], "open");
    assert_eq!(line["iterations"], 100);
    assert!(line["ns_per_op"].as_f64().is_some_and(|ns| ns > 0.0), "{line}");
    let (output, line) = attack(&["loop", "exec", "4", "/bin/true", "--batches", "2"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(line["batches"], 2);
    let fastest = line["min_ns_per_op"].as_f64().unwrap_or(0.0);
    let median = line["median_ns_per_op"].as_f64().unwrap_or(0.0);
    assert!(fastest > 0.0 && fastest <= median, "{line}");
}

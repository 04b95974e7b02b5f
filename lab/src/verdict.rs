//! The one JSON line an in-pod client (`__pod-connect`, its `--bench` modes) prints for
//! `moat lab probe` and `moat lab bench` to read.

use std::io::Write;

#[derive(serde::Serialize)]
struct Verdict<'a> {
    verdict: &'static str,
    detail: &'a str,
}

/// Prints `{"verdict":"allow"|"deny","detail":"..."}` and flushes.
pub fn print_verdict(allow: bool, detail: &str) {
    let verdict = Verdict {
        verdict: if allow { "allow" } else { "deny" },
        detail,
    };
    println!("{}", serde_json::to_string(&verdict).unwrap_or_default());
    let _ = std::io::stdout().flush();
}

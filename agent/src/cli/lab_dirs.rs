//! The lab's run-dir convention and binary name: `moat lab` and `moat-lab` both read it, and
//! the operator CLI (`--lab NAME`) finds a lab agent's admin socket with it, linking no lab
//! code.

use std::path::{Path, PathBuf};

/// The lab's binary.
pub const LAB_BINARY: &str = "moat-lab";
/// Set by `moat lab` for `moat-lab`: the `moat` binary the lab starts as its agent.
pub const AGENT_BIN_ENV: &str = "MOAT_AGENT_BIN";
/// Lab N keeps its files in `<LAB_RUN_DIR>/N`.
pub const LAB_RUN_DIR: &str = "/run/moat/lab";

/// Validates a lab name: `[a-z0-9-]{1,20}` (one path component under [`LAB_RUN_DIR`]).
pub fn parse_name(text: &str) -> Result<String, String> {
    let ok = (1..=20).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(text.to_string())
    } else {
        Err(format!("invalid lab name {text:?}: want 1-20 characters of [a-z0-9-]"))
    }
}

/// `/run/moat/lab/<name>`.
pub fn lab_dir(name: &str) -> PathBuf {
    Path::new(LAB_RUN_DIR).join(name)
}

/// `/run/moat/lab/<name>/admin.sock`: the lab's agent's admin socket (the lab writes it into
/// its agent's configuration).
pub fn admin_socket(name: &str) -> PathBuf {
    lab_dir(name).join("admin.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(parse_name("default").is_ok());
        assert!(parse_name("a-1").is_ok());
        assert!(parse_name("").is_err());
        assert!(parse_name("Upper").is_err());
        assert!(parse_name("a/b").is_err());
        assert!(parse_name("a".repeat(21).as_str()).is_err());
        assert!(parse_name("external").is_ok());
    }
}

//! `cargo xtask bench`: builds `conduit-bench` in release mode and runs it.
//!
//! The bench package (`crates/conduit-bench`) is a workspace member but not a
//! default member, so ordinary builds and tests never compile its heavy
//! dependencies (ipc-channel, interprocess, plotters). The options (declared in
//! [`crate::flags`], checked before the build) are passed on to the binary,
//! which declares the same options; see `cargo xtask bench --help`.

use std::path::PathBuf;

use xshell::cmd;

use crate::{flags, util};

/// The bench binary's name.
const BIN: &str = "conduit-bench";

/// Runs `cargo xtask bench [args]`.
pub fn run(flags: &flags::Bench) -> Result<(), String> {
    if flags.quick && flags.full {
        return Err("--quick and --full exclude each other".to_owned());
    }
    let args = flags.to_args();
    let sh = util::shell()?;
    let cargo = util::cargo();
    // JSON messages on stdout tell where the binary is, whatever the target
    // directory; cargo's progress and diagnostics still go to stderr.
    let messages = cmd!(
        sh,
        "{cargo} build --release -p conduit-bench --bin {BIN} --message-format=json-render-diagnostics"
    )
    .read()
    .map_err(|e| format!("building the bench failed: {e}"))?;
    let exe = executable_in(&messages).unwrap_or_else(default_binary_path);
    if !exe.is_file() {
        return Err(format!("the bench binary is not at {}", exe.display()));
    }
    cmd!(sh, "{exe} {args...}")
        .run()
        .map_err(|e| format!("the bench failed: {e}"))
}

/// The `executable` of the bench's `compiler-artifact` message in cargo's
/// JSON output (a small scan: xtask has no JSON parser).
fn executable_in(messages: &str) -> Option<PathBuf> {
    const KEY: &str = "\"executable\":\"";
    messages
        .lines()
        .filter(|l| l.contains("\"compiler-artifact\"") && l.contains(BIN))
        .find_map(|l| {
            let rest = &l[l.find(KEY)? + KEY.len()..];
            let mut path = String::new();
            let mut chars = rest.chars();
            while let Some(c) = chars.next() {
                match c {
                    '"' => return Some(PathBuf::from(path)),
                    '\\' => path.push(chars.next()?),
                    c => path.push(c),
                }
            }
            None
        })
}

/// `<target dir>/release/conduit-bench[.exe]`, the target directory being
/// `$CARGO_TARGET_DIR` (relative to the workspace root) or `target/`.
fn default_binary_path() -> PathBuf {
    let root = util::project_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map_or_else(|| root.join("target"), |t| root.join(t));
    target
        .join("release")
        .join(format!("{BIN}{}", std::env::consts::EXE_SUFFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_lives_in_release_dir() {
        let p = default_binary_path();
        assert!(p.ends_with(format!("release/{BIN}{}", std::env::consts::EXE_SUFFIX)));
    }

    #[test]
    fn finds_the_executable_in_cargo_messages() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"memchr"},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"conduit-bench"},"executable":"C:\\t\\release\\conduit-bench.exe","fresh":true}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(
            executable_in(messages),
            Some(PathBuf::from(r"C:\t\release\conduit-bench.exe"))
        );
        assert_eq!(executable_in("{}"), None);
    }
}

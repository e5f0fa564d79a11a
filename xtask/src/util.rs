//! Helpers shared by the commands: paths, the shell, teeing a command's output
//! while keeping it for parsing, test-count parsers and plain-text tables.

use std::{
    env,
    io::{self, IsTerminal, Read, Write},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    thread,
    time::Duration,
};

use xshell::{Cmd, Shell};

/// The workspace root: the parent of the `xtask/` directory.
pub fn project_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The cargo to run: `$CARGO` (set by `cargo xtask`), else `cargo` from `PATH`.
pub fn cargo() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// A shell whose working directory is the workspace root.
pub fn shell() -> Result<Shell, String> {
    let sh = Shell::new().map_err(|e| e.to_string())?;
    sh.change_dir(project_root());
    Ok(sh)
}

/// Builds binary `bin` of `package` in release mode and returns its path.
pub fn build_release_bin(sh: &Shell, package: &str, bin: &str) -> Result<PathBuf, String> {
    let cargo = cargo();
    // JSON messages on stdout tell where the binary is, whatever the target
    // directory; cargo's progress and diagnostics still go to stderr.
    let messages = xshell::cmd!(
        sh,
        "{cargo} build --release -p {package} --bin {bin} --message-format=json-render-diagnostics"
    )
    .read()
    .map_err(|e| format!("building {bin} failed: {e}"))?;
    let exe = executable_in(&messages, bin).unwrap_or_else(|| default_binary_path(bin));
    if exe.is_file() {
        Ok(exe)
    } else {
        Err(format!("the {bin} binary is not at {}", exe.display()))
    }
}

/// The `executable` of `bin`'s `compiler-artifact` message in cargo's JSON
/// output (a small scan: xtask has no JSON parser).
fn executable_in(messages: &str, bin: &str) -> Option<PathBuf> {
    const KEY: &str = "\"executable\":\"";
    messages
        .lines()
        .filter(|l| l.contains("\"compiler-artifact\"") && l.contains(bin))
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

/// `<target dir>/release/<bin>[.exe]`, the target directory being
/// `$CARGO_TARGET_DIR` (relative to the workspace root) or `target/`.
fn default_binary_path(bin: &str) -> PathBuf {
    let root = project_root();
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map_or_else(|| root.join("target"), |t| root.join(t));
    target
        .join("release")
        .join(format!("{bin}{}", env::consts::EXE_SUFFIX))
}

/// Whether `cargo nextest` is installed and works.
pub fn have_nextest(sh: &Shell) -> bool {
    let cargo = cargo();
    xshell::cmd!(sh, "{cargo} nextest --version")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_ok()
}

/// What [`run_tee`] returns: the exit status and everything the command printed
/// (stdout, then stderr).
pub struct Teed {
    /// The exit status of the command.
    pub status: ExitStatus,
    /// Standard output followed by standard error, lossily decoded.
    pub text: String,
}

/// Runs `cmd`, echoing it like xshell does, passing its stdout and stderr through
/// as they come while also keeping them for parsing. A non-zero exit is not an
/// error here: the caller looks at [`Teed::status`].
pub fn run_tee(cmd: Cmd<'_>) -> Result<Teed, String> {
    let display = cmd.to_string();
    eprintln!("$ {display}");
    let mut command: Command = cmd.into();
    // The output goes through a pipe: keep the colours when our output is a terminal.
    if io::stdout().is_terminal() && env::var_os("CARGO_TERM_COLOR").is_none() {
        command.env("CARGO_TERM_COLOR", "always");
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run `{display}`: {e}"))?;
    let out = child
        .stdout
        .take()
        .map(|s| thread::spawn(move || tee(s, io::stdout())));
    let err = child
        .stderr
        .take()
        .map(|s| thread::spawn(move || tee(s, io::stderr())));
    let status = child
        .wait()
        .map_err(|e| format!("waiting for `{display}`: {e}"))?;
    let mut text = String::new();
    for reader in [out, err].into_iter().flatten() {
        let bytes = reader
            .join()
            .map_err(|_| format!("the output reader of `{display}` panicked"))?;
        text.push_str(&String::from_utf8_lossy(&bytes));
    }
    Ok(Teed { status, text })
}

/// Copies `src` to `dst` chunk by chunk until end of file, returning all bytes.
fn tee(mut src: impl Read, mut dst: impl Write) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // The copy on the terminal is best effort; the kept copy is what counts.
                let _ = dst.write_all(&buf[..n]);
                let _ = dst.flush();
                all.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    all
}

/// Removes ANSI escape sequences (colours) from `s`.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            // CSI: parameters and intermediates, then one final byte in '@'..='~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
}

/// Test counts of one run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Tests that passed.
    pub passed: u64,
    /// Tests that failed, timed out or could not be started.
    pub failed: u64,
    /// Tests that were skipped or ignored.
    pub skipped: u64,
}

impl Counts {
    /// Adds `other` to `self`.
    pub fn add(&mut self, other: Counts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
    }
}

/// Parses nextest's closing summary, e.g.
/// `Summary [   3.1s] 4 tests run: 3 passed (2 slow), 1 failed, 1 skipped`.
/// Returns the last summary in `text`, if any.
pub fn parse_nextest_summary(text: &str) -> Option<Counts> {
    let text = strip_ansi(text);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("Summary [") && l.contains(" run: "))?;
    let (_, rest) = line.split_once(" run: ")?;
    // Drop parenthesised details such as "(2 slow, 1 flaky)": they may hold commas.
    let mut plain = String::new();
    let mut depth = 0u32;
    for c in rest.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    let mut counts = Counts::default();
    for part in plain.split(',') {
        let part = part.trim();
        let (num, what) = part.split_once(' ').unwrap_or((part, ""));
        let Ok(n) = num.parse::<u64>() else { continue };
        if what.starts_with("passed") {
            counts.passed += n;
        } else if what.starts_with("skipped") {
            counts.skipped += n;
        } else if what.contains("failed") || what.contains("timed out") {
            counts.failed += n;
        }
    }
    Some(counts)
}

/// Sums libtest's result lines, e.g.
/// `test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; …`.
/// Ignored tests count as skipped. `None` if there is no such line.
pub fn parse_libtest_results(text: &str) -> Option<Counts> {
    let text = strip_ansi(text);
    let mut total: Option<Counts> = None;
    for line in text.lines() {
        let Some(rest) = line.trim_start().strip_prefix("test result: ") else {
            continue;
        };
        let Some((_, rest)) = rest.split_once(". ") else {
            continue;
        };
        let mut counts = Counts::default();
        for part in rest.split(';') {
            let part = part.trim();
            let (num, what) = part.split_once(' ').unwrap_or((part, ""));
            let Ok(n) = num.parse::<u64>() else { continue };
            match what {
                "passed" => counts.passed += n,
                "failed" => counts.failed += n,
                "ignored" => counts.skipped += n,
                _ => {}
            }
        }
        total.get_or_insert_with(Counts::default).add(counts);
    }
    total
}

/// The names of the tests that libtest (or libtest-mimic) reported as
/// failed: its `test <name> ... FAILED` lines, in order, without repeats.
pub fn failed_tests(text: &str) -> Vec<String> {
    let text = strip_ansi(text);
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("test ") else {
            continue;
        };
        let Some((name, result)) = rest.split_once(" ... ") else {
            continue;
        };
        let name = name.trim();
        if result.trim_start().starts_with("FAILED") && !out.iter().any(|n| n == name) {
            out.push(name.to_owned());
        }
    }
    out
}

/// Seconds with one decimal, for tables.
pub fn secs(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

/// Prints a plain-text table: the first `left` columns left-aligned, the others
/// right-aligned.
pub fn print_table(header: &[&str], left: usize, rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            if i < left {
                s.push_str(&format!("{cell:<w$}"));
            } else {
                s.push_str(&format!("{cell:>w$}"));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    let total: usize = widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
    println!("{}", "-".repeat(total));
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn failed_test_names() {
        let text = "running 3 tests\n\
            test a::one ... ok\n\
            test worker_killed   ... FAILED\n\
            test b::two ... \u{1b}[31mFAILED\u{1b}[0m\n\
            test worker_killed ... FAILED\n\
            test result: FAILED. 1 passed; 2 failed; 0 ignored\n";
        assert_eq!(failed_tests(text), ["worker_killed", "b::two"]);
        assert!(failed_tests("test x ... ok\ntest result: ok. 1 passed").is_empty());
    }

    use super::*;

    #[test]
    fn nextest_summary() {
        let text = "\
        PASS [   0.005s] (1/4) ntest::t fails
────────────
     Summary [   3.014s] 5 tests run: 3 passed (2 slow, 1 flaky), 1 failed, 1 timed out, 2 skipped
        FAIL [   0.107s] (1/4) ntest::t fails";
        assert_eq!(
            parse_nextest_summary(text),
            Some(Counts {
                passed: 3,
                failed: 2,
                skipped: 2
            })
        );
        let ok = "\u{1b}[32;1m     Summary\u{1b}[0m [   3.0s] 4 tests run: 4 passed, 1 skipped";
        assert_eq!(
            parse_nextest_summary(ok),
            Some(Counts {
                passed: 4,
                failed: 0,
                skipped: 1
            })
        );
        assert_eq!(parse_nextest_summary("error: no tests to run"), None);
    }

    #[test]
    fn libtest_results() {
        let text = "\
test a ... ok
test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s
test result: FAILED. 2 passed; 3 failed; 0 ignored; 0 measured; 4 filtered out; finished in 1.00s
";
        assert_eq!(
            parse_libtest_results(text),
            Some(Counts {
                passed: 7,
                failed: 3,
                skipped: 1
            })
        );
        assert_eq!(parse_libtest_results("nothing here"), None);
    }

    #[test]
    fn binary_lives_in_release_dir() {
        let p = default_binary_path("conduit-bench");
        assert!(p.ends_with(format!("release/conduit-bench{}", env::consts::EXE_SUFFIX)));
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
            executable_in(messages, "conduit-bench"),
            Some(PathBuf::from(r"C:\t\release\conduit-bench.exe"))
        );
        assert_eq!(executable_in("{}", "conduit-bench"), None);
    }

    #[test]
    fn ansi() {
        assert_eq!(strip_ansi("\u{1b}[1;31mred\u{1b}[0m plain"), "red plain");
    }
}

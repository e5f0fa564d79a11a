//! `cargo xtask xcheck`: cross-target checks on a Linux x86_64 Debian host.
//!
//! Runs clippy for Windows and macOS targets and the Windows
//! (`x86_64-pc-windows-gnu`) tests under Wine, with Debian packages only:
//!
//! * Debian's `rustc-web` toolchain ships its std source as `rust-web-src`, so
//!   `RUSTC_BOOTSTRAP=1 cargo -Zbuild-std` can build core/alloc/std for any
//!   target. Checking needs no linker.
//! * Windows-gnu tests link with mingw-w64 and run under `wine64`. Wine 8 lacks
//!   `bcryptprimitives.dll` (std >= 1.78 imports `ProcessPrng` from it), so a
//!   small stub DLL is built with mingw into xcheck's own Wine prefix.
//!
//! The rustup toolchains are not touched: Debian's tools are used through
//! explicit `/usr/bin` paths, in a separate target directory (`target/xcheck`,
//! or `$CARGO_TARGET_DIR/xcheck`).
//! Every cargo command gets the same environment, so that cargo's fingerprints
//! stay valid and a second run only rebuilds what changed.
//!
//! Environment knobs: `XCHECK_HOME` (the Wine prefix cache, default
//! `~/.cache/xcheck`), `XCHECK_INSTALL=0` (fail instead of running apt-get).

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use xshell::{Cmd, Shell};

use crate::{
    flags,
    util::{self, Counts},
};

const DEFAULT_TARGETS: [&str; 4] = [
    "x86_64-pc-windows-msvc",
    "x86_64-pc-windows-gnu",
    "aarch64-apple-darwin",
    "x86_64-apple-darwin",
];
const WINE_TARGET: &str = "x86_64-pc-windows-gnu";

/// Clippy lints allowed on some targets because they misfire there.
/// `missing_const_for_thread_local` fires on already-`const` `thread_local!`
/// initializers on targets without native TLS, such as x86_64-pc-windows-gnu
/// (rust-lang/rust-clippy#17566).
const TARGET_ALLOWS: [(&str, &str); 1] = [(
    "x86_64-pc-windows-gnu",
    "clippy::missing_const_for_thread_local",
)];
const MINGW_GCC: &str = "x86_64-w64-mingw32-gcc";
const DEB_RUSTC: &str = "/usr/bin/rustc";
const DEB_CARGO: &str = "/usr/bin/cargo";

/// Debian packages that conflict with `rustc-web` and friends. A rustup install
/// under `~/.rustup` is not one of them; these are Debian's own packages, which
/// apt would remove: refuse instead.
const CONFLICTING: [&str; 4] = ["rustup", "rustc", "cargo", "rust-src"];

/// The stub `bcryptprimitives.dll` for Wine < 9, built with mingw.
const BCRYPTPRIMITIVES_C: &str = r#"/* Rust std >= 1.78 imports ProcessPrng from bcryptprimitives.dll; Wine < 9 has no such DLL. */
#include <windows.h>
#include <ntsecapi.h>
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!RtlGenRandom(data, chunk)) return FALSE;
        data += chunk; len -= chunk;
    }
    return TRUE;
}
"#;

/// What the command line asks for.
#[derive(Debug)]
struct Options {
    wine: bool,
    targets: Vec<String>,
    cargo_args: Vec<String>,
    test_args: Vec<OsString>,
}

impl Options {
    fn new(flags: &flags::Xcheck, test_args: &[OsString]) -> Result<Options, String> {
        let o = Options {
            wine: !flags.no_wine,
            targets: flags.targets.as_deref().map_or_else(
                || DEFAULT_TARGETS.iter().map(|t| (*t).to_owned()).collect(),
                split_targets,
            ),
            cargo_args: flags.cargo_args(),
            test_args: test_args.to_vec(),
        };
        if o.targets.is_empty() && !o.wine {
            return Err("nothing to do: no targets and --no-wine".to_owned());
        }
        Ok(o)
    }
}

fn split_targets(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// One step of the run and how it went.
struct Step {
    name: String,
    ok: bool,
    time: Duration,
}

/// Runs the cross checks; on anything but Linux it prints why it skips and succeeds.
pub fn run(flags: &flags::Xcheck, test_args: &[OsString]) -> Result<(), String> {
    let mut opts = Options::new(flags, test_args)?;
    if !cfg!(target_os = "linux") {
        println!(
            "xcheck: skipped: it needs a Linux host with Debian packages \
             (rustc-web, rust-web-src, mingw-w64, wine64); this is {}",
            env::consts::OS
        );
        return Ok(());
    }
    if opts.wine && env::consts::ARCH != "x86_64" {
        println!(
            "xcheck: note: no Wine test run on {} (wine64 and mingw-w64 need x86_64)",
            env::consts::ARCH
        );
        opts.wine = false;
    }
    let start = Instant::now();
    let sh = util::shell()?;
    ensure_packages(&sh, opts.wine)?;
    let env = XEnv::new(&sh, opts.wine)?;

    let mut steps = Vec::new();
    let clippy_args: Vec<String> = if opts.cargo_args.is_empty() {
        ["--workspace", "--all-features"].map(String::from).to_vec()
    } else {
        opts.cargo_args.clone()
    };
    for target in &opts.targets {
        log(start, &format!("cargo clippy --target {target}"));
        let t0 = Instant::now();
        let ok = env
            .cargo(&sh)
            .args(["clippy", "-Zbuild-std", "--target", target, "--all-targets"])
            .args(&clippy_args)
            .args(["--", "-D", "warnings"])
            .args(
                TARGET_ALLOWS
                    .iter()
                    .filter(|(t, _)| t == target)
                    .flat_map(|(_, lint)| ["-A", lint]),
            )
            .run()
            .is_ok();
        steps.push(Step {
            name: format!("clippy {target}"),
            ok,
            time: t0.elapsed(),
        });
    }

    let mut wine_counts = None;
    let mut wine_flaky = Vec::new();
    if opts.wine {
        let t0 = Instant::now();
        let result = wine_tests(&sh, &env, &opts, start);
        let ok = match result {
            Ok(run) => {
                wine_counts = run.counts;
                wine_flaky = run.flaky;
                run.success && run.counts.is_some_and(|c| c.failed == 0)
            }
            Err(e) => {
                eprintln!("xcheck: wine tests: {e}");
                false
            }
        };
        steps.push(Step {
            name: format!("wine test {WINE_TARGET}"),
            ok,
            time: t0.elapsed(),
        });
    }

    println!(
        "\nxcheck results (target dir {}):",
        env.target_dir.display()
    );
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                if s.ok { "ok" } else { "FAILED" }.to_owned(),
                util::secs(s.time),
            ]
        })
        .collect();
    util::print_table(&["step", "result", "secs"], 2, &rows);
    if opts.wine {
        match wine_counts {
            Some(c) => println!(
                "xcheck-wine: {} passed, {} failed, {} skipped",
                c.passed, c.failed, c.skipped
            ),
            None => println!("xcheck-wine: no test counts (the build or the run failed)"),
        }
        if !wine_flaky.is_empty() {
            println!(
                "xcheck-wine: failed once, passed when run again alone (flaky under Wine): {}",
                wine_flaky.join(", ")
            );
        }
    }
    let failed: Vec<&str> = steps
        .iter()
        .filter(|s| !s.ok)
        .map(|s| s.name.as_str())
        .collect();
    if failed.is_empty() {
        log(start, "all cross-target steps passed");
        Ok(())
    } else {
        Err(format!("failed: {}", failed.join(", ")))
    }
}

fn log(start: Instant, msg: &str) {
    eprintln!("\n== [xcheck {:4}s] {msg}", start.elapsed().as_secs());
}

fn installed(sh: &Shell, package: &str) -> bool {
    sh.cmd("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .quiet()
        .ignore_status()
        .ignore_stderr()
        .read()
        .is_ok_and(|s| s.contains("install ok installed"))
}

/// Installs the missing Debian packages with apt-get.
fn ensure_packages(sh: &Shell, wine: bool) -> Result<(), String> {
    if !Path::new("/usr/bin/dpkg-query").exists() || !Path::new("/usr/bin/apt-get").exists() {
        return Err(
            "xcheck needs a Debian (bookworm) host: dpkg-query and apt-get not found".to_owned(),
        );
    }
    let mut packages = vec!["rustc-web", "cargo-web", "rust-web-src", "rust-web-clippy"];
    if wine {
        packages.extend(["gcc-mingw-w64-x86-64-win32", "wine64"]);
    }
    let missing: Vec<&str> = packages.into_iter().filter(|p| !installed(sh, p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if env::var("XCHECK_INSTALL").is_ok_and(|v| v == "0") {
        return Err(format!(
            "missing Debian packages: {} (XCHECK_INSTALL=0)",
            missing.join(" ")
        ));
    }
    if let Some(c) = CONFLICTING.iter().find(|c| installed(sh, c)) {
        return Err(format!(
            "Debian package `{c}` is installed and conflicts with {}; remove it first \
             (a rustup install under ~/.rustup is fine)",
            missing.join(" ")
        ));
    }
    eprintln!("xcheck: installing Debian packages: {}", missing.join(" "));
    let root = sh
        .cmd("id")
        .arg("-u")
        .quiet()
        .read()
        .is_ok_and(|id| id.trim() == "0");
    let apt = |args: &[&str]| -> Cmd<'_> {
        let cmd = if root {
            sh.cmd("apt-get")
        } else {
            sh.cmd("sudo").arg("apt-get")
        };
        cmd.args(args)
    };
    apt(&["-o", "DPkg::Lock::Timeout=600", "update", "-qq"])
        .run()
        .map_err(|e| e.to_string())?;
    apt(&[
        "-o",
        "DPkg::Lock::Timeout=600",
        "-o",
        "APT::Get::Assume-Yes=true",
        "install",
        "-qq",
        "--no-install-recommends",
    ])
    .args(&missing)
    .env("DEBIAN_FRONTEND", "noninteractive")
    .run()
    .map_err(|e| format!("{e} (are the packages available? rustc-web is in bookworm-security)"))
}

/// The environment of every cargo command xcheck runs.
struct XEnv {
    vars: Vec<(&'static str, OsString)>,
    target_dir: PathBuf,
    wine: Option<Wine>,
}

struct Wine {
    wine64: PathBuf,
    wineserver: PathBuf,
    prefix: PathBuf,
}

/// Variables removed from every command: rustup's toolchain pin would mix
/// toolchains; a display would make Wine open windows.
const REMOVED_VARS: [&str; 3] = ["RUSTUP_TOOLCHAIN", "DISPLAY", "WAYLAND_DISPLAY"];

impl XEnv {
    fn new(sh: &Shell, wine: bool) -> Result<XEnv, String> {
        if !Path::new(DEB_RUSTC).exists() {
            return Err(format!("{DEB_RUSTC} not found (install rustc-web)"));
        }
        let version_line = sh
            .cmd(DEB_RUSTC)
            .arg("-V")
            .quiet()
            .read()
            .map_err(|e| e.to_string())?;
        let version = version_line
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| format!("cannot read the version from `{version_line}`"))?
            .to_owned();
        let sysroot = sh
            .cmd(DEB_RUSTC)
            .args(["--print", "sysroot"])
            .quiet()
            .read()
            .map_err(|e| e.to_string())?;
        let src = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library");
        if !src.join("std/Cargo.toml").is_file() {
            return Err(format!(
                "std source not found at {} (install rust-web-src)",
                src.display()
            ));
        }
        let real_src = fs::canonicalize(&src).map_err(|e| format!("{}: {e}", src.display()))?;
        if !real_src
            .to_string_lossy()
            .contains(&format!("rustc-{version}"))
        {
            return Err(format!(
                "rustc {version} does not match the std source {}",
                real_src.display()
            ));
        }

        // Debian's cargo and cargo-clippy must come before rustup's proxies. cargo puts
        // $CARGO_HOME/bin first when PATH lacks it, so it goes last here explicitly.
        let mut path: Vec<PathBuf> = vec![PathBuf::from("/usr/bin")];
        path.extend(env::var_os("PATH").map_or_else(Vec::new, |p| env::split_paths(&p).collect()));
        if let Some(cargo_bin) = cargo_home().map(|h| h.join("bin")) {
            if !path.contains(&cargo_bin) {
                path.push(cargo_bin);
            }
        }
        let path = env::join_paths(path).map_err(|e| e.to_string())?;

        // A directory of its own: other toolchain, other flags, std built from source.
        let target_dir = env::var_os("CARGO_TARGET_DIR")
            .filter(|d| !d.is_empty())
            .map_or_else(
                || util::project_root().join("target"),
                |d| util::project_root().join(d),
            )
            .join("xcheck");
        let mut vars: Vec<(&'static str, OsString)> = vec![
            ("PATH", path),
            ("CARGO", DEB_CARGO.into()),
            ("RUSTC", DEB_RUSTC.into()),
            ("RUSTDOC", "/usr/bin/rustdoc".into()),
            ("RUSTC_BOOTSTRAP", "1".into()),
            // Debuginfo off: faster, smaller build-std builds.
            ("CARGO_PROFILE_DEV_DEBUG", "0".into()),
            ("CARGO_PROFILE_TEST_DEBUG", "0".into()),
            // Set for clippy too: the linker is part of cargo's fingerprint, so a
            // different value between clippy and the Wine build would rebuild std.
            (
                "CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER",
                MINGW_GCC.into(),
            ),
            ("CARGO_TARGET_DIR", target_dir.clone().into_os_string()),
        ];

        let wine = if wine {
            let prefix = xcheck_home()?.join("wine64");
            let wine64 = [
                PathBuf::from("/usr/lib/wine/wine64"),
                PathBuf::from("/usr/bin/wine64"),
            ]
            .into_iter()
            .find(|p| p.is_file())
            .ok_or("wine64 not found (install wine64)")?;
            let wineserver = wine64.with_file_name("wineserver");
            vars.extend([
                ("WINEPREFIX", prefix.clone().into_os_string()),
                ("WINEDEBUG", "-all".into()),
                ("WINEARCH", "win64".into()),
                (
                    "CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER",
                    wine64.clone().into_os_string(),
                ),
            ]);
            Some(Wine {
                wine64,
                wineserver,
                prefix,
            })
        } else {
            None
        };

        let env = XEnv {
            vars,
            target_dir,
            wine,
        };
        eprintln!(
            "xcheck: rustc {version} ({DEB_RUSTC}), std source {}, target dir {}",
            src.display(),
            env.target_dir.display()
        );
        let minor = version.split('.').nth(1).unwrap_or_default();
        match env.cargo(sh).args(["clippy", "-V"]).quiet().read() {
            Ok(v) if v.starts_with(&format!("clippy 0.1.{minor}")) => {}
            Ok(v) => {
                eprintln!("xcheck: warning: cargo clippy is not Debian's {version} clippy: {v}")
            }
            Err(e) => {
                return Err(format!(
                    "cargo clippy does not run (install rust-web-clippy): {e}"
                ))
            }
        }
        Ok(env)
    }

    /// A command with xcheck's environment.
    fn cmd<'a>(&self, sh: &'a Shell, program: impl AsRef<Path>) -> Cmd<'a> {
        let mut cmd = sh.cmd(program.as_ref());
        for var in REMOVED_VARS {
            cmd = cmd.env_remove(var);
        }
        for (k, v) in &self.vars {
            cmd = cmd.env(k, v);
        }
        cmd
    }

    /// Debian's cargo with xcheck's environment.
    fn cargo<'a>(&self, sh: &'a Shell) -> Cmd<'a> {
        self.cmd(sh, DEB_CARGO)
    }
}

fn home() -> Option<PathBuf> {
    env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

fn cargo_home() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".cargo")))
}

fn xcheck_home() -> Result<PathBuf, String> {
    env::var_os("XCHECK_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".cache").join("xcheck")))
        .ok_or_else(|| "neither XCHECK_HOME nor HOME is set".to_owned())
}

/// Prepares the Wine prefix and runs the Windows tests; returns libtest's counts.
fn wine_tests(sh: &Shell, env: &XEnv, opts: &Options, start: Instant) -> Result<WineRun, String> {
    let wine = env.wine.as_ref().ok_or("Wine is not set up")?;
    if !wine.prefix.join("system.reg").is_file() {
        log(
            start,
            &format!("creating Wine prefix {}", wine.prefix.display()),
        );
        if let Some(parent) = wine.prefix.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        let _ = env
            .cmd(sh, &wine.wine64)
            .args(["wineboot", "--init"])
            .ignore_status()
            .ignore_stdout()
            .ignore_stderr()
            .run();
        let _ = env
            .cmd(sh, &wine.wineserver)
            .arg("-w")
            .ignore_status()
            .run();
        if !wine.prefix.join("system.reg").is_file() {
            return Err(format!(
                "wineboot failed to create {}",
                wine.prefix.display()
            ));
        }
    }
    let dll = wine
        .prefix
        .join("drive_c/windows/system32/bcryptprimitives.dll");
    if !dll.exists() {
        log(
            start,
            "building the bcryptprimitives.dll stub (ProcessPrng) for Wine < 9",
        );
        let tmp = sh.create_temp_dir().map_err(|e| e.to_string())?;
        let src = tmp.path().join("bcryptprimitives.c");
        fs::write(&src, BCRYPTPRIMITIVES_C).map_err(|e| format!("{}: {e}", src.display()))?;
        env.cmd(sh, MINGW_GCC)
            .args(["-O2", "-s", "-shared", "-o"])
            .arg(&dll)
            .arg(&src)
            .arg("-ladvapi32")
            .run()
            .map_err(|e| e.to_string())?;
    }

    log(
        start,
        &format!(
            "cargo test --target {WINE_TARGET} (under {})",
            wine.wine64.display()
        ),
    );
    let package_args: Vec<String> = if opts.cargo_args.is_empty() {
        // Everything with tests that runs on Windows: the conformance suite
        // and the crates' own tests; not the Linux-measured bench, not xtask.
        [
            "--workspace",
            "--all-features",
            "--exclude",
            "conduit-bench",
            "--exclude",
            "xtask",
        ]
        .map(String::from)
        .to_vec()
    } else {
        opts.cargo_args.clone()
    };
    // One `cargo test` of the Windows tests under Wine (`test_args` after
    // `--`), then this prefix's wineserver stopped whatever happened.
    let run_tests = |test_args: &[OsString]| {
        let mut cmd = env
            .cargo(sh)
            .args([
                "test",
                "-Zbuild-std",
                "--target",
                WINE_TARGET,
                "--no-fail-fast",
            ])
            .args(&package_args);
        if !test_args.is_empty() {
            cmd = cmd.arg("--").args(test_args);
        }
        let teed = util::run_tee(cmd);
        let _ = env
            .cmd(sh, &wine.wineserver)
            .arg("-k")
            .quiet()
            .ignore_status()
            .ignore_stderr()
            .run();
        teed
    };
    let teed = run_tests(&opts.test_args);
    let teed = teed?;
    let mut run = WineRun {
        success: teed.status.success(),
        counts: util::parse_libtest_results(&teed.text),
        flaky: Vec::new(),
    };
    // A test or two that failed once get one more run each, alone: under
    // Wine, starting a process now and then fails with nothing of ours
    // to blame ("cannot start a child process": twice on 2026-12-01, in
    // two different tests, each passing when run again). A test that fails
    // again fails the step; one that passes is reported by name as flaky
    // under Wine.
    let failed = util::failed_tests(&teed.text);
    let counted = run.counts.map_or(0, |c| c.failed);
    if !run.success && !failed.is_empty() && failed.len() as u64 == counted && failed.len() <= 3 {
        for name in &failed {
            log(start, &format!("rerunning `{name}` once under Wine"));
            let again = run_tests(&["--exact".into(), name.into()]);
            let again = again?;
            let counts = util::parse_libtest_results(&again.text);
            if again.status.success() && counts.is_some_and(|c| c.failed == 0 && c.passed > 0) {
                run.flaky.push(name.clone());
            }
        }
        if run.flaky.len() == failed.len() {
            if let Some(c) = run.counts.as_mut() {
                c.failed = 0;
                c.passed += failed.len() as u64;
            }
            run.success = true;
        }
    }
    Ok(run)
}

/// The outcome of the Wine test run.
struct WineRun {
    /// Whether `cargo test` exited successfully.
    success: bool,
    /// libtest's counts, summed over the test binaries; `None` if none ran.
    counts: Option<Counts>,
    /// Tests that failed once and passed when run again alone.
    flaky: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(targets: Option<&str>, no_wine: bool) -> flags::Xcheck {
        flags::Xcheck {
            no_wine,
            targets: targets.map(str::to_owned),
            package: vec!["x".to_owned()],
            workspace: false,
            exclude: Vec::new(),
            features: Vec::new(),
            all_features: false,
            no_default_features: false,
        }
    }

    #[test]
    fn options() {
        let o = Options::new(&flags(Some("a, b"), true), &["--nocapture".into()]).unwrap();
        assert!(!o.wine);
        assert_eq!(o.targets, ["a", "b"]);
        assert_eq!(o.cargo_args, ["--package", "x"]);
        assert_eq!(o.test_args, ["--nocapture"]);
        assert_eq!(
            Options::new(&flags(None, false), &[]).unwrap().targets,
            DEFAULT_TARGETS
        );
        assert!(Options::new(&flags(Some(""), true), &[]).is_err());
    }
}

//! Names on disk: the private socket directory and its parents, stale
//! files of killed servers, and a name that is in use. Windows has no
//! socket directory (the pipe's DACL does that job), so most of these are
//! Unix-only.

use std::thread;

use conduit::named::{connect, connect_timeout, Listener};
use conduit::ErrorKind;

use super::{connect_to_server, io_source, spawn_with_name, unique};
use crate::msg::Msg;
use crate::suite::{expect_kind, HANG};
use crate::{ensure, fail, Failed};
// The Unix-only tests and their helpers.
#[cfg(unix)]
use {
    super::NAME_ENV,
    crate::spawn,
    crate::suite::Scenario,
    std::fs::create_dir,
    std::path::{Path, PathBuf},
    std::process::Command,
};

/// Runs [`stale_socket_body`] in a child with its own socket directory:
/// binds in the shared directory sweep killed servers' files, so a parallel
/// test could remove the stale socket this test needs.
#[cfg(unix)]
pub(super) fn stale_socket() -> Result<(), Failed> {
    run_in_own_dir("stale-dir", "named_stale", "the stale-socket child")
}

#[cfg(not(unix))]
pub(super) fn stale_socket() -> Result<(), Failed> {
    stale_socket_body()
}

pub(super) fn stale_socket_body() -> Result<(), Failed> {
    let name = unique("stale");
    let mut server = spawn_with_name("named_server", &name)?;
    let conn = connect_to_server(&name)?;
    server.kill()?;
    expect_kind(
        "recv from the killed server",
        conn.recv_timeout(HANG),
        ErrorKind::Disconnected,
    )?;
    #[cfg(unix)]
    {
        let path = conduit_named::unix::socket_path(&name).map_err(fail("socket path"))?;
        ensure(path.exists(), || {
            format!(
                "{} vanished with the killed server: nothing stale to test",
                path.display()
            )
        })?;
    }
    let listener = Listener::<Msg, Msg>::bind(&name).map_err(fail("bind over the stale socket"))?;
    let client = thread::spawn({
        let name = name.clone();
        move || connect_timeout::<Msg, Msg>(&name, HANG).map(|c| c.recv())
    });
    let conn = listener.accept_timeout(HANG).map_err(fail("accept"))?;
    conn.send(&Msg::Text("fresh".into()))
        .map_err(fail("send"))?;
    let got = client
        .join()
        .map_err(|_| Failed::from("client panicked"))?
        .map_err(fail("connect"))?
        .map_err(fail("recv"))?;
    ensure(got == Msg::Text("fresh".into()), || format!("{got:?}"))
}

pub(super) fn address_in_use() -> Result<(), Failed> {
    let name = unique("inuse");
    let listener = Listener::<Msg, Msg>::bind(&name).map_err(fail("bind"))?;
    spawn_with_name("named_expect_in_use", &name)?.wait_success()?;
    // The same process cannot bind it twice either.
    let e = expect_kind(
        "second bind",
        Listener::<Msg, Msg>::bind(&name).map(|_| ()),
        ErrorKind::Io,
    )?;
    ensure(io_source(&e) == Some(std::io::ErrorKind::AddrInUse), || {
        format!("{e}")
    })?;
    // The listener still works after the failed attempts.
    let client = thread::spawn({
        let name = name.clone();
        move || connect::<Msg, Msg>(&name).and_then(|c| c.send(&Msg::Unit))
    });
    let conn = listener.accept_timeout(HANG).map_err(fail("accept"))?;
    client
        .join()
        .map_err(|_| Failed::from("client panicked"))?
        .map_err(fail("client"))?;
    ensure(
        conn.recv_timeout(HANG).map_err(fail("recv"))? == Msg::Unit,
        || "not Unit".into(),
    )?;
    #[cfg(unix)]
    let path = conduit_named::unix::socket_path(&name).map_err(fail("socket path"))?;
    drop(listener);
    #[cfg(unix)]
    ensure(!path.exists(), || {
        format!("{} outlived its listener", path.display())
    })?;
    expect_kind(
        "connect after drop",
        connect::<Msg, Msg>(&name).map(|_| ()),
        ErrorKind::Io,
    )?;
    Listener::<Msg, Msg>::bind(&name).map_err(fail("bind after drop"))?;
    Ok(())
}

#[cfg(unix)]
pub(super) fn directory_must_be_private() -> Result<(), Failed> {
    use std::os::unix::fs::MetadataExt;
    let base = TempDir::new("dir")?;
    let mkdir = |name: &str, mode: u32| mkdir(&base.0.join(name), mode);
    let name = unique("perm");
    let refused = |dir: &Path, expect: &str| dir_checks(&name, dir, Scenario::Refused, expect);
    // Group and others can enter it.
    refused(&mkdir("loose", 0o755)?, "0755|chmod 700")?;
    // A symbolic link, even to a private directory.
    let link = base.0.join("link");
    std::os::unix::fs::symlink(mkdir("private", 0o700)?, &link).map_err(fail("symlink"))?;
    refused(&link, "symbolic link")?;
    // Its parent lets anyone replace it.
    let open = mkdir("open", 0o777)?;
    create_dir(open.join("inner")).map_err(fail("mkdir"))?;
    refused(&open.join("inner"), "writable by every user")?;
    // Another user's directory (only root can make one).
    if std::fs::metadata(&base.0).map_err(fail("stat"))?.uid() == 0 {
        let foreign = mkdir("foreign", 0o700)?;
        chown_nobody(&foreign)?;
        refused(&foreign, "owned by uid 65534")?;
    }
    chmod(&base.0, 0o700)?;
    dir_checks(&name, &base.0.join("fresh"), Scenario::Fresh, "")
}

/// Windows has no socket directory: the pipe's DACL does that job.
#[cfg(not(unix))]
pub(super) fn directory_must_be_private() -> Result<(), Failed> {
    Ok(())
}

/// A socket directory whose parent another user can write to (here: owns,
/// group-writable) must be refused, since that user could rename it away
/// and put a directory of theirs in its place; parents that only this user
/// and root can change stay accepted.
#[cfg(unix)]
pub(super) fn parent_writable_by_others() -> Result<(), Failed> {
    use std::os::unix::fs::MetadataExt;
    let base = TempDir::new("parent")?;
    chmod(&base.0, 0o700)?;
    let me = std::fs::metadata(&base.0).map_err(fail("stat"))?.uid();
    let mkdir = |name: &str, mode: u32| mkdir(&base.0.join(name), mode);
    let name = unique("parent");
    let run =
        |dir: &Path, scenario: Scenario, expect: &str| dir_checks(&name, dir, scenario, expect);
    let not_created = |dir: &Path| {
        ensure(!dir.exists(), || {
            "the directory was created in a refused parent".into()
        })
    };
    // Group-writable (no sticky bit), owned by this user: group members
    // could replace the directory.
    let group = mkdir("group", 0o770)?;
    run(&group.join("run"), Scenario::Refused, "group|chmod")?;
    not_created(&group.join("run"))?;
    // Accepted: a parent only this user can write to, and a sticky
    // world-writable one (like /tmp), where others cannot rename our entry.
    run(&mkdir("mine", 0o755)?.join("run"), Scenario::Fresh, "")?;
    run(&mkdir("sticky", 0o1777)?.join("run"), Scenario::Fresh, "")?;
    if me == 0 {
        // Group-writable and owned by another user (only root can make one).
        let other = mkdir("other", 0o775)?;
        chown_nobody(&other)?;
        run(&other.join("run"), Scenario::Refused, "owned by uid 65534")?;
        not_created(&other.join("run"))?;
        // Owned by another user, even closed to group and others: the owner
        // can still rename our directory.
        let owned = mkdir("owned", 0o755)?;
        chown_nobody(&owned)?;
        run(&owned.join("run"), Scenario::Refused, "owned by uid 65534")?;
        // The same further up: a grandparent another user owns.
        let upper = mkdir("upper", 0o775)?;
        let mid = upper.join("mid");
        create_dir(&mid).map_err(fail("mkdir"))?;
        chown_nobody(&upper)?;
        run(&mid.join("run"), Scenario::Refused, "owned by uid 65534")?;
    }
    Ok(())
}

#[cfg(not(unix))]
pub(super) fn parent_writable_by_others() -> Result<(), Failed> {
    Ok(())
}

/// Killed servers leave `.sock`/`.lock` pairs; binding any name sweeps them.
#[cfg(unix)]
pub(super) fn stale_files_swept() -> Result<(), Failed> {
    run_in_own_dir("sweep", "named_sweep", "the sweep child")
}

#[cfg(not(unix))]
pub(super) fn stale_files_swept() -> Result<(), Failed> {
    Ok(())
}

// ---------------------------------------------------------------- helpers

/// A directory under the system's temporary directory, with a unique name;
/// removed with its contents on drop.
#[cfg(unix)]
struct TempDir(PathBuf);

#[cfg(unix)]
impl TempDir {
    fn new(tag: &str) -> Result<TempDir, Failed> {
        let dir = std::env::temp_dir().join(unique(tag));
        create_dir(&dir).map_err(fail("mkdir"))?;
        Ok(TempDir(dir))
    }
}

#[cfg(unix)]
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(unix)]
fn chmod(dir: &Path, mode: u32) -> Result<(), Failed> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(fail("chmod"))
}

/// Creates `dir` with `mode`.
#[cfg(unix)]
fn mkdir(dir: &Path, mode: u32) -> Result<PathBuf, Failed> {
    create_dir(dir).map_err(fail("mkdir"))?;
    chmod(dir, mode)?;
    Ok(dir.to_path_buf())
}

/// Gives `dir` to user and group 65534 (nobody); only root can.
#[cfg(unix)]
fn chown_nobody(dir: &Path) -> Result<(), Failed> {
    std::os::unix::fs::chown(dir, Some(65534), Some(65534)).map_err(fail("chown"))
}

/// Runs the `named_dir_checks` child for `name` with `dir` as its socket
/// directory: `Refused` expects bind and connect to be refused with an
/// error that says every `|`-separated word of `expect`; `Fresh` expects a
/// private directory to be created.
#[cfg(unix)]
fn dir_checks(name: &str, dir: &Path, scenario: Scenario, expect: &str) -> Result<(), Failed> {
    spawn("named_dir_checks", |cmd: &mut Command| {
        cmd.env(NAME_ENV, name);
        scenario.set(cmd);
        cmd.env("CONDUIT_EXPECT", expect)
            .env("CONDUIT_NAMED_DIR", dir);
        Ok(())
    })?
    .wait_success()
}

/// Runs child function `child` with a socket directory of its own (`run`
/// in a private temporary directory), waiting for it under a watchdog.
#[cfg(unix)]
fn run_in_own_dir(tag: &str, child: &str, what: &str) -> Result<(), Failed> {
    let base = TempDir::new(tag)?;
    chmod(&base.0, 0o700)?;
    let mut child = spawn(child, |cmd: &mut Command| {
        cmd.env("CONDUIT_NAMED_DIR", base.0.join("run"));
        Ok(())
    })?;
    crate::watchdog(what, HANG * 2, || child.wait_success())
}

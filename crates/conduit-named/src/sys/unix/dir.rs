//! The private socket directory: where it is, creating it, and checking it
//! (owner, mode, not a symbolic link, ancestors only this user can change)
//! at every bind and connect.

use std::env;
use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::SocketAddr;
use std::path::{Path, PathBuf};

use conduit_core::{Error, ErrorKind, Result};

use super::{euid, socket_file, DIR_ENV};

pub(super) fn refuse(dir: &Path, why: String) -> Error {
    Error::with_source(
        ErrorKind::Io,
        format!(
            "refusing to use the socket directory {}: {why}",
            dir.display()
        ),
        io::Error::from(io::ErrorKind::PermissionDenied),
    )
}

/// The private socket directory: `$CONDUIT_NAMED_DIR`, else
/// `$XDG_RUNTIME_DIR/conduit`, else `<temp dir>/conduit-<uid>`; created with
/// mode `0700` if missing, and checked.
pub fn socket_dir() -> Result<PathBuf> {
    let uid = euid();
    let (dir, origin) = match env::var_os(DIR_ENV).filter(|v| !v.is_empty()) {
        Some(d) => (PathBuf::from(d), DIR_ENV),
        None => match env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
        {
            Some(x) => (x.join("conduit"), "XDG_RUNTIME_DIR"),
            None => (
                env::temp_dir().join(format!("conduit-{uid}")),
                "the temp dir",
            ),
        },
    };
    if !dir.is_absolute() {
        return Err(Error::invalid_input(format!(
            "{DIR_ENV} must be an absolute path, not {:?}",
            dir
        )));
    }
    ensure_private(&dir, origin, uid)?;
    Ok(dir)
}

/// Creates `dir` (mode `0700`) if it does not exist and checks that only
/// user `uid` can reach what is inside.
pub(super) fn ensure_private(dir: &Path, origin: &str, uid: u32) -> Result<()> {
    check_ancestors(dir, uid)?;
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            // The umask can only have removed bits; make it exactly 0700.
            let _ = fs::set_permissions(dir, Permissions::from_mode(0o700));
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(Error::from_io(
                &format!(
                    "cannot create the socket directory {} (chosen from {origin}); create it with mode 0700 or set {DIR_ENV} to a directory of your own",
                    dir.display()
                ),
                e,
            ))
        }
    }
    let md = fs::symlink_metadata(dir).map_err(|e| {
        Error::from_io(
            &format!("cannot inspect the socket directory {}", dir.display()),
            e,
        )
    })?;
    if md.file_type().is_symlink() {
        return Err(refuse(
            dir,
            format!("it is a symbolic link, not a directory owned by this user; remove it or set {DIR_ENV} to another directory"),
        ));
    }
    if !md.is_dir() {
        return Err(refuse(
            dir,
            format!("it is not a directory; remove it or set {DIR_ENV} to another directory"),
        ));
    }
    if md.uid() != uid {
        return Err(refuse(
            dir,
            format!(
                "it is owned by uid {}, not by this user (uid {uid}), who could intercept connections; remove it or set {DIR_ENV} to a directory of your own",
                md.uid()
            ),
        ));
    }
    let mode = md.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(refuse(
            dir,
            format!(
                "its mode is {mode:04o}, which lets other users reach the sockets in it; it must be 0700 (owner only): run `chmod 700 {}`",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Refuses `dir` when another user could rename it (or a directory above
/// it) away and put one of theirs in its place: every ancestor must be owned
/// by this user or root, and writable by nobody else unless its sticky bit
/// is set (as on `/tmp`, where others cannot rename entries they do not
/// own). Ancestors that cannot be inspected are skipped: `dir` is then
/// unreachable anyway, which the checks of `dir` itself report.
pub(super) fn check_ancestors(dir: &Path, uid: u32) -> Result<()> {
    for parent in dir.ancestors().skip(1) {
        let Ok(pm) = fs::metadata(parent) else {
            continue;
        };
        let owner = pm.uid();
        let mode = pm.mode() & 0o7777;
        if owner != uid && owner != 0 {
            return Err(refuse(
                dir,
                format!(
                    "{} above it is owned by uid {owner}, who could replace it (only this user, uid {uid}, or root may own the directories above the socket directory); set {DIR_ENV} to a directory in a safe place",
                    parent.display()
                ),
            ));
        }
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            let who = if mode & 0o002 != 0 {
                "every user"
            } else {
                "its group"
            };
            return Err(refuse(
                dir,
                format!(
                    "{} above it is writable by {who} (mode {mode:04o}, no sticky bit), so another user could replace it; run `chmod go-w {}` or set {DIR_ENV} to a directory in a safe place",
                    parent.display(),
                    parent.display()
                ),
            ));
        }
    }
    Ok(())
}

pub(super) fn check_len(path: &Path) -> Result<()> {
    if SocketAddr::from_pathname(path).is_err() {
        return Err(Error::invalid_input(format!(
            "the socket path {} is too long for a Unix domain socket; use a shorter name or set {DIR_ENV} to a shorter directory",
            path.display()
        )));
    }
    Ok(())
}

/// Where `name` lives: its socket path.
pub fn endpoint(name: &str) -> Result<String> {
    Ok(socket_dir()?
        .join(socket_file(name))
        .to_string_lossy()
        .into_owned())
}

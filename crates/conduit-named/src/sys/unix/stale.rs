//! Live or stale: the `flock`ed lock file that says a live server holds a
//! name, the removal of a stale socket file, and the sweep of stale files
//! that killed servers left behind.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use conduit_core::{Error, ErrorKind, Result};
use rustix::fs::FlockOperation;
use rustix::io::Errno;

use super::{lock_file, socket_file};

pub(super) fn in_use(name: &str, pid: Option<u32>) -> Error {
    let by = pid.map_or(String::new(), |p| format!(" (pid {p})"));
    Error::with_source(
        ErrorKind::Io,
        format!(
            "conduit name {name:?} is already in use by a running server{by}: stop that server or choose another name"
        ),
        io::Error::from(io::ErrorKind::AddrInUse),
    )
}

pub(super) fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// Takes the lock that says "a live server holds this name". The kernel
/// drops it when the holder dies, which is what makes a left-over socket
/// file recognisably stale.
pub(super) fn lock_name(lock_path: &Path, name: &str) -> Result<File> {
    let nofollow = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
    let mut contended = 0u32;
    for _ in 0..16 {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nofollow)
            .open(lock_path)
            .map_err(|e| {
                Error::from_io(
                    &format!("cannot open the lock file {}", lock_path.display()),
                    e,
                )
            })?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => {
                // The holder may be a live server, or only passing through:
                // a server that is stopping, or another bind sweeping a
                // stale name (both unlink the file, then unlock it, within
                // microseconds). Look again a few times before calling the
                // name taken.
                let replaced = match (file.metadata(), fs::symlink_metadata(lock_path)) {
                    (Ok(ours), Ok(there)) => !same_file(&ours, &there),
                    _ => true,
                };
                if replaced {
                    continue;
                }
                if contended < LOCK_RETRIES {
                    std::thread::sleep(Duration::from_millis(1 << contended));
                    contended += 1;
                    continue;
                }
                return Err(in_use(name, read_pid(&file)));
            }
            Err(Errno::INTR) => continue,
            Err(e) => {
                return Err(Error::from_io(
                    &format!("cannot lock {}", lock_path.display()),
                    e.into(),
                ))
            }
        }
        // A previous holder unlinks the file before it unlocks it: if we
        // locked a file that is no longer at the path, try again.
        if let (Ok(ours), Ok(there)) = (file.metadata(), fs::symlink_metadata(lock_path)) {
            if same_file(&ours, &there) {
                return Ok(file);
            }
        }
    }
    Err(Error::with_source(
        ErrorKind::Io,
        format!(
            "cannot take the lock file {}: it keeps being replaced",
            lock_path.display()
        ),
        io::Error::from(io::ErrorKind::AddrInUse),
    ))
}

/// How many times `lock_name` looks again at a held lock (after 1, 2, 4
/// and 8 ms) before it reports the name in use.
const LOCK_RETRIES: u32 = 4;

/// Removes the `.sock`/`.lock` pairs that servers killed without cleaning
/// up left in `dir`, except those of `except` (the name being bound, whose
/// own stale socket `remove_stale` handles). A pair is stale when nobody
/// holds the lock: the sweep takes the lock itself, so that no server can
/// bind the name meanwhile, removes the socket after a connection attempt
/// is refused (as for the name being bound), then unlinks the lock file
/// before it unlocks it, as a stopping server does. Best effort: whatever
/// cannot be inspected or removed is left alone.
pub(super) fn sweep_stale(dir: &Path, except: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str().and_then(|f| f.strip_suffix(".lock")) else {
            continue;
        };
        if name != except && crate::check_name(name).is_ok() {
            sweep_one(dir, name);
        }
    }
}

pub(super) fn sweep_one(dir: &Path, name: &str) {
    let lock_path = dir.join(lock_file(name));
    // Non-blocking, so that a FIFO planted under that name cannot stall us.
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let Ok(file) = OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(&lock_path)
    else {
        return;
    };
    let Ok(ours) = file.metadata() else {
        return;
    };
    if !ours.is_file() {
        return;
    }
    // Held: a live server (or a bind in progress) owns the name.
    if rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
        return;
    }
    // Someone else swept or re-created it since we opened it.
    match fs::symlink_metadata(&lock_path) {
        Ok(there) if same_file(&ours, &there) => {}
        _ => return,
    }
    // We hold the name now: nobody can bind it until `file` is closed.
    if remove_stale(&dir.join(socket_file(name)), name).is_ok() {
        let _ = fs::remove_file(&lock_path);
    }
}

pub(super) fn read_pid(mut file: &File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Removes a socket file left behind by a server that died, after checking
/// that nobody listens on it.
pub(super) fn remove_stale(path: &Path, name: &str) -> Result<()> {
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::from_io(
                &format!("cannot inspect {}", path.display()),
                e,
            ))
        }
    };
    if !md.file_type().is_socket() {
        return Err(Error::with_source(
            ErrorKind::Io,
            format!(
                "{} exists and is not a socket: remove it or choose another name",
                path.display()
            ),
            io::Error::from(io::ErrorKind::AlreadyExists),
        ));
    }
    match UnixStream::connect(path) {
        // Someone listens there without holding the lock (a server whose
        // lock file was deleted by hand, or another program).
        Ok(_) => Err(in_use(name, None)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
            ) =>
        {
            match fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::from_io(
                    &format!("cannot remove the stale socket {}", path.display()),
                    e,
                )),
            }
        }
        Err(e) => Err(Error::from_io(
            &format!("cannot check whether {} is stale", path.display()),
            e,
        )),
    }
}

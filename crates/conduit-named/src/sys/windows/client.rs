//! The client: `connect` opens the rendezvous pipe, checks its owner, and
//! opens the two data pipes the server announces.

use std::io;
use std::os::windows::io::OwnedHandle;
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation::{
    ERROR_ACCESS_DENIED, ERROR_FILE_NOT_FOUND, ERROR_PIPE_BUSY, GENERIC_READ, GENERIC_WRITE,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_FLAGS_AND_ATTRIBUTES, FILE_FLAG_OVERLAPPED, OPEN_EXISTING,
    SECURITY_IDENTIFICATION, SECURITY_SQOS_PRESENT,
};
use windows_sys::Win32::System::Pipes::{WaitNamedPipeW, NMPWAIT_WAIT_FOREVER};

use conduit_core::{Error, ErrorKind, Result};

use super::overlapped::{read_exact, write_all};
use super::security::{owned_by, user_sid};
use super::{is, millis_until, owned, pipe_name, wide, ACK, HELLO_LEN, HELLO_MAGIC, HELLO_VERSION};

/// Connects to the server of `name`; see `crate::connect` for the waiting rules.
pub fn connect(name: &str, deadline: Option<Instant>) -> Result<(OwnedHandle, OwnedHandle)> {
    let sid = user_sid()?;
    let pipe = pipe_name(&sid, name);
    let timed_out = || {
        Error::new(
            ErrorKind::Timeout,
            format!("no server accepted a connection on conduit name {name:?} ({pipe}) before the deadline"),
        )
    };
    let mut pause = Duration::from_millis(1);
    let rendezvous = loop {
        let e = match open_pipe(&pipe, GENERIC_READ | GENERIC_WRITE, FILE_FLAG_OVERLAPPED) {
            Ok(h) => break h,
            Err(e) => e,
        };
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(timed_out());
        }
        if is(&e, ERROR_PIPE_BUSY) {
            // Every instance is taken: wait for the server to offer the
            // next one, then race the other clients for it.
            let ms = deadline.map_or(NMPWAIT_WAIT_FOREVER, |d| millis_until(d).max(1));
            let w = wide(&pipe);
            // SAFETY: `w` is NUL-terminated. A failure (timeout, pipe gone)
            // shows up at the next attempt.
            unsafe { WaitNamedPipeW(w.as_ptr(), ms) };
        } else if is(&e, ERROR_FILE_NOT_FOUND) {
            let Some(d) = deadline else {
                return Err(Error::with_source(
                    ErrorKind::Io,
                    format!("no server is listening on conduit name {name:?} ({pipe})"),
                    e,
                ));
            };
            std::thread::sleep(pause.min(d.saturating_duration_since(Instant::now())));
            pause = (pause * 2).min(Duration::from_millis(20));
        } else if is(&e, ERROR_ACCESS_DENIED) {
            return Err(Error::with_source(
                ErrorKind::Io,
                format!(
                    "the pipe {pipe} exists but does not let this user in: it was not created by a server of this user (is another user squatting the name?)"
                ),
                io::Error::from(io::ErrorKind::PermissionDenied),
            ));
        } else {
            return Err(Error::from_io(&format!("cannot connect to {pipe}"), e));
        }
    };
    match owned_by(&rendezvous, &sid) {
        Ok(true) => {}
        Ok(false) => {
            return Err(Error::with_source(
                ErrorKind::Io,
                format!(
                    "the pipe {pipe} is not owned by this user: another user created it to intercept connections; refusing to talk to it"
                ),
                io::Error::from(io::ErrorKind::PermissionDenied),
            ))
        }
        Err(e) => {
            return Err(Error::from_io(
                &format!("cannot check who owns the pipe {pipe}"),
                e,
            ))
        }
    }
    let set_up = crate::handshake_deadline(deadline);
    let fail = |e: io::Error| {
        match e.kind() {
        io::ErrorKind::TimedOut => Error::new(
            ErrorKind::Timeout,
            format!("the server of {name:?} did not set the connection up in time"),
        ),
        io::ErrorKind::UnexpectedEof => Error::disconnected(format!(
            "the server of {name:?} closed the connection during set-up"
        )),
        io::ErrorKind::InvalidData => Error::protocol(format!(
            "the server of {name:?} sent a malformed set-up message: it is not a conduit server of a compatible version"
        )),
        _ => Error::from_io(&format!("setting up the connection to {pipe} failed"), e),
    }
    };
    let mut hello = [0u8; HELLO_LEN];
    read_exact(&rendezvous, &mut hello, set_up, None).map_err(fail)?;
    let (magic, rest) = hello.split_at(HELLO_MAGIC.len());
    let (version, id) = rest.split_at(1);
    let id_ok = id
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    if magic != HELLO_MAGIC || version[0] != HELLO_VERSION || !id_ok {
        return Err(fail(io::Error::from(io::ErrorKind::InvalidData)));
    }
    let id = String::from_utf8_lossy(id);
    let base = format!("{pipe}@{id}");
    // Overlapped, as core's streams expect (see `OsStream`).
    let up = open_pipe(&format!("{base}-up"), GENERIC_WRITE, FILE_FLAG_OVERLAPPED).map_err(fail)?;
    let down =
        open_pipe(&format!("{base}-down"), GENERIC_READ, FILE_FLAG_OVERLAPPED).map_err(fail)?;
    write_all(&rendezvous, &[ACK], set_up, None).map_err(fail)?;
    Ok((up, down))
}

/// Opens the client end of a pipe (never inheritable; identification only).
fn open_pipe(name: &str, access: u32, flags: FILE_FLAGS_AND_ATTRIBUTES) -> io::Result<OwnedHandle> {
    let name = wide(name);
    // SAFETY: `name` is NUL-terminated; null security attributes make the
    // handle non-inheritable; no template file.
    let h = unsafe {
        CreateFileW(
            name.as_ptr(),
            access,
            0,
            std::ptr::null(),
            OPEN_EXISTING,
            flags | SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION,
            std::ptr::null_mut(),
        )
    };
    // SAFETY: the return value of the CreateFileW call just made, a new
    // handle nobody else owns.
    unsafe { owned(h) }
}

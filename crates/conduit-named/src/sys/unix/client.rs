//! The client: `connect`, waiting for a server to appear before a deadline,
//! and checking that the server runs as this user.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use conduit_core::{Error, ErrorKind, Result};
use interprocess::os::unix::uds_local_socket::Stream as UdsStream;

use super::dir::{check_len, socket_dir};
use super::{euid, halves, peer_euid, socket_file};

/// Connects to the server of `name`; see `crate::connect` for the waiting rules.
pub fn connect(name: &str, deadline: Option<Instant>) -> Result<(OwnedFd, OwnedFd)> {
    let dir = socket_dir()?;
    let path = dir.join(socket_file(name));
    check_len(&path)?;
    let mut pause = Duration::from_millis(1);
    let stream = loop {
        match UnixStream::connect(&path) {
            Ok(s) => break s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                let Some(deadline) = deadline else {
                    return Err(Error::with_source(
                        ErrorKind::Io,
                        format!(
                            "no server is listening on conduit name {name:?} ({})",
                            path.display()
                        ),
                        e,
                    ));
                };
                let now = Instant::now();
                if now >= deadline {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "no server was listening on conduit name {name:?} ({}) before the deadline",
                            path.display()
                        ),
                    ));
                }
                std::thread::sleep(pause.min(deadline - now));
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(Error::from_io(
                    &format!("cannot connect to {}", path.display()),
                    e,
                ))
            }
        }
    };
    let stream = UdsStream::from(stream);
    let me = euid();
    match peer_euid(&stream) {
        Ok(Some(uid)) if uid != me => {
            return Err(Error::with_source(
                ErrorKind::Io,
                format!(
                    "the server of conduit name {name:?} runs as uid {uid}, not as this user (uid {me}); refusing to talk to it"
                ),
                io::Error::from(io::ErrorKind::PermissionDenied),
            ))
        }
        Ok(_) => {}
        Err(e) => {
            return Err(Error::from_io(
                "cannot read the credentials of the server",
                e,
            ))
        }
    }
    halves(stream).map_err(|e| Error::from_io("cannot set up the connection", e))
}

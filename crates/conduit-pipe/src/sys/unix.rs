//! Unix pipes: core's close-on-exec pipe, with a larger buffer on Linux.

use std::io;
use std::os::fd::OwnedFd;

/// Creates a close-on-exec pipe: `(read end, write end)`.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = conduit_core::transport::sys::pipe()?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // Best effort: an unprivileged process may be capped below this
        // (/proc/sys/fs/pipe-max-size); the default 64 KiB still works.
        let _ = rustix::pipe::fcntl_setpipe_size(&write, 1 << 20);
    }
    Ok((read, write))
}

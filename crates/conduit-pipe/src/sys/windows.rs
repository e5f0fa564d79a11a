//! Windows anonymous pipes (`CreatePipe`, non-inheritable, via core).

use std::io;
use std::os::windows::io::OwnedHandle;

/// Creates a non-inheritable pipe: `(read end, write end)`.
pub fn pipe() -> io::Result<(OwnedHandle, OwnedHandle)> {
    conduit_core::transport::sys::pipe()
}

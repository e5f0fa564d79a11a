//! Windows: two anonymous pipes stand in for a socket pair (see the crate doc).

use std::io;
use std::os::windows::io::OwnedHandle;

use conduit_core::transport::sys::StreamKind;

/// Streams are pipes.
pub const KIND: StreamKind = StreamKind::Pipe;

/// Two connected ends, each as (sending handle, receiving handle).
#[allow(clippy::type_complexity)]
pub fn pair() -> io::Result<((OwnedHandle, OwnedHandle), (OwnedHandle, OwnedHandle))> {
    let (b_recv, a_send) = conduit_core::transport::sys::pipe()?;
    let (a_recv, b_send) = conduit_core::transport::sys::pipe()?;
    Ok(((a_send, a_recv), (b_send, b_recv)))
}

//! Shared-memory ring buffers (feature `shm`): one ring per direction in a
//! segment that only the two processes hold, blocking wake-ups through a
//! futex (Linux), `__ulock_wait` (macOS) or events (Windows), and a lifeline
//! that reports a killed peer as `Disconnected` within
//! [`ShmConfig::liveness_interval`].
//!
//! A side spins for [`ShmConfig::spin`] before it parks, which gives
//! sub-microsecond latency when the peer answers quickly; an idle receiver
//! uses no CPU. Messages larger than the ring are streamed through it in
//! pieces, up to `max_frame`. The shared memory is treated as untrusted
//! input: a misbehaving peer can cause errors, never a panic or an
//! out-of-bounds access (see the `conduit-shm` crate documentation).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Duplex, Receiver, Result, Sender};

pub use conduit_shm::ShmConfig;

/// Creates a one-way channel with the default [`ShmConfig`].
///
/// # Examples
///
/// ```
/// let (tx, rx) = conduit::shm::channel::<u32>().unwrap();
/// tx.send(&42).unwrap();
/// assert_eq!(rx.recv().unwrap(), 42);
/// ```
pub fn channel<T: Serialize + DeserializeOwned + 'static>() -> Result<(Sender<T>, Receiver<T>)> {
    channel_with(ShmConfig::default())
}

/// Creates a one-way channel with `cfg`.
///
/// # Examples
///
/// ```
/// use conduit::shm::ShmConfig;
/// let cfg = ShmConfig::default().with_capacity(64 << 10).with_max_frame(1 << 20);
/// let (tx, rx) = conduit::shm::channel_with::<Vec<u8>>(cfg).unwrap();
/// let err = tx.send(&vec![0; 2 << 20]).unwrap_err();
/// assert_eq!(err.kind(), conduit::ErrorKind::TooLarge);
/// # drop(rx);
/// ```
pub fn channel_with<T: Serialize + DeserializeOwned + 'static>(
    cfg: ShmConfig,
) -> Result<(Sender<T>, Receiver<T>)> {
    let (tx, rx) = conduit_core::transport::boxed_channel(conduit_shm::channel(cfg)?);
    Ok(crate::typed_channel(tx, rx))
}

/// Creates a two-way connection with the default [`ShmConfig`].
///
/// # Examples
///
/// ```
/// let (a, b) = conduit::shm::duplex::<String, u32>().unwrap();
/// a.send(&"hi".to_string()).unwrap();
/// assert_eq!(b.recv().unwrap(), "hi");
/// b.send(&2).unwrap();
/// assert_eq!(a.recv().unwrap(), 2);
/// ```
pub fn duplex<S, R>() -> Result<(Duplex<S, R>, Duplex<R, S>)>
where
    S: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    duplex_with(ShmConfig::default())
}

/// Creates a two-way connection with `cfg`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let cfg = conduit::shm::ShmConfig::default().with_spin(Duration::ZERO);
/// let (a, b) = conduit::shm::duplex_with::<u8, u8>(cfg).unwrap();
/// a.send(&1).unwrap();
/// assert_eq!(b.recv().unwrap(), 1);
/// ```
pub fn duplex_with<S, R>(cfg: ShmConfig) -> Result<(Duplex<S, R>, Duplex<R, S>)>
where
    S: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    let ((a_tx, a_rx), (b_tx, b_rx)) =
        conduit_core::transport::boxed_duplex(conduit_shm::duplex(cfg)?);
    Ok((
        crate::typed_duplex(a_tx, a_rx),
        crate::typed_duplex(b_tx, b_rx),
    ))
}

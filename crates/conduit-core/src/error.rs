//! Errors: one [`Error`] type whose [`ErrorKind`] tells what happened and whose
//! message says what to do about it.

use std::fmt;
use std::io;

/// The category of an [`Error`].
///
/// # Examples
///
/// ```
/// use conduit_core::{Error, ErrorKind};
/// let err = Error::new(ErrorKind::Timeout, "no message within 10ms");
/// assert_eq!(err.kind(), ErrorKind::Timeout);
/// assert!(err.is_timeout());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The peer is gone: it closed its end, exited or was killed. The channel will
    /// never deliver another message.
    Disconnected,
    /// A deadline passed before the operation could complete.
    Timeout,
    /// A non-blocking receive found no message ready.
    Empty,
    /// A non-blocking send found no room in the channel; nothing was sent.
    Full,
    /// A frame is larger than the configured maximum frame size. When a peer
    /// announces such a frame the receiving channel is closed.
    TooLarge,
    /// A frame arrived whole but its payload could not be decoded into the
    /// expected type (garbage or a type mismatch between the peers).
    Decode,
    /// A message could not be encoded (its `Serialize` implementation
    /// failed); nothing was sent.
    Encode,
    /// The peer broke the wire protocol: wrong handshake, bad frame header,
    /// truncated frame, or inconsistent shared state.
    Protocol,
    /// The operation or transport is not available in this build or on this OS
    /// (for example a transport whose cargo feature is off).
    Unsupported,
    /// An argument was invalid (a malformed name, key or handoff token).
    InvalidInput,
    /// Any other operating-system error; see [`std::error::Error::source`].
    Io,
    /// A child process started with `conduit::Process` did not return a
    /// result: its target panicked (the message carries the panic message and
    /// location), it exited early, it was killed by a signal, or it never ran
    /// the target (its `main` does not call `conduit::init()` first).
    ChildFailed,
    /// A worker process of a `conduit::Pool` died (was killed, crashed or
    /// exited) while it ran this task, and the pool's `on_worker_death`
    /// policy did not run it again (or it died again). The message names
    /// the worker's pid and how it ended (signal or exit code).
    WorkerDied,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Disconnected => "disconnected",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Empty => "empty",
            ErrorKind::Full => "full",
            ErrorKind::TooLarge => "frame too large",
            ErrorKind::Decode => "decode error",
            ErrorKind::Encode => "encode error",
            ErrorKind::Protocol => "protocol error",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::Io => "i/o error",
            ErrorKind::ChildFailed => "child process failed",
            ErrorKind::WorkerDied => "pool worker died",
        })
    }
}

/// The error type of every conduit operation.
///
/// Its [`Display`](fmt::Display) is lowercase, has no trailing period, and names
/// the context and, where possible, what to do.
///
/// # Examples
///
/// ```
/// use conduit_core::{Error, ErrorKind};
/// let err = Error::disconnected("the peer closed the channel");
/// assert!(err.is_disconnected());
/// assert_eq!(err.to_string(), "disconnected: the peer closed the channel");
/// ```
pub struct Error(Box<Inner>);

/// What an [`Error`] holds, boxed: `Result<(), Error>` is then one pointer,
/// returned in a register, where the unboxed fields (56 bytes) went through
/// memory at every call level of the hot send and receive paths (measured:
/// an async 64 B shm send spent a third of its time reloading returned
/// results).
struct Inner {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// `Result<T, conduit_core::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Creates an error of `kind` with a context message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error(Box::new(Inner {
            kind,
            message: message.into(),
            source: None,
        }))
    }

    /// Creates an error of `kind` with a context message and an underlying cause.
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Error {
        Error(Box::new(Inner {
            kind,
            message: message.into(),
            source: Some(source.into()),
        }))
    }

    /// A [`ErrorKind::Disconnected`] error.
    pub fn disconnected(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Disconnected, message)
    }

    /// A [`ErrorKind::Protocol`] error.
    pub fn protocol(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Protocol, message)
    }

    /// A [`ErrorKind::InvalidInput`] error.
    pub fn invalid_input(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidInput, message)
    }

    /// A [`ErrorKind::Timeout`] error.
    pub fn timeout(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Timeout, message)
    }

    /// The [`ErrorKind::Full`] error of a send whose deadline passed before
    /// the channel had room for it.
    pub fn full() -> Error {
        Error::new(
            ErrorKind::Full,
            "the channel had no room for the message before the deadline; nothing was sent",
        )
    }

    /// A [`ErrorKind::TooLarge`] error.
    pub fn too_large(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::TooLarge, message)
    }

    /// The [`ErrorKind::TooLarge`] error of a sender asked to send `len`
    /// bytes on a channel whose maximum frame is `max` bytes.
    pub fn frame_too_large(len: usize, max: u32) -> Error {
        Error::too_large(format!(
            "message of {len} bytes exceeds the maximum frame size of {max} bytes; raise max_frame on both ends or send it in parts"
        ))
    }

    /// The error of a call on a channel that an earlier error closed for
    /// good: the same kind, with `message` (the earlier one) as context.
    pub fn closed(kind: ErrorKind, message: &str) -> Error {
        Error::new(kind, format!("channel closed: {message}"))
    }

    /// Maps an OS error met while doing `what` to a conduit error: a broken pipe,
    /// reset or aborted connection becomes [`ErrorKind::Disconnected`], a timeout
    /// [`ErrorKind::Timeout`], anything else [`ErrorKind::Io`].
    pub fn from_io(what: &str, err: io::Error) -> Error {
        let kind = match err.kind() {
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof => ErrorKind::Disconnected,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ErrorKind::Timeout,
            io::ErrorKind::Unsupported => ErrorKind::Unsupported,
            io::ErrorKind::InvalidInput => ErrorKind::InvalidInput,
            _ => ErrorKind::Io,
        };
        let message = match kind {
            ErrorKind::Disconnected => format!("{what}: the peer closed its end or exited"),
            _ => what.to_string(),
        };
        Error::with_source(kind, message, err)
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// True when the peer is gone ([`ErrorKind::Disconnected`]).
    pub fn is_disconnected(&self) -> bool {
        self.0.kind == ErrorKind::Disconnected
    }

    /// True when a deadline passed ([`ErrorKind::Timeout`]).
    pub fn is_timeout(&self) -> bool {
        self.0.kind == ErrorKind::Timeout
    }

    /// The context message, without the kind prefix.
    pub fn message(&self) -> &str {
        &self.0.message
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.0.kind)
            .field("message", &self.0.message);
        if let Some(source) = &self.0.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.message.is_empty() {
            write!(f, "{}", self.0.kind)
        } else {
            // The source is not repeated here: error-chain reporters print
            // it from `source()`.
            write!(f, "{}: {}", self.0.kind, self.0.message)
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        let kind = match err.0.kind {
            ErrorKind::Disconnected => io::ErrorKind::BrokenPipe,
            ErrorKind::Timeout => io::ErrorKind::TimedOut,
            ErrorKind::Empty | ErrorKind::Full => io::ErrorKind::WouldBlock,
            ErrorKind::TooLarge | ErrorKind::Decode | ErrorKind::Protocol => {
                io::ErrorKind::InvalidData
            }
            ErrorKind::Unsupported => io::ErrorKind::Unsupported,
            ErrorKind::InvalidInput | ErrorKind::Encode => io::ErrorKind::InvalidInput,
            ErrorKind::Io | ErrorKind::ChildFailed | ErrorKind::WorkerDied => io::ErrorKind::Other,
        };
        io::Error::new(kind, err)
    }
}

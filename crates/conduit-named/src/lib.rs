//! Named endpoints for [conduit](https://docs.rs/conduit): a server binds a
//! name, processes that were not spawned by it connect by that name, and each
//! connection is a framed duplex stream.
//!
//! Applications use `conduit::named::{Listener, connect}`, which wrap this
//! crate's byte-level [`Listener`] and [`connect`] into typed endpoints.
//!
//! # Names
//!
//! A name is a plain identifier: 1 to 64 ASCII letters, digits, `_`, `.` or
//! `-`, not starting with a dot ([`check_name`]). Names are per user: two
//! users binding the same name get two different endpoints.
//!
//! | OS | a name `svc` is |
//! |---|---|
//! | Unix | the socket `<dir>/svc.sock` (+ a lock file `<dir>/svc.lock`), where `<dir>` is `$CONDUIT_NAMED_DIR`, else `$XDG_RUNTIME_DIR/conduit`, else `<temp dir>/conduit-<uid>` |
//! | Windows | the pipe `\\.\pipe\conduit-<user SID>-svc` |
//!
//! Server and client must agree on the directory: a client started without
//! `XDG_RUNTIME_DIR` (from cron, or `sudo -u`) looks in the temp directory
//! and does not find a server started from a desktop session. Set
//! `CONDUIT_NAMED_DIR` for both when in doubt.
//!
//! # Connections
//!
//! Every connection starts with the handshake of [`conduit_core::stream`],
//! exchanged eagerly in both directions by [`Listener::accept`] and
//! [`connect`]: each side sends its handshake, then waits for the peer's,
//! so a configuration mismatch (another `max_frame`, another codec) is an
//! `ErrorKind::Protocol` error on *both* sides before any message is sent.
//! After that the stream semantics are those of the anonymous transports:
//! a peer that exits or is killed is `Disconnected`; a peer that dies in the
//! middle of a frame is `Protocol` ("truncated frame"), then `Disconnected`.
//!
//! `accept` waits until a client completes the handshake. Clients that go
//! away or stay silent during the handshake, and clients running as another
//! user, are dropped without ending `accept`; a handshake *mismatch* is
//! returned as an error so that the server learns about it (the listener
//! stays usable).
//!
//! Handshakes run side by side, up to [`MAX_PENDING`] at once, and
//! `accept` returns the first connection that completes. On Unix `accept`
//! keeps the connections whose handshake is in progress and waits on the
//! listening socket and all of them at once; on Windows each connected
//! client is set up (the rendezvous on the named pipe, then the handshake)
//! on a thread of its own while `accept` offers the next pipe instance to
//! the next client. Each connection has its own deadline,
//! [`Listener::handshake_timeout`] after it was accepted
//! ([`HANDSHAKE_TIMEOUT`], 10 s, unless set with
//! [`Listener::with_handshake_timeout`]); a client that stays silent is
//! dropped when *its* deadline passes and delays nobody else. Connections
//! still in progress when `accept` returns are kept for the next call;
//! dropping the listener ends them.
//!
//! # Security
//!
//! Only the user who runs the server can connect, and another user cannot
//! squat a name to intercept clients:
//!
//! * **Unix**: the socket lives in a directory that must be owned by the
//!   current user with no access for group or others (`0700`). It is created
//!   so; an existing directory with wider permissions, another owner, or that
//!   is a symbolic link is refused with an error that says why and what to do.
//!   So is a directory that another user could rename away and replace: every
//!   directory above it must be owned by the current user or root, and be
//!   writable by nobody else (no group or other write bit) unless it has the
//!   sticky bit (as `/tmp` does). The socket file is `0600`. Both ends also check the peer's effective uid
//!   (`SO_PEERCRED` / `LOCAL_PEERCRED`) and refuse a different user.
//! * **Windows**: every pipe is created with a security descriptor whose
//!   owner is the current user and whose protected DACL grants access to the
//!   current user only; the first instance is created with
//!   `FILE_FLAG_FIRST_PIPE_INSTANCE` (so binding fails instead of joining a
//!   pipe someone else created), and remote clients are rejected
//!   (`PIPE_REJECT_REMOTE_CLIENTS`). A client checks that the pipe's *owner*
//!   is its own user SID before it sends anything (a squatter cannot make
//!   another user the owner of its pipe without `SeRestorePrivilege`), and
//!   opens pipes with `SECURITY_IDENTIFICATION`, so a server can never
//!   impersonate its clients.
//!
//! # Lifecycle
//!
//! * Binding a name whose socket file was left behind by a crashed server
//!   succeeds: the name is guarded by an `flock` on its lock file, which the
//!   kernel releases when the holder dies, and a left-over socket is removed
//!   only after a connection attempt shows that nobody listens on it.
//! * Binding *any* name also sweeps the directory: every other name whose
//!   lock file nobody holds (its server was killed) loses its socket and lock
//!   files, so they do not pile up after crashes. The sweep takes each such
//!   lock before it removes anything, so it never races a server binding
//!   that name.
//! * Binding a name that a live server holds fails with `ErrorKind::Io`
//!   whose source is an `io::ErrorKind::AddrInUse` error, and says which
//!   process holds it (Unix).
//! * Dropping the [`Listener`] removes its socket and lock files, if they
//!   are still the ones it created. Windows pipes vanish with their handles.
//!
//! # Platform notes
//!
//! On Windows a connection is set up through the named pipe and then runs
//! over two private one-way pipes, because synchronous pipe handles
//! serialize concurrent reads and writes (`docs/wire-format.md` describes
//! the set-up for non-Rust peers). On macOS, whose socket paths are limited
//! to 103 bytes and whose temp dir is long, very long names can exceed the
//! limit (`InvalidInput`); set `CONDUIT_NAMED_DIR` to a shorter directory.
//!
//! # What is checked where
//!
//! | check | Unix | Windows |
//! |---|---|---|
//! | only this user can reach the endpoint | directory `0700` owned by the user, socket `0600` | DACL: current user SID only |
//! | nobody else can own the name | the directory check (bind and connect) | `FILE_FLAG_FIRST_PIPE_INSTANCE`; client checks the pipe owner |
//! | the peer is this user | server and client compare the peer's euid | the DACL admits only this user; the owner check on the client |
//! | no remote peers | Unix sockets are local | `PIPE_REJECT_REMOTE_CLIENTS` |
//! | the server cannot act as the client | not applicable | clients open with `SECURITY_IDENTIFICATION` |

#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::fmt;
use std::time::{Duration, Instant};

use conduit_core::stream::{StreamReceiver, StreamSender};
use conduit_core::transport::sys::OsStream;
use conduit_core::transport::Package;
use conduit_core::{Error, ErrorKind, FrameConfig, Result};

mod sys;

/// The transport's name, as it appears in handoff tokens and `transport()`.
pub const TRANSPORT: &str = "named";

// Named endpoints make no anonymous pairs, but handed-over connection
// halves are rebuilt here.
conduit_core::describe_transport!(TRANSPORT, no_pairs);

/// The longest name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// How long a connection may take to complete its handshake (and, on
/// Windows, its pipe set-up), by default. A client that takes longer is
/// dropped by `accept`, which goes on waiting for others; a listener can
/// change it with [`Listener::with_handshake_timeout`]. `connect` also
/// waits at most this long for the server's handshake, unless its deadline
/// is earlier.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// At most this many connections have a handshake in progress in a
/// listener. On Unix, when one more arrives, the oldest is dropped; on
/// Windows, `accept` waits for one to end before it takes one more client.
pub const MAX_PENDING: usize = 128;

/// A byte-level duplex endpoint: a sender and a receiver over one connection.
pub type DuplexEnd = (StreamSender, StreamReceiver);

/// Checks that `name` is a valid endpoint name: 1 to 64 ASCII letters,
/// digits, `_`, `.` or `-`, not starting with a dot.
///
/// # Examples
///
/// ```
/// assert!(conduit_named::check_name("my-service.v2").is_ok());
/// let err = conduit_named::check_name("../etc").unwrap_err();
/// assert_eq!(err.kind(), conduit_core::ErrorKind::InvalidInput);
/// assert!(err.to_string().contains("letters, digits"));
/// ```
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_input(format!(
            "{name:?} is not a valid conduit endpoint name: use 1 to {MAX_NAME_LEN} ASCII letters, digits, '_', '.' or '-', not starting with '.'"
        )))
    }
}

/// Where a name lives on this system: the socket path (Unix) or the pipe
/// name (Windows). On Unix this checks (and if needed creates) the private
/// directory, so it fails where [`Listener::bind`] would.
///
/// # Examples
///
/// ```
/// let at = conduit_named::endpoint("my-service").unwrap();
/// assert!(at.contains("my-service"));
/// ```
pub fn endpoint(name: &str) -> Result<String> {
    check_name(name)?;
    sys::endpoint(name)
}

/// A bound name that accepts connections.
///
/// Dropping it stops accepting and removes the name (connections already
/// accepted stay open).
///
/// # Examples
///
/// ```
/// use conduit_core::{FrameConfig, FrameReceiver, FrameSender};
/// let name = format!("doc-listener-{}", std::process::id());
/// let listener = conduit_named::Listener::bind(&name, FrameConfig::default()).unwrap();
/// let client = std::thread::spawn(move || {
///     let (mut tx, _rx) = conduit_named::connect(&name, FrameConfig::default(), None).unwrap();
///     tx.send_frame(b"hello").unwrap();
/// });
/// let (_tx, mut rx) = listener.accept(None).unwrap();
/// let mut buf = Vec::new();
/// rx.recv_frame(&mut buf, None).unwrap();
/// assert_eq!(buf, b"hello");
/// client.join().unwrap();
/// ```
pub struct Listener {
    sys: sys::Listener,
    name: String,
    cfg: FrameConfig,
    handshake_timeout: Duration,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("name", &self.name)
            .field("endpoint", &self.sys.endpoint())
            .field("max_frame", &self.cfg.max_frame)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

impl Listener {
    /// Binds `name` for connections with frame parameters `cfg` (clients must
    /// use the same ones).
    ///
    /// Fails with `InvalidInput` for a malformed name, with `Io` (source
    /// `io::ErrorKind::AddrInUse`) when a live server holds the name, and with
    /// `Io` (source `PermissionDenied`) when the private directory (Unix) is
    /// not private.
    pub fn bind(name: &str, cfg: FrameConfig) -> Result<Listener> {
        check_name(name)?;
        let sys = sys::Listener::bind(name)?;
        Ok(Listener {
            sys,
            name: name.to_string(),
            cfg,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        })
    }

    /// Sets how long each client may take, from its arrival, to complete the
    /// handshake before `accept` drops it (default [`HANDSHAKE_TIMEOUT`],
    /// 10 s). Applies to clients that arrive after the call.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use conduit_core::FrameConfig;
    /// let name = format!("doc-hs-timeout-{}", std::process::id());
    /// let listener = conduit_named::Listener::bind(&name, FrameConfig::default())
    ///     .unwrap()
    ///     .with_handshake_timeout(Duration::from_secs(2));
    /// assert_eq!(listener.handshake_timeout(), Duration::from_secs(2));
    /// ```
    #[must_use]
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Listener {
        self.handshake_timeout = timeout;
        self
    }

    /// How long each client may take to complete the handshake.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// The name this listener is bound to.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The socket path (Unix) or pipe name (Windows) behind the name.
    pub fn endpoint(&self) -> &str {
        self.sys.endpoint()
    }

    /// The frame parameters of this listener's connections.
    pub fn config(&self) -> FrameConfig {
        self.cfg
    }

    /// Waits for the next client and completes the handshake with it; gives
    /// up with `Timeout` at `deadline` (`None`: wait for ever).
    ///
    /// Clients that disconnect or stall during the handshake are dropped and
    /// the wait goes on; a handshake mismatch is returned as `Protocol`.
    pub fn accept(&self, deadline: Option<Instant>) -> Result<DuplexEnd> {
        match self
            .sys
            .accept(self.cfg, self.handshake_timeout, deadline)?
        {
            sys::Accepted::Ready(conn) => Ok(*conn),
            sys::Accepted::TimedOut => Err(self.timeout()),
            sys::Accepted::Mismatch(e) => Err(Error::protocol(format!(
                "a client of {:?} failed the handshake: {}",
                self.name,
                e.message()
            ))),
        }
    }

    /// True when a client is waiting to be accepted, without waiting
    /// (for `conduit::wait`).
    pub fn client_waiting(&self) -> Result<bool> {
        self.sys.client_waiting()
    }

    /// True while the listener holds clients in their handshake whose
    /// progress [`wait_handles`](Self::wait_handles) do not signal, so that
    /// an async accept must look again after a short pause: on Unix,
    /// connections taken by [`accept`](Self::accept) and kept for the next
    /// call; on Windows, only while [`MAX_PENDING`] set-ups run.
    pub fn handshakes_in_progress(&self) -> bool {
        self.sys.handshakes_in_progress()
    }

    /// What `conduit::wait` and async listeners watch, each to be waited
    /// on for readability: on Unix the listening socket (readable when a
    /// client connects); on Windows the event of the `ConnectNamedPipe`
    /// kept in flight on the waiting pipe instance (signalled while a
    /// client is connected to it) and an event signalled while connections
    /// whose set-up finished wait for `accept`. After they signal,
    /// [`client_waiting`](Self::client_waiting) says whether a client is
    /// there.
    pub fn wait_handles(&self) -> Vec<conduit_core::WaitHandle<'_>> {
        self.sys.wait_handles()
    }

    fn timeout(&self) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!("no client connected to {:?} before the deadline", self.name),
        )
    }
}

/// The deadline for one connection's set-up and handshake on the client side.
fn handshake_deadline(deadline: Option<Instant>) -> Instant {
    deadline_within(deadline, HANDSHAKE_TIMEOUT)
}

/// `timeout` from now, or `deadline` if that is earlier.
fn deadline_within(deadline: Option<Instant>, timeout: Duration) -> Instant {
    // Clamped so that the sum cannot overflow: a year is "for ever" here.
    let limit = Instant::now() + timeout.min(Duration::from_secs(365 * 24 * 3600));
    deadline.map_or(limit, |d| d.min(limit))
}

/// Wraps a connection's handles into a framed sender and receiver.
fn wrap(
    send: conduit_core::transport::sys::OsHandle,
    recv: conduit_core::transport::sys::OsHandle,
    cfg: FrameConfig,
) -> DuplexEnd {
    (
        StreamSender::new(OsStream::new(send, sys::KIND), TRANSPORT, cfg),
        StreamReceiver::new(OsStream::new(recv, sys::KIND), TRANSPORT, cfg),
    )
}

/// Wraps a connection's handles and exchanges the handshakes.
fn establish(
    send: conduit_core::transport::sys::OsHandle,
    recv: conduit_core::transport::sys::OsHandle,
    cfg: FrameConfig,
    deadline: Instant,
) -> Result<DuplexEnd> {
    let (mut tx, mut rx) = wrap(send, recv, cfg);
    tx.send_handshake()?;
    rx.recv_handshake(Some(deadline))?;
    Ok((tx, rx))
}

/// Connects to the server listening on `name` and completes the handshake.
///
/// With `deadline: None` this fails at once when no server listens on the
/// name (`Io`, source `NotFound` or `ConnectionRefused`) and waits for a busy
/// server to accept. With a deadline it also waits for a server to appear,
/// retrying until the deadline (`Timeout`). A handshake mismatch is
/// `Protocol`; a server running as another user is refused (`Io`, source
/// `PermissionDenied`).
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use conduit_core::{ErrorKind, FrameConfig};
/// let deadline = Instant::now() + Duration::from_millis(20);
/// let err = conduit_named::connect("nobody-listens-here", FrameConfig::default(), Some(deadline))
///     .unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Timeout);
/// ```
pub fn connect(name: &str, cfg: FrameConfig, deadline: Option<Instant>) -> Result<DuplexEnd> {
    check_name(name)?;
    let (send, recv) = sys::connect(name, deadline)?;
    establish(send, recv, cfg, handshake_deadline(deadline)).map_err(|e| match e.kind() {
        ErrorKind::Timeout => Error::new(
            ErrorKind::Timeout,
            format!("the server of {name:?} did not complete the handshake in time"),
        ),
        ErrorKind::Protocol => Error::protocol(format!(
            "the server of {name:?} failed the handshake: {}",
            e.message()
        )),
        _ => e,
    })
}

/// Rebuilds a sender handed over by `conduit::handoff` (an accepted or
/// connected named connection can be handed to a child process).
pub fn import_sender(package: Package) -> Result<StreamSender> {
    StreamSender::import(package, sys::KIND, TRANSPORT)
}

/// Rebuilds a receiver handed over by `conduit::handoff`.
pub fn import_receiver(package: Package) -> Result<StreamReceiver> {
    StreamReceiver::import(package, sys::KIND, TRANSPORT)
}

/// Unix specifics: where the sockets live.
#[cfg(unix)]
#[cfg_attr(docsrs, doc(cfg(unix)))]
pub mod unix {
    use std::path::PathBuf;

    use conduit_core::Result;

    /// The environment variable that overrides the socket directory. It must
    /// name an absolute path; the directory is created (mode `0700`) if it
    /// does not exist, and refused unless it is owned by the current user and
    /// closed to group and others, and every directory above it is owned by
    /// the current user or root and writable by nobody else (unless sticky).
    pub const DIR_ENV: &str = crate::sys::DIR_ENV;

    /// The private directory that holds the sockets, created if needed and
    /// checked (owner, mode `0700`, not a symbolic link).
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = conduit_named::unix::socket_dir().unwrap();
    /// assert!(dir.is_absolute());
    /// ```
    pub fn socket_dir() -> Result<PathBuf> {
        crate::sys::socket_dir()
    }

    /// The socket path of `name`.
    ///
    /// # Examples
    ///
    /// ```
    /// let path = conduit_named::unix::socket_path("svc").unwrap();
    /// assert!(path.ends_with("svc.sock"));
    /// ```
    pub fn socket_path(name: &str) -> Result<PathBuf> {
        crate::check_name(name)?;
        Ok(crate::sys::socket_dir()?.join(crate::sys::socket_file(name)))
    }
}

/// Windows specifics: the pipe names.
#[cfg(windows)]
#[cfg_attr(docsrs, doc(cfg(windows)))]
pub mod windows {
    use conduit_core::Result;

    /// The pipe name of `name` for the current user:
    /// `\\.\pipe\conduit-<user SID>-<name>`.
    ///
    /// # Examples
    ///
    /// ```
    /// let pipe = conduit_named::windows::pipe_name("svc").unwrap();
    /// assert!(pipe.starts_with(r"\\.\pipe\conduit-S-1-"));
    /// ```
    pub fn pipe_name(name: &str) -> Result<String> {
        crate::check_name(name)?;
        crate::sys::endpoint(name)
    }
}

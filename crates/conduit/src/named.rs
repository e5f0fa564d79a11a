//! Named endpoints (feature `named`): a server binds a name, processes that
//! it did not spawn connect by that name, and each connection is a typed
//! [`Duplex`].
//!
//! ```no_run
//! # fn main() -> Result<(), conduit::Error> {
//! // server
//! let listener = conduit::named::Listener::<String, u32>::bind("my-service")?;
//! for conn in listener.incoming() {
//!     let conn = conn?;                        // Duplex<String, u32>
//!     std::thread::spawn(move || {
//!         for n in conn.iter() {
//!             let n = n?;
//!             conn.send(&format!("twice {n} is {}", 2 * n))?;
//!         }
//!         Ok::<_, conduit::Error>(())
//!     });
//! }
//!
//! // client, in another process
//! let conn: conduit::Duplex<u32, String> = conduit::named::connect("my-service")?;
//! conn.send(&21)?;
//! assert_eq!(conn.recv()?, "twice 21 is 42");
//! # Ok(()) }
//! ```
//!
//! **Who sends what.** The type parameters follow [`crate::duplex`]: the
//! listener's side is the first end. A `Listener<S, R>` accepts connections
//! of type `Duplex<S, R>` (the server sends `S` and receives `R`), and its
//! clients call `connect::<R, S>` and get `Duplex<R, S>`. So the design's
//! `Listener::<Req, Resp>` gives the server `Duplex<Req, Resp>` and the
//! client `Duplex<Resp, Req>`.
//!
//! **Names** are 1 to 64 ASCII letters, digits, `_`, `.` or `-`, not
//! starting with a dot, and private to the user: the server and its clients
//! must run as the same user. On Unix a name is a socket in a private
//! directory (`$CONDUIT_NAMED_DIR`, else `$XDG_RUNTIME_DIR/conduit`, else
//! `<temp>/conduit-<uid>`, mode `0700`); on Windows it is the named pipe
//! `\\.\pipe\conduit-<user SID>-<name>`, open to the current user only.
//!
//! **Connections** start with the conduit handshake in both directions, so
//! peers with different [`FrameConfig`]s fail with [`ErrorKind::Protocol`]
//! on both sides at connect/accept time. After that they behave like the
//! other transports: a peer that exits or is killed is
//! [`ErrorKind::Disconnected`]. Accepted connections can be handed to child
//! processes with [`crate::handoff`].
//!
//! A client that connects and then says nothing is dropped after the
//! listener's handshake timeout (10 s by default,
//! [`Listener::with_handshake_timeout`]); on Unix the handshakes of
//! several clients run side by side, so it does not hold up the others.
//!
//! **Lifecycle.** Binding a name left behind by a crashed server works (the
//! stale socket is replaced, and binding any name removes the files of
//! other killed servers); binding a name that a live server holds fails
//! with [`ErrorKind::Io`] whose [source](std::error::Error::source) is an
//! [`std::io::ErrorKind::AddrInUse`] error. Dropping the listener frees the
//! name.
//!
//! See the `conduit-named` crate for the platform details and security
//! checks.

use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

#[cfg(doc)]
use crate::ErrorKind;
use crate::{Duplex, FrameConfig, Result};
use conduit_core::deadline_after;

fn typed<S, R>((tx, rx): conduit_named::DuplexEnd) -> Duplex<S, R>
where
    S: Serialize + 'static,
    R: DeserializeOwned + 'static,
{
    crate::typed_duplex(Box::new(tx), Box::new(rx))
}

/// A bound name that accepts typed connections: each is a `Duplex<S, R>`
/// (this side sends `S`, receives `R`); clients connect with
/// [`connect::<R, S>`](connect).
///
/// Dropping the listener frees the name; connections already accepted stay
/// open.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), conduit::Error> {
/// let name = format!("doc-echo-{}", std::process::id());
/// let listener = conduit::named::Listener::<String, String>::bind(&name)?;
/// let client = std::thread::spawn(move || -> Result<String, conduit::Error> {
///     let conn = conduit::named::connect::<String, String>(&name)?;
///     conn.send(&"ping".to_string())?;
///     conn.recv()
/// });
/// let conn = listener.accept()?;
/// let msg = conn.recv()?;
/// conn.send(&msg.replace("ping", "pong"))?;
/// assert_eq!(client.join().unwrap()?, "pong");
/// # Ok(()) }
/// ```
pub struct Listener<S, R> {
    inner: conduit_named::Listener,
    _marker: PhantomData<fn(S) -> R>,
}

/// A listener's part in a [`crate::wait`].
struct ListenerWait<'a> {
    inner: &'a conduit_named::Listener,
}

impl crate::WaitSource for ListenerWait<'_> {
    fn arm(&mut self) -> Result<bool> {
        self.inner.client_waiting()
    }

    fn handles<'a>(&'a self, out: &mut Vec<crate::WaitHandle<'a>>) {
        out.extend(self.inner.wait_handles());
    }
}

/// Ready when a client is waiting to be accepted (see [`crate::wait`]);
/// [`accept`](Listener::accept) may still wait for that client's handshake.
/// On Unix the listening socket is watched; on Windows the listener keeps
/// an overlapped `ConnectNamedPipe` in flight on its waiting pipe instance
/// and the wait watches its event (and the event of connections whose
/// set-up finished).
impl<S, R> crate::Waitable for Listener<S, R> {
    fn wait_source(&self) -> Result<Box<dyn crate::WaitSource + '_>> {
        Ok(Box::new(ListenerWait { inner: &self.inner }))
    }
}

impl<S, R> fmt::Debug for Listener<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl<S, R> Listener<S, R>
where
    S: Serialize + 'static,
    R: DeserializeOwned + 'static,
{
    /// Binds `name` with the default [`FrameConfig`].
    ///
    /// Fails with [`ErrorKind::InvalidInput`] for a malformed name, and with
    /// [`ErrorKind::Io`] (source `AddrInUse`) when a live server holds it.
    ///
    /// # Examples
    ///
    /// ```
    /// let name = format!("doc-bind-{}", std::process::id());
    /// let first = conduit::named::Listener::<u8, u8>::bind(&name).unwrap();
    /// let err = conduit::named::Listener::<u8, u8>::bind(&name).unwrap_err();
    /// assert_eq!(err.kind(), conduit::ErrorKind::Io);
    /// let io = std::error::Error::source(&err)
    ///     .and_then(|s| s.downcast_ref::<std::io::Error>())
    ///     .unwrap();
    /// assert_eq!(io.kind(), std::io::ErrorKind::AddrInUse);
    /// drop(first);
    /// assert!(conduit::named::Listener::<u8, u8>::bind(&name).is_ok());
    /// ```
    pub fn bind(name: &str) -> Result<Self> {
        Self::bind_with(name, FrameConfig::default())
    }

    /// Binds `name`; connections use `cfg` (clients must use the same).
    ///
    /// # Examples
    ///
    /// ```
    /// let cfg = conduit::FrameConfig::default().with_max_frame(1 << 20);
    /// let name = format!("doc-bind-with-{}", std::process::id());
    /// let listener = conduit::named::Listener::<u8, u8>::bind_with(&name, cfg).unwrap();
    /// assert_eq!(listener.config().max_frame, 1 << 20);
    /// ```
    pub fn bind_with(name: &str, cfg: FrameConfig) -> Result<Self> {
        Ok(Listener {
            inner: conduit_named::Listener::bind(name, cfg)?,
            _marker: PhantomData,
        })
    }

    /// Sets how long each client may take, from its arrival, to complete
    /// the handshake before `accept` drops it; the default is
    /// [`conduit_named::HANDSHAKE_TIMEOUT`] (10 s). Handshakes run side by
    /// side, so a silent client only ever costs itself this timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), conduit::Error> {
    /// use std::time::Duration;
    /// let name = format!("doc-handshake-timeout-{}", std::process::id());
    /// let listener = conduit::named::Listener::<u8, u8>::bind(&name)?
    ///     .with_handshake_timeout(Duration::from_secs(2));
    /// assert_eq!(listener.handshake_timeout(), Duration::from_secs(2));
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_handshake_timeout(self, timeout: Duration) -> Self {
        Listener {
            inner: self.inner.with_handshake_timeout(timeout),
            _marker: PhantomData,
        }
    }

    /// How long each client may take to complete the handshake.
    pub fn handshake_timeout(&self) -> Duration {
        self.inner.handshake_timeout()
    }

    /// Blocks until a client connects and completes the handshake.
    ///
    /// Clients that disconnect or stall during the handshake are dropped
    /// and the wait goes on (each stalled client is dropped when its own
    /// [handshake timeout](Self::with_handshake_timeout) passes, and does
    /// not delay the others); a client with another [`FrameConfig`] is
    /// an [`ErrorKind::Protocol`] error (the listener stays usable).
    pub fn accept(&self) -> Result<Duplex<S, R>> {
        self.inner.accept(None).map(typed)
    }

    /// Like [`accept`](Self::accept) but gives up with
    /// [`ErrorKind::Timeout`] after `timeout`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let name = format!("doc-accept-timeout-{}", std::process::id());
    /// let listener = conduit::named::Listener::<u8, u8>::bind(&name).unwrap();
    /// let err = listener.accept_timeout(Duration::from_millis(10)).unwrap_err();
    /// assert!(err.is_timeout());
    /// ```
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Duplex<S, R>> {
        self.inner.accept(deadline_after(timeout)).map(typed)
    }

    /// Like [`accept`](Self::accept) but gives up with
    /// [`ErrorKind::Timeout`] at `deadline`.
    pub fn accept_deadline(&self, deadline: Instant) -> Result<Duplex<S, R>> {
        self.inner.accept(Some(deadline)).map(typed)
    }

    /// An endless iterator of accepted connections (each item is the result
    /// of one [`accept`](Self::accept)).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), conduit::Error> {
    /// let name = format!("doc-incoming-{}", std::process::id());
    /// let listener = conduit::named::Listener::<u32, u32>::bind(&name)?;
    /// let clients: Vec<_> = (0..3)
    ///     .map(|i| {
    ///         let name = name.clone();
    ///         std::thread::spawn(move || {
    ///             let conn = conduit::named::connect::<u32, u32>(&name).unwrap();
    ///             conn.send(&i).unwrap();
    ///             assert_eq!(conn.recv().unwrap(), i + 100);
    ///         })
    ///     })
    ///     .collect();
    /// for conn in listener.incoming().take(3) {
    ///     let conn = conn?;
    ///     let i = conn.recv()?;
    ///     conn.send(&(i + 100))?;
    /// }
    /// for c in clients { c.join().unwrap(); }
    /// # Ok(()) }
    /// ```
    pub fn incoming(&self) -> Incoming<'_, S, R> {
        Incoming { listener: self }
    }

    /// The name this listener is bound to.
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    /// The socket path (Unix) or pipe name (Windows) behind the name.
    pub fn endpoint(&self) -> &str {
        self.inner.endpoint()
    }

    /// The frame parameters of this listener's connections.
    pub fn config(&self) -> FrameConfig {
        self.inner.config()
    }
}

/// Iterator returned by [`Listener::incoming`]; it never ends.
pub struct Incoming<'a, S, R> {
    listener: &'a Listener<S, R>,
}

impl<S, R> fmt::Debug for Incoming<'_, S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("listener", &self.listener)
            .finish()
    }
}

impl<S, R> Iterator for Incoming<'_, S, R>
where
    S: Serialize + 'static,
    R: DeserializeOwned + 'static,
{
    type Item = Result<Duplex<S, R>>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.listener.accept())
    }
}

/// Connects to the server listening on `name` with the default
/// [`FrameConfig`]: this side sends `S` and receives `R` (the server's
/// listener is a `Listener<R, S>`).
///
/// Fails at once when no server listens on the name ([`ErrorKind::Io`],
/// source `NotFound` or `ConnectionRefused`); use [`connect_timeout`] to
/// wait for one to appear.
///
/// # Examples
///
/// ```
/// let err = conduit::named::connect::<u8, u8>("nobody-serves-this").unwrap_err();
/// assert_eq!(err.kind(), conduit::ErrorKind::Io);
/// ```
pub fn connect<S, R>(name: &str) -> Result<Duplex<S, R>>
where
    S: Serialize + 'static,
    R: DeserializeOwned + 'static,
{
    connect_with(name, FrameConfig::default())
}

/// Connects to `name`, waiting up to `timeout` for a server to appear and
/// accept ([`ErrorKind::Timeout`] after that).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let err = conduit::named::connect_timeout::<u8, u8>("nobody-serves-this", Duration::from_millis(10))
///     .unwrap_err();
/// assert!(err.is_timeout());
/// ```
pub fn connect_timeout<S, R>(name: &str, timeout: Duration) -> Result<Duplex<S, R>>
where
    S: Serialize + 'static,
    R: DeserializeOwned + 'static,
{
    connect_timeout_with(name, FrameConfig::default(), timeout)
}

/// Connects to `name` with `cfg`, which must match the server's.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), conduit::Error> {
/// let cfg = conduit::FrameConfig::default().with_max_frame(4096);
/// let name = format!("doc-connect-with-{}", std::process::id());
/// let listener = conduit::named::Listener::<u8, u8>::bind(&name)?;   // default max_frame
/// let server = std::thread::spawn(move || listener.accept().map(|_| ()));
/// let err = conduit::named::connect_with::<u8, u8>(&name, cfg).unwrap_err();
/// assert_eq!(err.kind(), conduit::ErrorKind::Protocol);
/// assert_eq!(server.join().unwrap().unwrap_err().kind(), conduit::ErrorKind::Protocol);
/// # Ok(()) }
/// ```
pub fn connect_with<S, R>(name: &str, cfg: FrameConfig) -> Result<Duplex<S, R>>
where
    S: Serialize + 'static,
    R: DeserializeOwned + 'static,
{
    conduit_named::connect(name, cfg, None).map(typed)
}

/// Connects to `name` with `cfg`, waiting up to `timeout`.
pub fn connect_timeout_with<S, R>(
    name: &str,
    cfg: FrameConfig,
    timeout: Duration,
) -> Result<Duplex<S, R>>
where
    S: Serialize + 'static,
    R: DeserializeOwned + 'static,
{
    conduit_named::connect(name, cfg, deadline_after(timeout)).map(typed)
}

/// Connects to the server listening on `name` without blocking the
/// runtime (feature `tokio`), like [`connect`], and returns an async
/// connection. The connect and handshake (bounded by the handshake
/// timeout) run on tokio's blocking thread pool; a dropped future drops
/// the connection it was making.
///
/// # Errors
///
/// As [`connect`].
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let name = format!("conduit-doc-connect-async-{}", std::process::id());
/// let listener = conduit::named::Listener::<u32, u32>::bind(&name)?.into_async()?;
/// let client = conduit::named::connect_async::<u32, u32>(&name);
/// let (server, client) = tokio::join!(listener.accept(), client);
/// let (mut server, mut client) = (server?, client?);
/// client.send(&1).await?;
/// let x = server.recv().await?;
/// server.send(&(x + 1)).await?;
/// assert_eq!(client.recv().await?, 2);
/// # Ok(()) }
/// ```
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub async fn connect_async<S, R>(name: &str) -> Result<crate::AsyncDuplex<S, R>>
where
    S: Serialize + 'static,
    R: DeserializeOwned + 'static,
{
    let name = name.to_string();
    let conn = tokio::task::spawn_blocking(move || connect::<S, R>(&name))
        .await
        .map_err(|e| {
            crate::Error::new(
                crate::ErrorKind::Io,
                format!("the connect task failed: {e}"),
            )
        })??;
    conn.into_async()
}

/// A [`Listener`] on tokio (feature `tokio`; see [`Listener::into_async`]).
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub struct AsyncListener<S, R> {
    inner: Listener<S, R>,
    reg: conduit_core::transport::sys::reactor::Registration,
    /// Held by one `accept` at a time: the registration wakes only the
    /// last task that polled it (tokio's `AsyncFd` on Unix, one waker
    /// slot per handle on Windows), so a second task parked on it at the
    /// same time could miss its wake-up for good. The others wait here
    /// (in order; a dropped future leaves the queue).
    turn: tokio::sync::Mutex<()>,
}

#[cfg(feature = "tokio")]
impl<S, R> fmt::Debug for AsyncListener<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

/// How often an async accept looks at handshakes in progress: on Unix a
/// client's handshake bytes arrive on its own connection, which the reactor
/// does not watch (only the listening socket); polled only while one is in
/// progress. (On Windows the handshakes run on threads that signal an event
/// the reactor watches; only a listener with `MAX_PENDING` set-ups running
/// polls.)
#[cfg(feature = "tokio")]
const HANDSHAKE_POLL: Duration = Duration::from_millis(2);

#[cfg(feature = "tokio")]
impl<S, R> Listener<S, R>
where
    S: Serialize + 'static,
    R: DeserializeOwned + 'static,
{
    /// This listener on the current tokio runtime. On Unix its listening
    /// socket is watched by tokio's reactor; on Windows the OS thread pool
    /// (`RegisterWaitForSingleObject`, no thread per listener) watches the
    /// event of the `ConnectNamedPipe` the listener keeps in flight and the
    /// event of connections whose set-up finished.
    ///
    /// # Errors
    ///
    /// `Io` outside a tokio runtime, or when the handles cannot be
    /// registered.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let name = format!("conduit-doc-into-async-{}", std::process::id());
    /// let listener = conduit::named::Listener::<u32, u32>::bind(&name)?.into_async()?;
    /// let client = std::thread::spawn(move || {
    ///     let conn = conduit::named::connect::<u32, u32>(&name)?;
    ///     conn.send(&20)?;
    ///     conn.recv()
    /// });
    /// let mut conn = listener.accept().await?;
    /// let x = conn.recv().await?;
    /// conn.send(&(x + 1)).await?;
    /// assert_eq!(client.join().unwrap()?, 21);
    /// # Ok(()) }
    /// ```
    pub fn into_async(self) -> Result<AsyncListener<S, R>> {
        let handles: Vec<_> = self
            .inner
            .wait_handles()
            .into_iter()
            .map(|h| (h, conduit_core::WaitFor::Read))
            .collect();
        let reg = conduit_core::transport::sys::reactor::Registration::new(&handles)
            .map_err(|e| crate::Error::from_io("the async runtime cannot watch the listener", e))?;
        Ok(AsyncListener {
            inner: self,
            reg,
            turn: tokio::sync::Mutex::new(()),
        })
    }
}

#[cfg(feature = "tokio")]
impl<S, R> AsyncListener<S, R>
where
    S: Serialize + 'static,
    R: DeserializeOwned + 'static,
{
    /// Waits for the next client that completes its handshake and returns
    /// the async connection to it. Cancellation-safe: a client whose
    /// handshake is in progress when the future is dropped is kept for the
    /// next `accept`. Concurrent accepts (from several tasks) take turns.
    pub async fn accept(&self) -> Result<crate::AsyncDuplex<S, R>> {
        let _turn = self.turn.lock().await;
        loop {
            match self.inner.accept_deadline(Instant::now()) {
                Ok(conn) => return conn.into_async(),
                Err(e) if e.is_timeout() => {}
                Err(e) => return Err(e),
            }
            if self.inner.inner.handshakes_in_progress() {
                tokio::time::sleep(HANDSHAKE_POLL).await;
                continue;
            }
            std::future::poll_fn(|cx| self.reg.poll_ready(cx))
                .await
                .map_err(|e| crate::Error::from_io("waiting for clients failed", e))?;
        }
    }

    /// The blocking listener back.
    pub fn into_inner(self) -> Listener<S, R> {
        self.inner
    }
}

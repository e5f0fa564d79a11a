//! Windows backend: named pipes, written by hand on `windows-sys`.
//!
//! # How a connection is made
//!
//! A name is the pipe `\\.\pipe\conduit-<user SID>-<name>` (the
//! *rendezvous* pipe). The listener always keeps one instance of it waiting
//! for a client, created with `FILE_FLAG_OVERLAPPED`, with an overlapped
//! `ConnectNamedPipe` in flight whose event `accept` (with its deadline),
//! `conduit::wait` and async listeners wait on (see `server`).
//! When a client connects:
//!
//! 1. the server creates two one-way pipes for this connection only,
//!    `<rendezvous>@<id>-up` (client to server) and `<rendezvous>@<id>-down`
//!    (server to client), `id` being 32 random hex digits, each with
//!    `FILE_FLAG_FIRST_PIPE_INSTANCE` and at most one instance;
//! 2. it sends the client `b"CNDN"`, a version byte (1) and the id over the
//!    rendezvous instance;
//! 3. the client opens both pipes and answers one byte (1); the server then
//!    drops the rendezvous instance, and both sides exchange the conduit
//!    handshake over the two pipes.
//!
//! Each connected client is set up (steps 1 to 3 and the handshake) on a
//! thread of its own, while the listener offers the next instance to the
//! next client (see `server`). The rendezvous traffic uses overlapped I/O
//! with the connection's deadline. The data pipes are synchronous handles, as `conduit-core`'s
//! `OsStream` expects, and they are separate kernel file objects for the two
//! directions: the I/O manager serializes synchronous I/O per file object,
//! so over one duplex pipe handle a receive blocked in `ReadFile` would
//! block every send of the same connection, and a `Duplex` used from two
//! threads would deadlock.
//!
//! # Security
//!
//! Every pipe gets a security descriptor whose owner is the current user's
//! SID and whose protected DACL allows that SID only (SDDL
//! `O:<sid>D:P(A;;GA;;;<sid>)`); `PIPE_REJECT_REMOTE_CLIENTS` rejects
//! clients on other machines. Binding uses `FILE_FLAG_FIRST_PIPE_INSTANCE`,
//! so it fails (`AddrInUse`) rather than joining a pipe that exists already,
//! whoever created it. Before it sends anything, a client checks that the
//! rendezvous pipe's owner is its own SID: a squatter running as another
//! user cannot create a pipe owned by someone else without
//! `SeRestorePrivilege`. The data pipes need no such check: they are created
//! before their names are announced, as the only allowed instance, so no one
//! else can own them. Clients open pipes with
//! `SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION`: a server can learn who
//! a client is, never act as it.
//!
//! # Why not `interprocess` here
//!
//! Its named-pipe listener calls a blocking `ConnectNamedPipe` that no
//! deadline can interrupt (short of its `PIPE_NOWAIT` mode, which makes
//! accept a polling loop), does not let a client check the server's owner,
//! and the two halves of its streams share one synchronous handle — the
//! serialization described above. What it would still give (building the
//! security descriptor from SDDL) is one call here.
//!
//! # Layout
//!
//! This file holds the rendezvous protocol's constants, the checked-call
//! helpers and the pipe names; `security` the user's SID, the user-only
//! security descriptor and the owner check; `overlapped` the overlapped
//! I/O with deadlines used on the rendezvous pipe and the OVERLAPPED of
//! the listener's connect in flight; `server` the listener,
//! its set-up threads and the server's side of the rendezvous; `client` the
//! `connect` side.

use std::io;
use std::os::windows::io::{AsRawHandle, OwnedHandle};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::System::Threading::INFINITE;

use conduit_core::sys::StreamKind;
use conduit_core::Result;

mod client;
mod overlapped;
mod security;
mod server;

pub use client::connect;
pub use server::Listener;

use security::user_sid;

/// Connections run over pipes.
pub const KIND: StreamKind = StreamKind::Pipe;

/// What the server sends first on the rendezvous pipe.
const HELLO_MAGIC: [u8; 4] = *b"CNDN";
/// The rendezvous protocol version.
const HELLO_VERSION: u8 = 1;
/// Hex digits in a connection id.
const ID_LEN: usize = 32;
const HELLO_LEN: usize = HELLO_MAGIC.len() + 1 + ID_LEN;
/// The client's answer once it opened both data pipes.
const ACK: u8 = 1;
/// Buffer size hint of the data pipes (the kernel charges only what is buffered).
const DATA_BUF: u32 = 1 << 20;
/// Buffer size of the rendezvous pipe (a few dozen bytes travel on it).
const RENDEZVOUS_BUF: u32 = 512;

// ---------------------------------------------------------------- helpers

// The workspace's one checked-call helper and handle taker, from core.
use conduit_core::transport::sys::{check, owned};

fn raw(h: &OwnedHandle) -> HANDLE {
    h.as_raw_handle() as HANDLE
}

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

fn is(e: &io::Error, code: u32) -> bool {
    e.raw_os_error() == Some(code as i32)
}

/// Milliseconds until `deadline`, rounded up, below `INFINITE`.
fn millis_until(deadline: Instant) -> u32 {
    let left = deadline.saturating_duration_since(Instant::now());
    let ms = left.as_nanos().div_ceil(1_000_000);
    ms.min(u128::from(INFINITE - 1)) as u32
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------- names

fn pipe_name(sid: &str, name: &str) -> String {
    format!(r"\\.\pipe\conduit-{sid}-{name}")
}

/// Where `name` lives: its rendezvous pipe name.
pub fn endpoint(name: &str) -> Result<String> {
    Ok(pipe_name(&user_sid()?, name))
}

/// 32 hex digits of 128 bits from the OS random generator (getrandom):
/// other processes cannot predict them, and a repeat, which
/// `FILE_FLAG_FIRST_PIPE_INSTANCE` would refuse anyway (the caller then
/// draws again), is beyond likely.
fn random_id() -> io::Result<String> {
    let mut bytes = [0u8; ID_LEN / 2];
    getrandom::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

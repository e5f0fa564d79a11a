//! Handing endpoints to a child process.
//!
//! [`handoff`] turns an endpoint into a [`Package`] per half (OS handles plus a
//! few numbers), gives the handles to exactly one `std::process::Command`, and
//! puts a token describing them into that command's environment under
//! `CONDUIT_HANDOFF_<key>`. In the child, [`adopt_with`] reads the token, takes
//! the handles, and asks a resolver (the facade's transport registry) to rebuild
//! each half.
//!
//! How handles travel is OS-specific (see `sys`):
//!
//! - **Unix.** The endpoint's descriptors are sent at once over a private
//!   socket pair (the *carrier*) with `SCM_RIGHTS`, and the parent closes its
//!   copies immediately. The carrier's child end is not kept by the `Command`
//!   but in a process-wide registry (close-on-exec). In the forked child, the
//!   `pre_exec` hook proves with `fstat` that the descriptor number still is
//!   that socket (device and inode recorded at handoff), clears its
//!   close-on-exec flag and writes one byte into it; a background thread of the
//!   parent (`conduit-handoff`, started by the first handoff, idle in `poll`
//!   otherwise) sees the byte arrive and closes the parent's copies of the
//!   carrier. So the child holds the only reference once it has forked: if it
//!   exits without adopting, the in-flight descriptors are released and the
//!   parent's end sees `Disconnected` promptly, even while the `Command` is
//!   still alive. Dropping a `Command` that was never spawned releases them
//!   too. Spawning the same `Command` a second time fails (`spawn` returns an
//!   `EBADF` or `EALREADY` OS error): the endpoint went to the first child. If
//!   `exec` fails after the fork, the endpoint is lost with that child.
//! - **Windows.** The handles stay non-inheritable and the child duplicates them
//!   out of the parent with `DUPLICATE_CLOSE_SOURCE`, which closes the parent's
//!   copies. Limitation: `std::process::Command` has no hook that runs in or
//!   after `CreateProcessW` (and the handle-list attribute is unstable), so a
//!   child that exits without adopting leaves the handles in the parent until
//!   the parent exits; the parent's end then does not see `Disconnected`.
//!   The same holds for a `Command` dropped without being spawned (it owns
//!   nothing of the handoff there). A `Command` spawned twice gives the token
//!   to both children: the first to adopt gets the endpoint, the other gets an
//!   error. Code that holds the child's process handle avoids the limitation
//!   by pushing instead: `Outgoing` exports an endpoint before the spawn,
//!   `Outgoing::push_to` moves its handles into the child after it
//!   (`DuplicateHandle` into the child with `DUPLICATE_CLOSE_SOURCE`, as
//!   Python's multiprocessing does) and gives a token to send to the child
//!   over a channel, and `adopt_pushed` takes them there. A child that
//!   exits without adopting closes them with its handle table. This is how
//!   `conduit::Process` hands over the endpoints inside its arguments.
//!
//! A token is bound to what it hands over: on Unix it records the carrier
//! socket's device and inode numbers, checked with `fstat` before the
//! descriptor is taken; on Windows `adopt` checks that the token's process is
//! this process's parent (and was created before it) before duplicating
//! anything. A stale token (inherited by a grandchild, or copied) is refused
//! with a clear error, never followed, and `adopt` removes the variable from
//! the environment once it has taken the token.
//!
//! Token format (one line, `;`-separated):
//! `conduit1;<role>;<os part>;<half>[;<half>]` where a half is
//! `<transport>,<number of handles>,<meta>...` and meta values are decimal `u64`s.
//! The OS part is `fd=<number>:<st_dev>:<st_ino>` (Unix),
//! `pid=<parent pid>:<handle>...` (Windows), `own=<handle>...` (Windows,
//! pushed: values in the child's own handle table; never accepted from the
//! environment) or `none`.

use std::collections::HashSet;
use std::process::Command;
use std::sync::Mutex;

use crate::channel::{FrameReceiver, FrameSender};
use crate::error::{Error, Result};
use crate::sys;

pub use crate::sys::OsHandle;

/// One half of an endpoint, ready to cross into another process.
#[derive(Debug)]
pub struct Package {
    /// The transport's name, used by the child to find the import function.
    pub transport: String,
    /// OS handles the half is made of.
    pub handles: Vec<OsHandle>,
    /// Transport-defined numbers (frame config, handshake state, ...).
    pub meta: Vec<u64>,
}

/// What an endpoint is, as seen from the side that holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends only.
    Sender,
    /// Receives only.
    Receiver,
    /// Sends and receives.
    Duplex,
}

impl Role {
    /// `"sender"`, `"receiver"` or `"duplex"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Sender => "sender",
            Role::Receiver => "receiver",
            Role::Duplex => "duplex",
        }
    }

    /// The role named by [`Role::as_str`].
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "sender" => Role::Sender,
            "receiver" => Role::Receiver,
            "duplex" => Role::Duplex,
            _ => return None,
        })
    }
}

/// The byte-level halves of an endpoint: a sender, a receiver, or both.
pub type Halves = (Option<Box<dyn FrameSender>>, Option<Box<dyn FrameReceiver>>);

/// Seals [`Endpoint`]: only conduit's own endpoint types implement it (the
/// module is public, hidden, for conduit's other crates, e.g. the queue).
#[doc(hidden)]
pub mod sealed {
    /// The seal.
    pub trait Sealed {}
}

/// An endpoint that can be handed to a child: its byte-level halves.
///
/// Implemented by the typed [`crate::Sender`], [`crate::Receiver`] and
/// [`crate::Duplex`]; sealed (conduit's handoff relies on what these types
/// do with their halves).
pub trait Endpoint: Sized + sealed::Sealed {
    /// Which halves the endpoint has.
    const ROLE: Role;
    /// Takes the endpoint apart into its byte-level halves.
    fn into_halves(self) -> Halves;
    /// Builds the endpoint from byte-level halves matching [`Self::ROLE`].
    fn from_halves(
        tx: Option<Box<dyn FrameSender>>,
        rx: Option<Box<dyn FrameReceiver>>,
    ) -> Result<Self>;
}

/// Rebuilds a byte-level half from a package: implemented by the facade's
/// transport registry.
pub trait Resolver {
    /// Fails (typically with `Unsupported`) when `transport` cannot be rebuilt
    /// in this process; called before any handle is taken.
    fn check(&self, transport: &str) -> Result<()>;
    /// Rebuilds a sending half.
    fn sender(&self, package: Package) -> Result<Box<dyn FrameSender>>;
    /// Rebuilds a receiving half.
    fn receiver(&self, package: Package) -> Result<Box<dyn FrameReceiver>>;
}

const TOKEN_VERSION: &str = "conduit1";

/// The environment variable that carries the token for `key`.
pub fn env_var(key: &str) -> String {
    format!("CONDUIT_HANDOFF_{key}")
}

fn check_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.len() <= 64
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_input(format!(
            "handoff key {key:?} is not valid: use 1 to 64 ASCII letters, digits or '_'"
        )))
    }
}

/// Hands `endpoint` to the child that `cmd` will spawn, under `key`.
///
/// Only that child receives the endpoint's handles; the parent's copies are
/// closed (Unix: now; Windows: when the child adopts), so the parent sees the
/// peer disconnect when the child exits.
pub fn handoff<E: Endpoint>(cmd: &mut Command, key: &str, endpoint: E) -> Result<()> {
    handoff_halves(cmd, key, E::ROLE, endpoint.into_halves())
}

/// [`handoff`] of an endpoint already taken apart into its halves (which
/// must match `role`).
pub fn handoff_halves(cmd: &mut Command, key: &str, role: Role, halves: Halves) -> Result<()> {
    check_key(key)?;
    let (halves, handles) = pack(&format!("under key {key:?}"), role, halves)?;
    let os_part = if handles.is_empty() {
        "none".to_string()
    } else {
        sys::send_handles(cmd, handles)?
    };
    let token = format!("{TOKEN_VERSION};{};{os_part}{halves}", role.as_str());
    cmd.env(env_var(key), token);
    Ok(())
}

/// Exports the halves: the token's halves part and the handles of all halves.
fn pack(what: &str, role: Role, halves: Halves) -> Result<(String, Vec<OsHandle>)> {
    let (tx, rx) = halves;
    let expected = match role {
        Role::Sender => (true, false),
        Role::Receiver => (false, true),
        Role::Duplex => (true, true),
    };
    if (tx.is_some(), rx.is_some()) != expected {
        return Err(Error::invalid_input(format!(
            "the halves handed {what} do not make a {}",
            role.as_str()
        )));
    }
    let mut packages = Vec::new();
    if let Some(tx) = tx {
        packages.push(tx.export()?);
    }
    if let Some(rx) = rx {
        packages.push(rx.export()?);
    }
    let mut halves = String::new();
    let mut handles = Vec::new();
    for p in packages {
        halves.push(';');
        halves.push_str(&p.transport);
        halves.push_str(&format!(",{}", p.handles.len()));
        for m in &p.meta {
            halves.push_str(&format!(",{m}"));
        }
        handles.extend(p.handles);
    }
    Ok((halves, handles))
}

/// Windows: an endpoint exported for a child that is not spawned yet, to be
/// moved into it with [`Outgoing::push_to`] once it is (the way of
/// `conduit::Process`, which knows its child's process handle; bare
/// [`handoff`] to a `Command` cannot, see the module docs).
///
/// Dropped without being pushed, it closes the handles, so the peer of the
/// endpoint sees `Disconnected`.
#[cfg(windows)]
#[derive(Debug)]
pub struct Outgoing {
    role: Role,
    halves: String,
    handles: Vec<OsHandle>,
}

#[cfg(windows)]
impl Outgoing {
    /// Takes the halves of an endpoint of `role` apart for a child that will
    /// be spawned later.
    pub fn new(role: Role, halves: Halves) -> Result<Outgoing> {
        let (halves, handles) = pack("for a child", role, halves)?;
        Ok(Outgoing {
            role,
            halves,
            handles,
        })
    }

    /// Moves the handles into the process `child` (duplicated into it with
    /// `DUPLICATE_CLOSE_SOURCE`, so this process keeps no copy whatever
    /// happens) and returns the token that `child` passes to
    /// [`adopt_pushed`]. Send it over a channel only that child can read.
    ///
    /// A child that exits without adopting closes the handles with its
    /// handle table: the parent's end of the endpoint sees `Disconnected`.
    ///
    /// # Errors
    ///
    /// `Io` when a handle cannot be moved (typically: the child has exited
    /// already); the handles are closed in this process anyway.
    pub fn push_to(self, child: std::os::windows::io::BorrowedHandle<'_>) -> Result<String> {
        let os_part = if self.handles.is_empty() {
            "none".to_string()
        } else {
            sys::send_handles_to(child, self.handles)?
        };
        Ok(format!(
            "{TOKEN_VERSION};{};{os_part}{}",
            self.role.as_str(),
            self.halves
        ))
    }
}

/// What this process adopted: keys, and the handle parts of their tokens (so
/// that a copy of a token under another key is refused too).
static ADOPTED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// `origin` says where the token was found ("in CONDUIT_HANDOFF_x").
fn malformed(origin: &str, why: &str) -> Error {
    Error::invalid_input(format!(
        "malformed handoff token {origin}: {why}; it must be set by conduit::handoff in the parent"
    ))
}

fn adopted() -> std::sync::MutexGuard<'static, Option<HashSet<String>>> {
    ADOPTED.lock().unwrap_or_else(|p| p.into_inner())
}

/// A parsed handoff token (see the module docs for the format).
#[doc(hidden)]
#[derive(Debug)]
pub struct Token {
    /// The role the parent handed.
    pub role: Role,
    /// The OS-specific handle part (`none` when there are no handles).
    pub os_part: String,
    /// Per half: transport name, number of handles, transport parameters.
    pub halves: Vec<(String, u64, Vec<u64>)>,
    /// The number of handles of all halves (at most 16).
    pub total: u64,
}

/// The most handles one token may announce.
const MAX_HANDLES: u64 = 16;

/// Parses and checks the token found under `key` (for error messages); no
/// handle is touched. Hidden: public for the fuzz target.
#[doc(hidden)]
pub fn parse_token(key: &str, token: &str) -> Result<Token> {
    parse_token_from(&format!("in {}", env_var(key)), token)
}

/// [`parse_token`] of a token found where `origin` says.
fn parse_token_from(origin: &str, token: &str) -> Result<Token> {
    let mut fields = token.split(';');
    if fields.next() != Some(TOKEN_VERSION) {
        return Err(malformed(
            origin,
            "unknown token version (parent and child built with different conduit versions?)",
        ));
    }
    let role = fields
        .next()
        .and_then(Role::parse)
        .ok_or_else(|| malformed(origin, "bad role"))?;
    let os_part = fields
        .next()
        .ok_or_else(|| malformed(origin, "missing handle part"))?
        .to_string();
    let mut halves = Vec::new();
    let mut total = 0u64;
    for half in fields {
        let mut items = half.split(',');
        let transport = items
            .next()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| malformed(origin, "empty transport"))?;
        let nums: Vec<u64> = items
            .map(|s| s.parse::<u64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| malformed(origin, "non-numeric parameter"))?;
        let (&count, meta) = nums
            .split_first()
            .ok_or_else(|| malformed(origin, "missing handle count"))?;
        // Checked per half, so that the sum cannot overflow.
        total = total
            .checked_add(count)
            .filter(|t| *t <= MAX_HANDLES)
            .ok_or_else(|| malformed(origin, "too many handles"))?;
        halves.push((transport.to_string(), count, meta.to_vec()));
    }
    let expected = if role == Role::Duplex { 2 } else { 1 };
    if halves.len() != expected {
        return Err(malformed(origin, "wrong number of halves for the role"));
    }
    Ok(Token {
        role,
        os_part,
        halves,
        total,
    })
}

/// Adopts the endpoint the parent handed to this process under `key`, using
/// `resolver` to rebuild each half.
///
/// A key can be adopted once per process; the token's handles are owned by the
/// endpoint afterwards. Once the token is taken (from the first attempt that
/// gets as far as the handles, even if it then fails), its variable is
/// removed from this process's environment with `std::env::remove_var`, so
/// that children spawned later do not inherit a stale token. Like any
/// `remove_var`, that races with other threads reading the environment
/// through C (`getenv`): adopt early in `main`, before starting such threads.
///
/// A stale token, inherited from an ancestor or copied, is refused without
/// touching any handle and without waiting: `InvalidInput` when the handles it
/// names provably are not the ones handed to this process (Unix: the carrier
/// descriptor's device and inode numbers; Windows: the token's process is not
/// this process's parent), `Disconnected` when another process has taken them.
pub fn adopt_with<E: Endpoint>(key: &str, resolver: &dyn Resolver) -> Result<E> {
    let (tx, rx) = adopt_halves(key, E::ROLE, resolver)?;
    E::from_halves(tx, rx)
}

/// [`adopt_with`] that returns the byte-level halves of an endpoint of
/// `role` instead of a typed endpoint.
pub fn adopt_halves(key: &str, expected_role: Role, resolver: &dyn Resolver) -> Result<Halves> {
    check_key(key)?;
    let var = env_var(key);
    if adopted()
        .as_ref()
        .is_some_and(|set| set.contains(&format!("key:{key}")))
    {
        return Err(Error::invalid_input(format!(
            "the endpoint handed under key {key:?} was already adopted by this process"
        )));
    }
    let token = std::env::var(&var).map_err(|_| {
        Error::invalid_input(format!(
            "no endpoint was handed to this process under key {key:?} ({var} is not set); \
             spawn it with conduit::handoff(&mut cmd, {key:?}, endpoint)"
        ))
    })?;
    let Token {
        role,
        os_part,
        halves,
        total,
    } = parse_token(key, &token)?;
    if role != expected_role {
        return Err(Error::invalid_input(format!(
            "the parent handed a {} under key {key:?} but this process adopts it as a {}",
            role.as_str(),
            expected_role.as_str()
        )));
    }
    let os_part = os_part.as_str();
    for (transport, _, _) in &halves {
        resolver.check(transport)?;
    }
    {
        let mut adopted = adopted();
        let set = adopted.get_or_insert_with(HashSet::new);
        if !set.insert(format!("key:{key}")) {
            return Err(Error::invalid_input(format!(
                "the endpoint handed under key {key:?} was already adopted by this process"
            )));
        }
        if os_part != "none" && !set.insert(format!("handles:{os_part}")) {
            std::env::remove_var(&var);
            return Err(Error::invalid_input(format!(
                "stale handoff token in {var}: this process already adopted the endpoint \
                 it describes (under another key); a token can be adopted once"
            )));
        }
    }
    // The token is spent: children spawned from now on must not inherit it.
    std::env::remove_var(&var);
    let handles = if total == 0 && os_part == "none" {
        Vec::new()
    } else {
        sys::receive_handles(os_part, total as usize).map_err(|e| {
            Error::new(
                e.kind(),
                format!("cannot adopt the endpoint in {var}: {}", e.message()),
            )
        })?
    };
    rebuild(role, halves, handles, resolver)
}

/// Rebuilds the halves of an endpoint of `role` from the token's halves and
/// the handles taken for it.
fn rebuild(
    role: Role,
    halves: Vec<(String, u64, Vec<u64>)>,
    handles: Vec<OsHandle>,
    resolver: &dyn Resolver,
) -> Result<Halves> {
    let mut handles = handles.into_iter();
    let mut packages = halves.into_iter().map(|(transport, count, meta)| Package {
        transport,
        handles: handles.by_ref().take(count as usize).collect(),
        meta,
    });
    let (tx, rx) = match role {
        Role::Sender => (
            packages.next().map(|p| resolver.sender(p)).transpose()?,
            None,
        ),
        Role::Receiver => (
            None,
            packages.next().map(|p| resolver.receiver(p)).transpose()?,
        ),
        Role::Duplex => {
            let tx = packages.next().map(|p| resolver.sender(p)).transpose()?;
            let rx = packages.next().map(|p| resolver.receiver(p)).transpose()?;
            (tx, rx)
        }
    };
    Ok((tx, rx))
}

/// Windows: adopts an endpoint of `expected_role` that the parent moved
/// into this process with [`Outgoing::push_to`], from the token that call
/// returned (named `what` in errors), using `resolver` to rebuild each
/// half.
///
/// # Safety
///
/// `token` must be the one the parent's [`Outgoing::push_to`] returned for
/// this very process, received over a channel only the parent can write
/// to, and adopted once: the handle values it names are taken as owned,
/// and must be owned by nothing else in this process. (Values that are not
/// distinct open handles are refused, and a token is refused the second
/// time, but a value can be open and owned by something else.)
#[cfg(windows)]
#[allow(unsafe_code)]
pub unsafe fn adopt_pushed(
    what: &str,
    token: &str,
    expected_role: Role,
    resolver: &dyn Resolver,
) -> Result<Halves> {
    let Token {
        role,
        os_part,
        halves,
        total,
    } = parse_token_from(&format!("for {what}"), token)?;
    if role != expected_role {
        return Err(Error::invalid_input(format!(
            "the parent handed a {} as {what} but this process adopts it as a {}",
            role.as_str(),
            expected_role.as_str()
        )));
    }
    for (transport, _, _) in &halves {
        resolver.check(transport)?;
    }
    let handles = if total == 0 && os_part == "none" {
        Vec::new()
    } else {
        let mut adopted = adopted();
        if !adopted
            .get_or_insert_with(HashSet::new)
            .insert(format!("pushed:{os_part}"))
        {
            return Err(Error::invalid_input(format!(
                "{what}: this process already adopted the endpoint this token describes"
            )));
        }
        drop(adopted);
        // SAFETY: the token comes from the parent's push into this process
        // and is adopted once (the caller's contract, and checked above).
        unsafe { sys::take_own_handles(&os_part, total as usize) }
            .map_err(|e| Error::new(e.kind(), format!("cannot adopt {what}: {}", e.message())))?
    };
    rebuild(role, halves, handles, resolver)
}

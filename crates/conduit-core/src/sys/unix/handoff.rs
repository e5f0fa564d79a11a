//! Handing descriptors to a child on Unix: `SCM_RIGHTS` over a private
//! socket pair (the *carrier*), whose parent copy a watcher thread closes as
//! soon as the child is forked (see the `carrier` module below).

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
};

use super::{retry, set_cloexec, socketpair, SEND_FLAGS};
use crate::error::{Error, Result};

/// Makes the handles travel to the child `cmd` will spawn; returns the token's
/// handle part, `fd=<carrier descriptor number>:<st_dev>:<st_ino>`: the
/// carrier's number in the child and its identity, which binds the token to
/// that socket (see [`receive_handles`]).
///
/// The descriptors are sent at once with `SCM_RIGHTS` into a fresh socket pair
/// (the *carrier*) and the parent's copies are dropped. The carrier's child
/// end is the only descriptor the child inherits; it stays close-on-exec in
/// the parent and is kept in the registry of the `carrier` module, not in the
/// `Command`, so that it does not outlive the `fork`: see that module for how.
pub fn send_handles(cmd: &mut Command, handles: Vec<OwnedFd>) -> Result<String> {
    let (ours, theirs) =
        socketpair().map_err(|e| Error::from_io("cannot create the handoff socket pair", e))?;
    let borrowed: Vec<BorrowedFd<'_>> = handles.iter().map(|h| h.as_fd()).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(16))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if borrowed.len() > 16 || !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(Error::invalid_input("too many handles for one handoff"));
    }
    let count = [borrowed.len() as u8];
    retry(|| rustix::net::sendmsg(&ours, &[IoSlice::new(&count)], &mut control, SEND_FLAGS))
        .map_err(|e| Error::from_io("cannot pass descriptors to the handoff socket", e))?;
    drop(handles);
    let claim = carrier::register(ours, theirs)?;
    let part = claim.token_part();
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: `Claim::run` makes only fstat,
    // recv, fcntl and send calls on plain descriptor numbers, allocates
    // nothing and takes no lock (see its comments). The `Claim` value it
    // owns is only read there; its `Drop` runs in the parent, when the
    // `Command` is dropped.
    unsafe {
        cmd.pre_exec(move || claim.run());
    }
    Ok(part)
}

/// The parent's side of the carriers: the child end of every carrier whose
/// `Command` has not forked yet, and a watcher thread that closes it once it
/// has.
///
/// `std::process::Command` offers no hook after `spawn`, and a descriptor owned
/// by the `pre_exec` closure lives as long as the `Command`: the endpoint's
/// in-flight descriptors (queued in the carrier) would stay alive after the
/// child died, and the parent's end of the endpoint would never see the peer
/// disconnect. So the parent's copy of the carrier's child end lives here:
///
/// 1. `register` keeps both carrier ends (close-on-exec) under a fresh id and
///    records their device and inode numbers; the `pre_exec` closure owns a
///    [`Claim`] with the raw numbers and identities only.
/// 2. In the forked child, [`Claim::run`] proves with `fstat` that both
///    numbers still are those sockets (a number it cannot prove is never
///    touched), fails if a byte from an earlier child is already waiting
///    (the same `Command` spawned twice), clears close-on-exec on the child
///    end and writes one byte into it.
/// 3. The byte arrives on the parent's end; the watcher thread (started with
///    the first handoff, then idle in `poll` at no CPU cost) sees it and
///    closes the parent's copies of both ends. From then on the child holds
///    the only reference to the carrier: when it exits without adopting, the
///    in-flight descriptors are released and the parent's end of the endpoint
///    sees `Disconnected`.
/// 4. Dropping the `Command` drops the `Claim`, which removes the entry if it
///    is still there (never spawned) and wakes the watcher.
mod carrier {
    use std::io;
    use std::os::fd::{AsRawFd, OwnedFd, RawFd};
    use std::sync::{Arc, Mutex, MutexGuard};

    use rustix::event::{PollFd, PollFlags};
    use rustix::io::Errno;

    use crate::error::{Error, Result};

    /// A socket's identity: device and inode numbers. Two sockets never share
    /// it while both exist.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Identity {
        dev: u64,
        ino: u64,
    }

    impl Identity {
        /// The identity of the socket open at `raw`, or `None` when `raw` is
        /// not an open socket. Safe to call on any number, in a forked child
        /// too (one `fstat`, no allocation).
        #[allow(clippy::unnecessary_cast)] // the field types differ by OS
        pub fn of_raw(raw: RawFd) -> Option<Identity> {
            let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
            // SAFETY: fstat writes a `struct stat` into the buffer we pass and
            // touches nothing else; on an unopened number it fails with
            // EBADF. It is async-signal-safe.
            let rc = unsafe { libc::fstat(raw, st.as_mut_ptr()) };
            if rc != 0 {
                return None;
            }
            // SAFETY: fstat succeeded, so it filled the buffer.
            let st = unsafe { st.assume_init() };
            if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
                return None;
            }
            Some(Identity {
                dev: st.st_dev as u64,
                ino: st.st_ino as u64,
            })
        }

        /// The identity of an open socket.
        pub fn of(fd: &OwnedFd) -> io::Result<Identity> {
            Identity::of_raw(fd.as_raw_fd())
                .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
        }

        /// As `dev:ino`, for the token.
        pub fn to_token(self) -> String {
            format!("{}:{}", self.dev, self.ino)
        }

        /// Parses [`Identity::to_token`]'s output.
        pub fn from_token(s: &str) -> Option<Identity> {
            let (dev, ino) = s.split_once(':')?;
            Some(Identity {
                dev: dev.parse().ok()?,
                ino: ino.parse().ok()?,
            })
        }
    }

    struct Entry {
        id: u64,
        /// The carrier's child end: what the child inherits (kept open only).
        _theirs: OwnedFd,
        /// The parent's end, shared with the watcher while it polls it.
        ours: Arc<OwnedFd>,
    }

    struct Registry {
        entries: Vec<Entry>,
        next_id: u64,
        /// The write end of the watcher's wake pipe; `None` while no watcher
        /// runs.
        wake: Option<OwnedFd>,
    }

    static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
        entries: Vec::new(),
        next_id: 0,
        wake: None,
    });

    fn registry() -> MutexGuard<'static, Registry> {
        // The registry stays consistent whatever panicked while holding it:
        // every change is a single push or retain.
        REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(r: &Registry) {
        if let Some(w) = &r.wake {
            // Non-blocking: a full pipe already holds a pending wake-up.
            let _ = rustix::io::write(w, &[1]);
        }
    }

    /// Keeps a carrier's two ends until the child has forked (or the
    /// `Command` is dropped); returns what the `pre_exec` closure needs.
    pub fn register(ours: OwnedFd, theirs: OwnedFd) -> Result<Claim> {
        let id_err = |e| Error::from_io("cannot inspect the handoff socket pair", e);
        let ours_id = Identity::of(&ours).map_err(id_err)?;
        let theirs_id = Identity::of(&theirs).map_err(id_err)?;
        let mut r = registry();
        if r.wake.is_none() {
            r.wake = Some(start_watcher()?);
        }
        let id = r.next_id;
        r.next_id += 1;
        let claim = Claim {
            id,
            ours_raw: ours.as_raw_fd(),
            ours_id,
            theirs_raw: theirs.as_raw_fd(),
            theirs_id,
        };
        r.entries.push(Entry {
            id,
            _theirs: theirs,
            ours: Arc::new(ours),
        });
        wake(&r);
        Ok(claim)
    }

    fn start_watcher() -> Result<OwnedFd> {
        let (read, write) = crate::sys::pipe()
            .map_err(|e| Error::from_io("cannot create the handoff watcher's pipe", e))?;
        let nonblocking = |fd: &OwnedFd| {
            rustix::io::ioctl_fionbio(fd, true)
                .map_err(|e| Error::from_io("cannot set up the handoff watcher's pipe", e.into()))
        };
        nonblocking(&read)?;
        nonblocking(&write)?;
        std::thread::Builder::new()
            .name("conduit-handoff".into())
            .spawn(move || watch(read))
            .map_err(|e| Error::from_io("cannot start the handoff watcher thread", e))?;
        Ok(write)
    }

    /// The watcher: waits for a byte on any registered parent end (a child
    /// forked and claimed its carrier) and then drops that entry, closing the
    /// parent's copies. Idle in `poll` while nothing happens.
    fn watch(wake_read: OwnedFd) {
        loop {
            let snapshot: Vec<(u64, Arc<OwnedFd>)> = registry()
                .entries
                .iter()
                .map(|e| (e.id, e.ours.clone()))
                .collect();
            let mut fds = Vec::with_capacity(snapshot.len() + 1);
            fds.push(PollFd::new(&wake_read, PollFlags::IN));
            for (_, ours) in &snapshot {
                fds.push(PollFd::new(&**ours, PollFlags::IN));
            }
            match rustix::event::poll(&mut fds, None) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(_) => {
                    // Cannot watch: stop, and let the next handoff start a new
                    // watcher. The entries stay until their `Command` is
                    // dropped, as without a watcher.
                    registry().wake = None;
                    return;
                }
            }
            let ready: Vec<u64> = fds[1..]
                .iter()
                .zip(&snapshot)
                .filter(|(fd, _)| !fd.revents().is_empty())
                .map(|(_, (id, _))| *id)
                .collect();
            drop(fds);
            let mut buf = [0u8; 64];
            while let Ok(n) = rustix::io::read(&wake_read, &mut buf) {
                if n == 0 {
                    break;
                }
            }
            if !ready.is_empty() {
                registry().entries.retain(|e| !ready.contains(&e.id));
            }
            // The last clone of a removed entry's parent end closes here.
            drop(snapshot);
        }
    }

    /// What the `pre_exec` closure owns: the carrier's descriptor numbers and
    /// identities. Dropping it (with the `Command`) releases the carrier if no
    /// child has claimed it.
    #[derive(Debug)]
    pub struct Claim {
        id: u64,
        ours_raw: RawFd,
        ours_id: Identity,
        theirs_raw: RawFd,
        theirs_id: Identity,
    }

    impl Claim {
        /// The token's handle part: the child end's number and identity.
        pub fn token_part(&self) -> String {
            format!("fd={}:{}", self.theirs_raw, self.theirs_id.to_token())
        }

        /// Runs in the forked child, before exec: async-signal-safe calls only,
        /// no allocation, no lock (another thread may have held the registry
        /// or the allocator's lock at the fork).
        ///
        /// Fails with `EBADF` when a descriptor number is no longer the carrier
        /// (the carrier went to an earlier child of this `Command`, and the
        /// number may now be anything) and with `EALREADY` when an earlier
        /// child of this `Command` has claimed it but the watcher has not
        /// closed it yet: `spawn` then returns that error.
        pub fn run(&self) -> io::Result<()> {
            if Identity::of_raw(self.theirs_raw) != Some(self.theirs_id)
                || Identity::of_raw(self.ours_raw) != Some(self.ours_id)
            {
                return Err(io::Error::from_raw_os_error(libc::EBADF));
            }
            let mut byte = [0u8; 1];
            // SAFETY: `ours_raw` was just proven to be the carrier's parent
            // end (an open socket with the recorded identity); recv writes at
            // most one byte into `byte`. MSG_PEEK leaves the byte there for
            // the watcher; MSG_DONTWAIT: never block.
            let peeked = unsafe {
                libc::recv(
                    self.ours_raw,
                    byte.as_mut_ptr().cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            if peeked > 0 {
                return Err(io::Error::from_raw_os_error(libc::EALREADY));
            }
            // SAFETY: `theirs_raw` was proven to be the carrier's child end;
            // clearing close-on-exec affects only this forked child's table.
            if unsafe { libc::fcntl(self.theirs_raw, libc::F_SETFD, 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
            #[cfg(any(target_os = "linux", target_os = "android"))]
            let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
            // macOS: the carrier has SO_NOSIGPIPE (see `socketpair`).
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            let flags = libc::MSG_DONTWAIT;
            // SAFETY: as above; send reads one byte from `byte`.
            let sent = unsafe { libc::send(self.theirs_raw, byte.as_ptr().cast(), 1, flags) };
            if sent != 1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
    }

    impl Drop for Claim {
        fn drop(&mut self) {
            let mut r = registry();
            let before = r.entries.len();
            r.entries.retain(|e| e.id != self.id);
            if r.entries.len() != before {
                wake(&r);
            }
        }
    }
}

/// Takes the handles announced by a token's handle part.
///
/// The token names a descriptor number, which means nothing by itself: the
/// variable may have been inherited from an ancestor or copied, and the number
/// may now be any descriptor of this process. So the descriptor is taken only
/// if `fstat` proves it is the very socket the parent made for this handoff
/// (the device and inode numbers recorded in the token); otherwise the token is
/// stale (`InvalidInput`), and nothing is touched. The descriptors are
/// received without waiting: the parent queued them before the fork, so an
/// empty carrier means another process took them (`Disconnected`).
pub fn receive_handles(part: &str, count: usize) -> Result<Vec<OwnedFd>> {
    let (raw, id) = part
        .strip_prefix("fd=")
        .and_then(|rest| rest.split_once(':'))
        .and_then(|(n, id)| Some((n.parse::<RawFd>().ok()?, carrier::Identity::from_token(id)?)))
        .filter(|(n, _)| *n >= 0)
        .ok_or_else(|| {
            Error::invalid_input(
                "malformed descriptor part (parent and child built with different conduit versions?)",
            )
        })?;
    if carrier::Identity::of_raw(raw) != Some(id) {
        return Err(Error::invalid_input(format!(
            "stale handoff token: descriptor {raw} is not the carrier socket conduit::handoff \
             made for this process (was the variable inherited from an ancestor or copied?); \
             a process can adopt only what its own parent handed to it, once"
        )));
    }
    // SAFETY: `raw` is open and is the socket with the identity recorded by the
    // parent for this handoff (device and inode numbers name one socket while
    // it exists): the carrier's child end, inherited by this process. Nothing
    // else in this process owns it: conduit is the only code that knows the
    // carrier, and `adopt_with` takes each token at most once per process.
    let carrier = unsafe { OwnedFd::from_raw_fd(raw) };
    set_cloexec(&carrier).map_err(|e| Error::from_io("cannot set close-on-exec", e))?;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(16))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let flags = RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let flags = RecvFlags::DONTWAIT;
    let taken = || {
        Error::disconnected(
            "the handed descriptors were already taken by another process \
             (the handoff token is stale: inherited or copied from the process that adopted it)",
        )
    };
    let got = match retry(|| {
        rustix::net::recvmsg(
            &carrier,
            &mut [IoSliceMut::new(&mut byte)],
            &mut control,
            flags,
        )
    }) {
        Ok(got) => got,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(taken()),
        Err(e) => return Err(Error::from_io("cannot receive the handed descriptors", e)),
    };
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = msg {
            fds.extend(rights);
        }
    }
    if got.bytes == 0 && fds.is_empty() {
        return Err(taken());
    }
    if got.bytes != 1 || fds.len() != count || byte[0] as usize != count {
        return Err(Error::protocol(format!(
            "expected {count} handed descriptors, received {}",
            fds.len()
        )));
    }
    for fd in &fds {
        set_cloexec(fd).map_err(|e| Error::from_io("cannot set close-on-exec", e))?;
    }
    Ok(fds)
}

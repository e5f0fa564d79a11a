//! Connecting the parent and its re-executed child over one transport: an
//! anonymous pair handed over with `conduit::handoff`, or a named listener
//! with a random name that the child connects to.

use std::{
    env,
    process::{Child, Command, Stdio},
    time::Duration,
};

use conduit::{Duplex, Receiver, Sender, Transport};
use serde::{de::DeserializeOwned, Serialize};

/// The child's role (the child runs [`crate::child::main`]).
pub const ROLE_ENV: &str = "CONDUIT_RELIABILITY_CHILD";
/// The named endpoint the child connects to (named transport only).
pub const NAME_ENV: &str = "CONDUIT_RELIABILITY_NAME";
/// The handoff key.
const KEY: &str = "conn";
/// How long a child's `connect` and the parent's `accept` may take.
const CONNECT: Duration = Duration::from_secs(20);

/// A transport under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// An anonymous pair (pipe, socketpair, shm) handed to the child.
    Anon(Transport),
    /// A named listener the child connects to.
    Named,
}

impl Link {
    /// The name printed in tables and accepted by `--transport`.
    pub fn name(self) -> &'static str {
        match self {
            Link::Anon(t) => t.name(),
            Link::Named => "named",
        }
    }
}

/// Every transport, or the one `--transport` names.
pub fn select(only: Option<&str>) -> Result<Vec<Link>, String> {
    let mut all: Vec<Link> = Transport::enabled().into_iter().map(Link::Anon).collect();
    all.push(Link::Named);
    match only {
        None => Ok(all),
        Some(name) => all
            .into_iter()
            .find(|l| l.name() == name)
            .map(|l| vec![l])
            .ok_or_else(|| format!("unknown transport {name:?} (pipe, socketpair, shm or named)")),
    }
}

/// A random endpoint name for the named transport.
pub fn random_name(what: &str) -> String {
    format!(
        "rel-{what}-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    )
}

/// The command that runs this binary as a child in `role`.
pub fn command(role: &str) -> Result<Command, String> {
    let exe = env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.env(ROLE_ENV, role).stdin(Stdio::null());
    Ok(cmd)
}

/// Spawns `cmd` connected to the parent by a duplex connection; returns the
/// child and the parent's end.
pub fn spawn_duplex<T>(link: Link, mut cmd: Command) -> Result<(Child, Duplex<T, T>), String>
where
    T: Serialize + DeserializeOwned + 'static,
{
    match link {
        Link::Anon(t) => {
            let (a, b) = t
                .duplex::<T, T>()
                .map_err(|e| format!("{}: duplex: {e}", t.name()))?;
            conduit::handoff(&mut cmd, KEY, b).map_err(|e| format!("handoff: {e}"))?;
            let child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
            Ok((child, a))
        }
        Link::Named => {
            let name = random_name("d");
            let listener = conduit::named::Listener::<T, T>::bind(&name)
                .map_err(|e| format!("named: bind: {e}"))?;
            cmd.env(NAME_ENV, &name);
            let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
            match listener.accept_timeout(CONNECT) {
                Ok(conn) => Ok((child, conn)),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    Err(format!("named: accept: {e}"))
                }
            }
        }
    }
}

/// Spawns `cmd` as the receiving end of a one-way channel (for the named
/// transport, of a connection whose other direction stays unused).
pub fn spawn_receiver<T>(link: Link, mut cmd: Command) -> Result<(Child, Sender<T>), String>
where
    T: Serialize + DeserializeOwned + 'static,
{
    match link {
        Link::Anon(t) => {
            let (tx, rx) = t
                .channel::<T>()
                .map_err(|e| format!("{}: channel: {e}", t.name()))?;
            conduit::handoff(&mut cmd, KEY, rx).map_err(|e| format!("handoff: {e}"))?;
            let child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
            Ok((child, tx))
        }
        Link::Named => {
            let (child, conn) = spawn_duplex::<T>(link, cmd)?;
            Ok((child, conn.split().0))
        }
    }
}

/// The child's duplex end, whichever way the parent made it.
pub fn child_duplex<T>() -> conduit::Result<Duplex<T, T>>
where
    T: Serialize + DeserializeOwned + 'static,
{
    match env::var(NAME_ENV) {
        Ok(name) => conduit::named::connect_timeout::<T, T>(&name, CONNECT),
        Err(_) => conduit::adopt(KEY),
    }
}

/// The child's receiving end of a one-way channel.
pub fn child_receiver<T>() -> conduit::Result<Receiver<T>>
where
    T: Serialize + DeserializeOwned + 'static,
{
    match env::var(NAME_ENV) {
        Ok(name) => Ok(conduit::named::connect_timeout::<T, T>(&name, CONNECT)?
            .split()
            .1),
        Err(_) => conduit::adopt(KEY),
    }
}

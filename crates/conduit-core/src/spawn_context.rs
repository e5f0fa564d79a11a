//! Endpoints inside the arguments of `conduit::Process::spawn`.
//!
//! [`Sender`], [`Receiver`] and [`Duplex`] implement `Serialize` and
//! `Deserialize`, but only inside a *spawn context*:
//!
//! - [`export_scope`] (parent): serializing an endpoint **moves** its
//!   byte-level halves into the context (the endpoint left behind fails every
//!   call with `Disconnected`) and writes the endpoint's index. The caller
//!   hands each collected endpoint to the child with
//!   `handoff::handoff_halves`, so the same exact-inheritance guarantee holds.
//! - [`import_scope`] (child): deserializing reads the index and takes the
//!   adopted halves back out, checking the role.
//!
//! Outside a context both fail with a clear error: an endpoint is never
//! silently copied into JSON or a file.

use std::cell::RefCell;
use std::time::Instant;

use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::channel::{FrameReceiver, FrameSender};
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::handoff::{Halves, Package, Role};
use crate::typed::{Duplex, Receiver, Sender};

/// Endpoints collected by one [`export_scope`], in index order.
pub type Exported = Vec<(Role, Halves)>;

/// Adopted endpoints by index; `None` once deserialized.
type Slots = Vec<Option<(Role, Halves)>>;

thread_local! {
    static EXPORT: RefCell<Option<Exported>> = const { RefCell::new(None) };
    static IMPORT: RefCell<Option<Slots>> = const { RefCell::new(None) };
}

/// Runs `f` (which serializes the arguments) with an export context on this
/// thread; returns its result and the endpoints it moved out.
pub fn export_scope<T>(f: impl FnOnce() -> T) -> (T, Exported) {
    let outer = EXPORT.with(|e| e.borrow_mut().replace(Vec::new()));
    let out = f();
    let exported = EXPORT.with(|e| std::mem::replace(&mut *e.borrow_mut(), outer));
    (out, exported.unwrap_or_default())
}

/// Runs `f` (which deserializes the arguments) with the adopted endpoints
/// available by index; returns its result and how many were not claimed.
pub fn import_scope<T>(endpoints: Exported, f: impl FnOnce() -> T) -> (T, usize) {
    let list = endpoints.into_iter().map(Some).collect();
    let outer = IMPORT.with(|i| i.borrow_mut().replace(list));
    let out = f();
    let left = IMPORT.with(|i| std::mem::replace(&mut *i.borrow_mut(), outer));
    let unclaimed = left.map_or(0, |l| l.iter().filter(|e| e.is_some()).count());
    (out, unclaimed)
}

fn export_active() -> bool {
    EXPORT.with(|e| e.borrow().is_some())
}

fn not_in_context(what: &str) -> String {
    format!(
        "a conduit {what} can only be serialized as part of the arguments of \
         conduit::Process::spawn, which moves it into the child; to give it to another \
         process use conduit::handoff"
    )
}

fn push(role: Role, halves: Halves) -> u64 {
    EXPORT.with(|e| {
        let mut e = e.borrow_mut();
        let list = e.get_or_insert_with(Vec::new);
        list.push((role, halves));
        list.len() as u64 - 1
    })
}

/// For endpoint types of other conduit crates (the queue): inside an
/// [`export_scope`], records `halves` and returns their index; outside one,
/// the error message to report (`what` names the type).
pub fn export_endpoint(
    what: &str,
    role: Role,
    halves: impl FnOnce() -> Halves,
) -> std::result::Result<u64, String> {
    if !export_active() {
        return Err(not_in_context(what));
    }
    Ok(push(role, halves()))
}

/// For endpoint types of other conduit crates: inside an [`import_scope`],
/// takes the halves recorded under `index`, checking their role.
pub fn import_endpoint<E: serde::de::Error>(
    index: u64,
    role: Role,
) -> std::result::Result<Halves, E> {
    take(index, role)
}

fn take<E: serde::de::Error>(index: u64, role: Role) -> std::result::Result<Halves, E> {
    IMPORT.with(|i| {
        let mut i = i.borrow_mut();
        let list = i.as_mut().ok_or_else(|| {
            E::custom(
                "a conduit endpoint can only be deserialized from the arguments of \
                 conduit::Process::spawn, in the child",
            )
        })?;
        let slot = usize::try_from(index)
            .ok()
            .and_then(|n| list.get_mut(n))
            .ok_or_else(|| E::custom(format!("no endpoint {index} was handed to this child")))?;
        match slot.take() {
            Some((r, halves)) if r == role => Ok(halves),
            Some((r, halves)) => {
                let found = r.as_str();
                *slot = Some((r, halves));
                Err(E::custom(format!(
                    "endpoint {index} was handed as a {found} but is read as a {}",
                    role.as_str()
                )))
            }
            None => Err(E::custom(format!("endpoint {index} was read twice"))),
        }
    })
}

/// What an endpoint holds after its halves moved into a child.
struct Moved(&'static str);

fn moved() -> Error {
    Error::disconnected("this endpoint was moved into a child process by conduit::Process::spawn")
}

impl FrameSender for Moved {
    fn send_frame_until(&mut self, _: &[u8], _: Option<Instant>) -> Result<()> {
        Err(moved())
    }
    fn transport(&self) -> &'static str {
        self.0
    }
    fn export(self: Box<Self>) -> Result<Package> {
        Err(moved())
    }
}

impl FrameReceiver for Moved {
    fn recv_with(&mut self, _: Option<Instant>, _: &mut dyn FnMut(&[u8])) -> Result<()> {
        Err(moved())
    }
    fn poll_frame(&mut self, _: Option<Instant>) -> Result<bool> {
        Ok(true)
    }
    fn transport(&self) -> &'static str {
        self.0
    }
    fn export(self: Box<Self>) -> Result<Package> {
        Err(moved())
    }
}

impl<T, C: Codec> Sender<T, C> {
    fn take_raw(&self) -> Box<dyn FrameSender> {
        let mut state = crate::typed::lock(&self.state);
        std::mem::replace(&mut state.raw, Box::new(Moved(self.transport)))
    }
}

impl<T, C: Codec> Receiver<T, C> {
    fn take_raw(&self) -> Box<dyn FrameReceiver> {
        let mut raw = crate::typed::lock(&self.raw);
        std::mem::replace(&mut *raw, Box::new(Moved(self.transport)))
    }
}

impl<T, C: Codec> Serialize for Sender<T, C> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if !export_active() {
            return Err(S::Error::custom(not_in_context("Sender")));
        }
        s.serialize_u64(push(Role::Sender, (Some(self.take_raw()), None)))
    }
}

impl<T, C: Codec> Serialize for Receiver<T, C> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if !export_active() {
            return Err(S::Error::custom(not_in_context("Receiver")));
        }
        s.serialize_u64(push(Role::Receiver, (None, Some(self.take_raw()))))
    }
}

impl<S2, R, C: Codec> Serialize for Duplex<S2, R, C> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if !export_active() {
            return Err(S::Error::custom(not_in_context("Duplex")));
        }
        let halves = (Some(self.tx.take_raw()), Some(self.rx.take_raw()));
        s.serialize_u64(push(Role::Duplex, halves))
    }
}

impl<'de, T: Serialize + 'static, C: Codec> Deserialize<'de> for Sender<T, C> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let index = u64::deserialize(d)?;
        match take::<D::Error>(index, Role::Sender)? {
            (Some(tx), None) => Ok(Sender::from_raw(tx)),
            _ => Err(D::Error::custom("the handed halves do not make a sender")),
        }
    }
}

impl<'de, T: serde::de::DeserializeOwned + 'static, C: Codec> Deserialize<'de> for Receiver<T, C> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let index = u64::deserialize(d)?;
        match take::<D::Error>(index, Role::Receiver)? {
            (None, Some(rx)) => Ok(Receiver::from_raw(rx)),
            _ => Err(D::Error::custom("the handed halves do not make a receiver")),
        }
    }
}

impl<'de, S: Serialize + 'static, R: serde::de::DeserializeOwned + 'static, C: Codec>
    Deserialize<'de> for Duplex<S, R, C>
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let index = u64::deserialize(d)?;
        match take::<D::Error>(index, Role::Duplex)? {
            (Some(tx), Some(rx)) => Ok(Duplex::from_parts(
                Sender::from_raw(tx),
                Receiver::from_raw(rx),
            )),
            _ => Err(D::Error::custom("the handed halves do not make a duplex")),
        }
    }
}

//! What crosses the control channel (the request, the child's answers) and
//! the trampoline the child jumps to.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use conduit_core::transport::spawn_context::{import_scope, Exported};
use conduit_core::ErrorKind;

use crate::{child, sys};

/// The names of a target's types, compared by the child.
#[derive(Serialize, Deserialize, PartialEq, Eq, Debug, Clone)]
pub(crate) struct Names {
    pub(crate) f: String,
    pub(crate) a: String,
    pub(crate) r: String,
}

impl Names {
    pub(crate) fn of<F, A, R>() -> Names {
        Names {
            f: std::any::type_name::<F>().into(),
            a: std::any::type_name::<A>().into(),
            r: std::any::type_name::<R>().into(),
        }
    }
}

/// Parent to child: what to run.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct Request {
    pub(crate) version: u32,
    pub(crate) exe: Vec<u64>,
    pub(crate) check_offset: i64,
    pub(crate) trampoline_offset: i64,
    pub(crate) names: Names,
    #[serde(with = "serde_bytes")]
    pub(crate) args: Vec<u8>,
    /// The role of each endpoint inside `args`, handed over under
    /// `endpoint_key` (Unix) or in `pushed` (Windows).
    pub(crate) endpoints: Vec<String>,
    /// Windows: per endpoint, the token of its handles, pushed into the
    /// child after the spawn (`conduit_core::handoff::Outgoing`). Empty on
    /// Unix, where the endpoints go with the `Command`.
    pub(crate) pushed: Vec<String>,
    pub(crate) die_with_parent: bool,
}

/// Why the child could not run the target, as an error kind.
#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
pub(crate) enum FailKind {
    Protocol,
    Decode,
    Encode,
}

impl From<FailKind> for ErrorKind {
    fn from(k: FailKind) -> ErrorKind {
        match k {
            FailKind::Protocol => ErrorKind::Protocol,
            FailKind::Decode => ErrorKind::Decode,
            FailKind::Encode => ErrorKind::Encode,
        }
    }
}

/// Child to parent.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum FromChild {
    /// The checks passed; the target is about to run.
    Started,
    /// The target returned; its CBOR-encoded result.
    Returned(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The target panicked.
    Panicked { message: String, location: String },
    /// The target could not be run, or its result not encoded.
    Failed { kind: FailKind, message: String },
}

/// A monomorphized [`trampoline`].
pub(crate) type Trampoline = fn(&Names, &[u8], Exported) -> FromChild;

/// Runs `F` on the CBOR-encoded `args`; what the child jumps to.
pub(crate) fn trampoline<F, A, R>(names: &Names, args: &[u8], endpoints: Exported) -> FromChild
where
    F: Fn(A) -> R + Copy + 'static,
    A: DeserializeOwned,
    R: Serialize,
{
    let ours = Names::of::<F, A, R>();
    if *names != ours {
        return FromChild::Failed {
            kind: FailKind::Protocol,
            message: format!(
                "the parent asked for {} ({} -> {}) but found {} ({} -> {}) in the child",
                names.f, names.a, names.r, ours.f, ours.a, ours.r
            ),
        };
    }
    let Some(f) = sys::conjure::<F>() else {
        return FromChild::Failed {
            kind: FailKind::Protocol,
            message: format!("the target {} is not zero-sized", ours.f),
        };
    };
    let (a, _unclaimed) = import_scope(endpoints, || ciborium::from_reader::<A, _>(args));
    let a = match a {
        Ok(a) => a,
        Err(e) => {
            return FromChild::Failed {
                kind: FailKind::Decode,
                message: format!(
                    "the arguments do not decode as {} in the child: {e}",
                    ours.a
                ),
            }
        }
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || f(a))) {
        Ok(r) => match encode(&r) {
            Ok(bytes) => FromChild::Returned(bytes),
            Err(e) => FromChild::Failed {
                kind: FailKind::Encode,
                message: format!("the result ({}) does not encode: {e}", ours.r),
            },
        },
        Err(payload) => child::panicked(payload.as_ref()),
    }
}

pub(crate) fn encode<T: Serialize + ?Sized>(v: &T) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// How a child ended, from its exit status.
pub(crate) enum Ended {
    /// It exited with this code.
    Code(i32),
    /// Unix: it was killed by this signal (number, name).
    #[cfg_attr(windows, allow(dead_code))]
    Signal(i32, &'static str),
    /// Anything else the OS reports.
    Other(String),
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Code(c) => write!(f, "exited with code {c}"),
            Ended::Signal(n, name) => write!(f, "was killed by signal {n} ({name})"),
            Ended::Other(s) => write!(f, "ended with {s}"),
        }
    }
}

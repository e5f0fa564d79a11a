//! The worker's side of a [`Pool`](crate::Pool): what crosses a worker's
//! link, how a chunk of tasks is framed, and the loop a worker process runs.
//!
//! A worker is an ordinary `Process::spawn` child whose target is
//! [`worker_main`]; its argument carries the link (a duplex channel) and the
//! initializer. Over the link the pool sends [`Down::Chunk`] followed by one
//! raw frame holding the chunk's encoded inputs, and the worker answers
//! [`Up::Done`] followed by one raw frame holding the results.
//!
//! Chunk frame: per input, a `u32` little-endian length and the input
//! encoded like a channel message (CBOR; `Vec<u8>` as its raw bytes).
//! Result frame: per input, a tag byte (`0` returned, `1` failed), a `u32`
//! length, then the encoded result or a CBOR [`ItemFailure`].

use std::sync::atomic::Ordering;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use conduit_core::codec::{decode_message, encode_message, Cbor, Codec};
use conduit_core::{Duplex, Result};

use crate::sys::{self, SameImage};
use crate::{child, FailKind, FromChild, Names};

/// A monomorphized [`task_trampoline`].
pub(crate) type TaskFn = fn(&Names, &[u8], u32, &mut Vec<u8>) -> std::result::Result<(), Failure>;
/// A monomorphized [`init_trampoline`].
pub(crate) type InitFn = fn(&Names, &[u8]) -> std::result::Result<(), String>;

/// Why a whole chunk could not run.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) kind: FailKind,
    pub(crate) message: String,
}

/// Which function a chunk runs, as the worker finds it.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct Call {
    pub(crate) offset: i64,
    pub(crate) names: Names,
}

/// Pool to worker.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Down {
    /// Run `count` tasks of `call`; their inputs follow as one raw frame.
    Chunk { call: Call, count: u32 },
}

/// Worker to pool.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Up {
    /// The chunk ran; one result per input follows as one raw frame.
    Done,
    /// The chunk could not run at all (its function or inputs do not match).
    Failed(Failure),
    /// The initializer failed; the worker exits.
    InitFailed(String),
}

/// Why one task did not return a result.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum ItemFailure {
    /// The task panicked.
    Panicked { message: String, location: String },
    /// Its input did not decode or its result did not encode.
    Failed(Failure),
}

/// What a worker process is started with.
#[derive(Serialize, Deserialize)]
pub(crate) struct WorkerArgs {
    pub(crate) exe: Vec<u64>,
    pub(crate) check_offset: i64,
    /// The initializer and its encoded arguments.
    pub(crate) init: Option<(Call, serde_bytes::ByteBuf)>,
    pub(crate) link: Duplex<Up, Down>,
}

/// Appends one framed input to a chunk.
pub(crate) fn push_input<A: Serialize + 'static>(chunk: &mut Vec<u8>, a: &A) -> Result<()> {
    let start = chunk.len();
    chunk.extend_from_slice(&[0; 4]);
    if let Err(e) = encode_message::<A, Cbor>(a, chunk) {
        chunk.truncate(start);
        return Err(e);
    }
    let len = (chunk.len() - start - 4) as u32;
    chunk[start..start + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Splits the first length-prefixed record (after `skip` tag bytes) off
/// `bytes`: `(tag bytes, body, rest)`, or `None` when it is cut short.
pub(crate) fn split_record(bytes: &[u8], skip: usize) -> Option<(&[u8], &[u8], &[u8])> {
    let (head, rest) = bytes.split_at_checked(skip + 4)?;
    let len = u32::from_le_bytes(head[skip..].try_into().ok()?) as usize;
    let (body, rest) = rest.split_at_checked(len)?;
    Some((&head[..skip], body, rest))
}

fn push_result(out: &mut Vec<u8>, tag: u8, body: impl FnOnce(&mut Vec<u8>) -> Result<()>) {
    let start = out.len();
    out.push(tag);
    out.extend_from_slice(&[0; 4]);
    match body(out) {
        Ok(()) => {
            let len = (out.len() - start - 5) as u32;
            out[start + 1..start + 5].copy_from_slice(&len.to_le_bytes());
        }
        Err(e) => {
            out.truncate(start);
            push_failure(
                out,
                &ItemFailure::Failed(Failure {
                    kind: FailKind::Encode,
                    message: format!("the result does not encode: {e}"),
                }),
            );
        }
    }
}

fn push_failure(out: &mut Vec<u8>, failure: &ItemFailure) {
    push_result(out, 1, |buf| Cbor::encode(failure, buf));
}

fn names_match<F, A, R>(names: &Names) -> std::result::Result<(), Failure> {
    let ours = Names::of::<F, A, R>();
    if *names == ours {
        return Ok(());
    }
    Err(Failure {
        kind: FailKind::Protocol,
        message: format!(
            "the pool asked for {} ({} -> {}) but found {} ({} -> {}) in the worker",
            names.f, names.a, names.r, ours.f, ours.a, ours.r
        ),
    })
}

/// Runs `F` on each input of a chunk, appending one result record per
/// input to `out`; what a worker jumps to.
pub(crate) fn task_trampoline<F, A, R>(
    names: &Names,
    inputs: &[u8],
    count: u32,
    out: &mut Vec<u8>,
) -> std::result::Result<(), Failure>
where
    F: Fn(A) -> R + Copy + 'static,
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    names_match::<F, A, R>(names)?;
    let f = sys::conjure::<F>().ok_or_else(|| Failure {
        kind: FailKind::Protocol,
        message: format!("the task function {} is not zero-sized", names.f),
    })?;
    let mut rest = inputs;
    for i in 0..count {
        let Some((_, body, tail)) = split_record(rest, 0) else {
            return Err(Failure {
                kind: FailKind::Protocol,
                message: format!("the chunk holds fewer than the {count} inputs announced ({i})"),
            });
        };
        rest = tail;
        let a = match decode_message::<A, Cbor>(body) {
            Ok(a) => a,
            Err(e) => {
                push_failure(
                    out,
                    &ItemFailure::Failed(Failure {
                        kind: FailKind::Decode,
                        message: format!("the input does not decode as {}: {e}", names.a),
                    }),
                );
                continue;
            }
        };
        child::QUIET.store(true, Ordering::Relaxed);
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || f(a)));
        child::QUIET.store(false, Ordering::Relaxed);
        match ran {
            Ok(r) => push_result(out, 0, |buf| encode_message::<R, Cbor>(&r, buf)),
            Err(payload) => {
                let failure = match child::panicked(payload.as_ref()) {
                    FromChild::Panicked { message, location } => {
                        ItemFailure::Panicked { message, location }
                    }
                    _ => ItemFailure::Panicked {
                        message: "a panic".into(),
                        location: "an unknown location".into(),
                    },
                };
                push_failure(out, &failure);
            }
        }
    }
    Ok(())
}

/// Runs the pool's initializer `F` on its encoded arguments.
pub(crate) fn init_trampoline<F, A>(names: &Names, args: &[u8]) -> std::result::Result<(), String>
where
    F: Fn(A) + Copy + 'static,
    A: DeserializeOwned + 'static,
{
    names_match::<F, A, ()>(names).map_err(|f| f.message)?;
    let f = sys::conjure::<F>()
        .ok_or_else(|| format!("the initializer {} is not zero-sized", names.f))?;
    let a = decode_message::<A, Cbor>(args)
        .map_err(|e| format!("the initializer's arguments do not decode: {e}"))?;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || f(a))).map_err(|payload| {
        match child::panicked(payload.as_ref()) {
            FromChild::Panicked { message, location } => {
                format!("the initializer panicked at {location}: {message}")
            }
            _ => "the initializer panicked".into(),
        }
    })
}

/// The target of every worker process: runs chunks until the pool closes
/// the link.
pub(crate) fn worker_main(args: WorkerArgs) {
    let link = args.link;
    let Some(proof) = SameImage::checked(&args.exe, args.check_offset) else {
        let _ = link.send(&Up::InitFailed(
            "the worker does not run the same executable file as the pool".into(),
        ));
        return;
    };
    if let Some((call, init_args)) = &args.init {
        let init = sys::init_at(&proof, call.offset);
        if let Err(message) = init(&call.names, init_args) {
            let _ = link.send(&Up::InitFailed(message));
            return;
        }
    }
    let mut inputs = Vec::new();
    let mut out = Vec::new();
    // Ends when the pool closes the link (retiring this worker, or gone).
    while let Ok(Down::Chunk { call, count }) = link.recv() {
        if link.recv_bytes_into(&mut inputs).is_err() {
            return;
        }
        out.clear();
        let task = sys::task_at(&proof, call.offset);
        let sent = match task(&call.names, &inputs, count, &mut out) {
            Ok(()) => link.send(&Up::Done).and_then(|()| link.send_bytes(&out)),
            Err(failure) => link.send(&Up::Failed(failure)),
        };
        if sent.is_err() {
            return;
        }
    }
}

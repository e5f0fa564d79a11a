//! The worker's side of a [`Pool`](crate::Pool): what crosses a worker's
//! link, how a chunk of tasks is framed, and the loop a worker process runs.
//!
//! A worker is an ordinary `Process::spawn` child whose target is
//! [`worker_main`]; its argument carries the link (a duplex channel) and the
//! initializer. Over the link the pool sends [`Down::Chunk`] followed by one
//! raw frame holding the chunk's encoded inputs, and the worker answers
//! [`Up::Done`] followed by one raw frame holding the results.
//!
//! Input frame: *packed*, one CBOR array of the inputs (what `Vec<A>`
//! encodes to), or, when `A` is `Vec<u8>` (which travels as raw bytes, as
//! on channels), the raw inputs back to back with their lengths in the
//! `Down::Chunk` message. Result frame: packed, one CBOR array of the
//! results, when every task returned and `R` is not `Vec<u8>`; otherwise
//! *records*: per task a tag byte (`0` returned, `1` failed), a `u32`
//! little-endian length, then the encoded result or a CBOR
//! [`ItemFailure`]. Packed frames cost one decode call per chunk instead
//! of one per task (the 100,000-tiny-task `map` ran 1.9× faster with them).

use std::sync::atomic::Ordering;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use conduit_core::codec::{decode_message, encode_message, is_raw, Cbor, Codec};
use conduit_core::{Duplex, Result};

use crate::sys::{self, SameImage};
use crate::{child, FailKind, FromChild, Names};

/// A monomorphized [`task_trampoline`]: `(names, input frame, count,
/// input lengths (raw inputs) or None (packed), results) -> whether the
/// results are packed, and where their frame starts in `results.out`.
pub(crate) type TaskFn = fn(
    &Names,
    &[u8],
    u32,
    Option<&[u64]>,
    &mut Scratch,
) -> std::result::Result<(bool, usize), Failure>;

/// A worker's buffers for the results of a chunk, kept from chunk to
/// chunk (fresh ones per chunk cost page faults: 100 KB of `ends` for a
/// chunk of 12,500 tasks).
#[derive(Default)]
pub(crate) struct Scratch {
    /// The result frame.
    out: Vec<u8>,
    /// Packed: where each result ends, after [`HEAD`].
    ends: Vec<usize>,
}
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
    /// Run `count` tasks of `call`; their inputs follow as one raw frame,
    /// packed, or raw with these lengths.
    Chunk {
        call: Call,
        count: u32,
        lens: Option<Vec<u64>>,
    },
}

/// Worker to pool.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Up {
    /// The chunk ran; one result per input follows as one raw frame,
    /// packed or as records.
    Done { packed: bool },
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

/// Decodes a packed frame (one CBOR array) element by element, handing
/// each to `f`, without collecting them into a `Vec` first; its value is
/// how many elements there were. More than `limit` elements is an error
/// (found before `f` sees the extra one).
pub(crate) struct Each<T, F> {
    limit: usize,
    f: F,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T, F> Each<T, F> {
    pub(crate) fn new(limit: usize, f: F) -> Each<T, F> {
        Each {
            limit,
            f,
            _t: std::marker::PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>, F: FnMut(T)> serde::de::DeserializeSeed<'de> for Each<T, F> {
    type Value = usize;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<usize, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>, F: FnMut(T)> serde::de::Visitor<'de> for Each<T, F> {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "an array of at most {} items", self.limit)
    }

    fn visit_seq<S: serde::de::SeqAccess<'de>>(
        mut self,
        mut seq: S,
    ) -> std::result::Result<usize, S::Error> {
        let mut n = 0;
        while let Some(item) = seq.next_element::<T>()? {
            if n == self.limit {
                return Err(serde::de::Error::invalid_length(n + 1, &self));
            }
            (self.f)(item);
            n += 1;
        }
        Ok(n)
    }
}

/// Room kept before the items of a packed frame for its CBOR array header.
pub(crate) const HEAD: usize = 9;

/// Writes the CBOR header of an array of `count` items right before
/// `buf[HEAD..]`; returns where the array starts.
pub(crate) fn seal_array(buf: &mut [u8], count: usize) -> usize {
    let n = count as u64;
    let mut head = [0u8; HEAD];
    let len = if n < 24 {
        head[0] = 0x80 | n as u8;
        1
    } else if n <= u64::from(u8::MAX) {
        head[..2].copy_from_slice(&[0x98, n as u8]);
        2
    } else if n <= u64::from(u16::MAX) {
        head[0] = 0x99;
        head[1..3].copy_from_slice(&(n as u16).to_be_bytes());
        3
    } else if n <= u64::from(u32::MAX) {
        head[0] = 0x9a;
        head[1..5].copy_from_slice(&(n as u32).to_be_bytes());
        5
    } else {
        head[0] = 0x9b;
        head[1..9].copy_from_slice(&n.to_be_bytes());
        9
    };
    buf[HEAD - len..HEAD].copy_from_slice(&head[..len]);
    HEAD - len
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

/// Appends the record of a returned result.
pub(crate) fn push_returned<R: Serialize + 'static>(out: &mut Vec<u8>, r: &R) {
    push_result(out, 0, |buf| encode_message::<R, Cbor>(r, buf));
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

/// The results of a chunk as they are made: packed while every task
/// returns (and `R` is not raw bytes), records from the first failure on.
struct ResultsOut<'a> {
    out: &'a mut Vec<u8>,
    /// Packed: where each result ends, after [`HEAD`].
    ends: &'a mut Vec<usize>,
    packed: bool,
}

impl ResultsOut<'_> {
    fn new(scratch: &mut Scratch, packed: bool, count: u32) -> ResultsOut<'_> {
        let Scratch { out, ends } = scratch;
        out.clear();
        ends.clear();
        if packed {
            out.resize(HEAD, 0);
            ends.reserve(count as usize);
        }
        ResultsOut { out, ends, packed }
    }

    fn returned<R: Serialize + 'static>(&mut self, r: &R) {
        if !self.packed {
            return push_result(self.out, 0, |buf| encode_message::<R, Cbor>(r, buf));
        }
        let before = self.out.len();
        if super::ints::encode(r, self.out) {
            self.ends.push(self.out.len() - HEAD);
            return;
        }
        match encode_message::<R, Cbor>(r, self.out) {
            Ok(()) => self.ends.push(self.out.len() - HEAD),
            Err(e) => {
                self.out.truncate(before);
                self.failed(&ItemFailure::Failed(Failure {
                    kind: FailKind::Encode,
                    message: format!("the result does not encode: {e}"),
                }));
            }
        }
    }

    fn failed(&mut self, failure: &ItemFailure) {
        if self.packed {
            // Rewrite what is there as records (rare: a task failed).
            let packed = self.out.split_off(HEAD);
            self.out.clear();
            let mut start = 0;
            for &end in self.ends.iter() {
                let item = &packed[start..end];
                push_result(self.out, 0, |buf| {
                    buf.extend_from_slice(item);
                    Ok(())
                });
                start = end;
            }
            self.packed = false;
        }
        push_failure(self.out, failure);
    }

    /// Whether the results are packed, and where their frame starts.
    fn finish(self) -> (bool, usize) {
        if self.packed {
            (true, seal_array(self.out, self.ends.len()))
        } else {
            (false, 0)
        }
    }
}

/// Runs `F` on each input of a chunk, writing the results to `out`; what a
/// worker jumps to.
pub(crate) fn task_trampoline<F, A, R>(
    names: &Names,
    inputs: &[u8],
    count: u32,
    lens: Option<&[u64]>,
    out: &mut Scratch,
) -> std::result::Result<(bool, usize), Failure>
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
    let mut results = ResultsOut::new(out, !is_raw::<R>(), count);
    let run = |results: &mut ResultsOut<'_>, a: A| {
        child::QUIET.store(true, Ordering::Relaxed);
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || f(a)));
        child::QUIET.store(false, Ordering::Relaxed);
        match ran {
            Ok(r) => results.returned(&r),
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
                results.failed(&failure);
            }
        }
    };
    let short = |got: usize| Failure {
        kind: FailKind::Protocol,
        message: format!("the chunk holds {got} inputs, not the {count} announced"),
    };
    match lens {
        None => {
            // Each input runs as it is decoded: no `Vec` of the inputs (a
            // fresh 100 KB one per chunk of 12,500 `u64`s cost page faults).
            let mut run_one = |a: A| run(&mut results, a);
            let got = match super::ints::decode(inputs, count as usize, &mut run_one) {
                Some(got) => got.map_err(|e| e.to_string()),
                None => Cbor::decode_seed(inputs, Each::new(count as usize, &mut run_one))
                    .map_err(|e| e.to_string()),
            }
            .map_err(|e| Failure {
                kind: FailKind::Decode,
                message: format!("the inputs do not decode as {}: {e}", names.a),
            })?;
            if got != count as usize {
                return Err(short(got));
            }
        }
        Some(lens) => {
            if lens.len() != count as usize {
                return Err(short(lens.len()));
            }
            let mut rest = inputs;
            for &len in lens {
                let Some((item, tail)) = usize::try_from(len)
                    .ok()
                    .and_then(|len| rest.split_at_checked(len))
                else {
                    return Err(short(0));
                };
                rest = tail;
                match decode_message::<A, Cbor>(item) {
                    Ok(a) => run(&mut results, a),
                    Err(e) => results.failed(&ItemFailure::Failed(Failure {
                        kind: FailKind::Decode,
                        message: format!("the input does not decode as {}: {e}", names.a),
                    })),
                }
            }
        }
    }
    Ok(results.finish())
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
    let mut scratch = Scratch::default();
    // Ends when the pool closes the link (retiring this worker, or gone).
    while let Ok(Down::Chunk { call, count, lens }) = link.recv() {
        if link.recv_bytes_into(&mut inputs).is_err() {
            return;
        }
        let task = sys::task_at(&proof, call.offset);
        let sent = match task(&call.names, &inputs, count, lens.as_deref(), &mut scratch) {
            Ok((packed, start)) => link
                .send(&Up::Done { packed })
                .and_then(|()| link.send_bytes(&scratch.out[start..])),
            Err(failure) => link.send(&Up::Failed(failure)),
        };
        if sent.is_err() {
            return;
        }
    }
}

//! The only module of this crate with `unsafe` code.
//!
//! Portable part (this file): turning a trampoline into an offset from an
//! anchor function and back, and making the value of a zero-sized function
//! type. Per-OS part (`unix.rs`, `windows.rs`), each of which provides:
//!
//! - `exe_identity() -> io::Result<Vec<u64>>`: numbers that change when the
//!   running executable file is replaced (device, inode, size, mtime);
//! - `prepare(cmd, die_with_parent)`: what must happen in the child between
//!   fork and exec (Linux: `PR_SET_PDEATHSIG`);
//! - `after_spawn(child, die_with_parent)`: what must happen once the child
//!   runs (Windows: joining the kill-on-close job object);
//! - `terminate(child)`: SIGTERM (Unix) or `TerminateProcess` (Windows);
//! - `describe(status) -> Ended`: how the child ended, for error messages;
//! - `exit_watch(child) -> Option<ExitWatch>`: a handle that signals when
//!   the (not yet reaped) child exits, for `conduit::wait` (`None`: it is
//!   gone already); `ExitWatch::exited()` and `ExitWatch::handle()`;
//! - `hand(cmd, endpoints) -> Handing` before the spawn and
//!   `Handing::finish(child) -> tokens for the request` after it: how the
//!   endpoints of the arguments reach the child (Unix: `handoff` with the
//!   `Command`; Windows: pushed into the child after the spawn), and
//!   `adopt(i, role, tokens, resolver)` in the child.

#![allow(unsafe_code)]

#[cfg_attr(unix, path = "unix.rs")]
#[cfg_attr(windows, path = "windows.rs")]
mod os;

pub(crate) use os::{
    adopt, after_spawn, describe, exe_identity, exit_watch, hand, prepare, terminate, ExitWatch,
};

use crate::pool::worker::{InitFn, TaskFn};
use crate::Trampoline;

/// The anchor every code offset is measured from. Never inlined, so that it
/// has one address; its body differs from [`check_anchor`]'s so that the
/// linker cannot fold the two.
#[inline(never)]
fn anchor() -> u64 {
    std::hint::black_box(0x636f_6e64_7569_7431)
}

/// A second function whose offset from [`anchor`] the child compares with
/// the parent's before it follows any offset.
#[inline(never)]
fn check_anchor() -> u64 {
    std::hint::black_box(0x7072_6f63_6573_7321) ^ anchor()
}

fn addr_of_anchor() -> usize {
    anchor as fn() -> u64 as usize
}

/// The offset of `t` from the anchor, to send to a child.
pub(crate) fn trampoline_offset(t: Trampoline) -> i64 {
    (t as usize).wrapping_sub(addr_of_anchor()) as isize as i64
}

/// The offset of a pool task trampoline from the anchor, to send to a
/// worker.
pub(crate) fn task_offset(t: TaskFn) -> i64 {
    (t as usize).wrapping_sub(addr_of_anchor()) as isize as i64
}

/// The offset of a pool initializer trampoline from the anchor.
pub(crate) fn init_offset(t: InitFn) -> i64 {
    (t as usize).wrapping_sub(addr_of_anchor()) as isize as i64
}

/// The offset of the check function from the anchor.
pub(crate) fn check_offset() -> i64 {
    (check_anchor as fn() -> u64 as usize).wrapping_sub(addr_of_anchor()) as isize as i64
}

/// A proof, made by `crate::child::verify`, that the parent runs the very
/// executable file this process runs (same identity numbers and same
/// [`check_offset`]), so that its code offsets are valid here.
pub(crate) struct SameImage(());

impl SameImage {
    /// Made only after the checks; see `crate::child::verify`.
    pub(crate) fn checked(parent_exe: &[u64], parent_check_offset: i64) -> Option<SameImage> {
        let ours = exe_identity().ok()?;
        (ours == parent_exe && parent_check_offset == check_offset()).then_some(SameImage(()))
    }
}

/// The trampoline at `offset` from the anchor, in this process.
pub(crate) fn trampoline_at(_proof: &SameImage, offset: i64) -> Trampoline {
    let addr = addr_of_anchor().wrapping_add(offset as isize as usize);
    // SAFETY: `offset` is what the parent computed with `trampoline_offset`
    // from a value of type `Trampoline` (a monomorphized
    // `crate::trampoline::<F, A, R>`), and `_proof` shows that the parent
    // runs the same executable file as this process (device, inode, size and
    // modification time of the running image, plus the offset of a second
    // function, all equal). Code offsets between two functions of one image do
    // not change under ASLR, which moves the image as a whole, so `addr` is
    // the address of that same function here, and a `usize` taken from a
    // function pointer converts back to a function pointer of that type.
    // The parent is not a trust boundary for the child: it chose the
    // executable, its environment and its arguments, so a hostile parent
    // gains nothing it did not have; what these checks rule out is an honest
    // mismatch (a rebuilt binary, a stale or inherited token), and the
    // handoff of the control channel already refuses tokens that were not
    // handed to this very process. Limit (documented in the crate docs):
    // `anchor` and the trampoline must live in the same image, which holds
    // when the crates are linked statically (Rust's default, not with
    // `-C prefer-dynamic` or a `dylib` crate between them).
    unsafe { std::mem::transmute::<usize, Trampoline>(addr) }
}

/// The value of the zero-sized function type `F`.
///
/// Returns `None` when `F` is not zero-sized.
pub(crate) fn conjure<F: Copy + 'static>() -> Option<F> {
    if std::mem::size_of::<F>() != 0 {
        return None;
    }
    // SAFETY: `F` is zero-sized, so reading it touches no memory and a
    // dangling, well-aligned pointer is valid for the read. `F: Copy` and a
    // zero-sized type has exactly one value (no bytes to differ in), the
    // value the parent passed to `Process::spawn`: the child gets a copy of
    // it, which `Copy` permits without conditions. On stable Rust the only
    // zero-sized `Fn` types are fn items and closures that capture nothing
    // (or only other zero-sized captures, copied the same way).
    Some(unsafe { std::ptr::NonNull::<F>::dangling().as_ptr().read() })
}

/// The pool task trampoline at `offset` from the anchor, in this process.
pub(crate) fn task_at(_proof: &SameImage, offset: i64) -> TaskFn {
    let addr = addr_of_anchor().wrapping_add(offset as isize as usize);
    // SAFETY: as in `trampoline_at`: `offset` is what the pool (this
    // worker's parent, which runs the same executable file, as `_proof`
    // shows) computed with `task_offset` from a value of type `TaskFn` (a
    // monomorphized `crate::pool::worker::task_trampoline`), and code
    // offsets within one image survive ASLR, so `addr` is that function
    // here. The parent is not a trust boundary for its worker (it chose
    // the executable and its environment).
    unsafe { std::mem::transmute::<usize, TaskFn>(addr) }
}

/// The pool initializer trampoline at `offset` from the anchor.
pub(crate) fn init_at(_proof: &SameImage, offset: i64) -> InitFn {
    let addr = addr_of_anchor().wrapping_add(offset as isize as usize);
    // SAFETY: as for `task_at`, with `init_offset` and `InitFn` (a
    // monomorphized `crate::pool::worker::init_trampoline`).
    unsafe { std::mem::transmute::<usize, InitFn>(addr) }
}

//! A global allocator that records the largest allocation made by each
//! thread, so that tests can prove a hostile length was rejected *before*
//! anything was allocated for it.
//!
//! Install it in a test binary with
//! `#[global_allocator] static A: conduit_test::alloc::Tracking = conduit_test::alloc::Tracking;`.

#![allow(unsafe_code)]
// Clippy 1.96 on windows-gnu flags the `const { }` thread-locals below as
// not const (a false positive: they are).
#![allow(clippy::missing_const_for_thread_local)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static NET: Cell<isize> = const { Cell::new(0) };
}

fn add(delta: isize) {
    let _ = NET.try_with(|n| n.set(n.get().wrapping_add(delta)));
}

/// The tracking allocator (forwards to the system allocator).
#[derive(Clone, Copy, Debug, Default)]
pub struct Tracking;

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| {
        if size > l.get() {
            l.set(size);
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments, so
// `System`'s guarantees carry over; `note` only touches a thread-local `Cell`
// and never allocates.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        add(layout.size() as isize);
        // SAFETY: forwarded with the caller's valid layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        add(layout.size() as isize);
        // SAFETY: forwarded with the caller's valid layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as isize));
        // SAFETY: `ptr` was allocated by `System` (through us) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        add(new_size as isize - layout.size() as isize);
        // SAFETY: forwarded with the caller's arguments, which meet realloc's contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Resets the calling thread's record.
pub fn reset_largest() {
    let _ = LARGEST.try_with(|l| l.set(0));
}

/// The largest allocation (bytes) the calling thread made since the last reset.
pub fn largest() -> usize {
    LARGEST.try_with(Cell::get).unwrap_or(0)
}

/// Bytes allocated minus bytes freed by the calling thread since it started
/// (negative when it frees memory other threads allocated): the growth
/// between two calls is what the thread kept.
pub fn net() -> isize {
    NET.try_with(Cell::get).unwrap_or(0)
}

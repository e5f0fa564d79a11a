//! Platform layer: every backend provides `KIND` (the stream kind) and
//! `pair()`, returning two ends, each as `(sending handle, receiving handle)`,
//! owned and non-inheritable.

#[cfg_attr(unix, path = "unix.rs")]
#[cfg_attr(windows, path = "windows.rs")]
mod imp;

pub use imp::{pair, KIND};

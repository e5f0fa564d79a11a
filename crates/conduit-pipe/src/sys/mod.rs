//! Platform layer: every backend provides `pipe() -> io::Result<(read, write)>`
//! returning owned, non-inheritable handles.

#[cfg_attr(unix, path = "unix.rs")]
#[cfg_attr(windows, path = "windows.rs")]
mod imp;

pub use imp::pipe;

//! Windows: not written yet.

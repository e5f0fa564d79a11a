//! Integration tests live in `conformance.rs`.

//! The cross-process conformance suite, written once and instantiated for
//! every transport by [`trials`]. Each test spawns real child processes
//! (this test binary, re-executed) and hands them endpoints with
//! `conduit::handoff`.
//!
//! Tests that play a misbehaving peer write the wire format by hand, from
//! `docs/wire-format.md` (stream transports) or the segment layout in the
//! `conduit-shm` crate documentation (shm), rather than with conduit's own
//! encoder: the liar child picks the format by the transport it was handed,
//! and the parent's checks are the same for every transport. For shm the
//! "handshake" is the segment header and a "frame" is a ring record, so those
//! trials carry shm names. shm also gets a hostile peer that scribbles random
//! bytes over the shared pages.
//!
//! The pieces: `children` (the child functions and their table),
//! `liars` (the misbehaving peers and the hand-written wire format),
//! `cases` and `hostile` (the parent's side of the tests, with well-behaved
//! and misbehaving peers), `echo` (the echo property, shared with the named
//! trials), `checks` (shared helpers and [`Scenario`]) and `hardening`.

use std::time::Duration;

use conduit::Transport;

use crate::{Failed, Trial};

mod cases;
mod checks;
mod children;
mod echo;
pub(crate) mod hardening;
mod hostile;
mod liars;

pub use checks::Scenario;
pub(crate) use checks::{cases, expect_kind, job};
pub(crate) use children::echo_loop;
pub use children::{child_adopt_checks, CHILDREN};
#[cfg(feature = "named")]
pub(crate) use echo::echo_property;

use cases::{
    adopt_errors, bytes_api, handed_roles, kill_while_blocked_in_recv, kill_while_blocked_in_send,
    many_tiny_messages, timeout_and_empty, unrelated_children,
};
use echo::prop_echo_sequences;
use hostile::{
    garbage_cbor, hostile_scribbler, oversized_frame, poll_exact, truncated_frame, wrong_handshake,
};

/// Generous bound after which a blocked call counts as hung.
pub(crate) const HANG: Duration = Duration::from_secs(30);

type TestFn = fn(Transport) -> Result<(), Failed>;

/// The suite's tests for transport `t`, named `<transport>::<test>`.
pub fn trials(t: Transport) -> Vec<Trial> {
    let shm = t == Transport::Shm;
    // (stream name, shm name): the misbehaving-peer tests speak each
    // transport's own format, so their names say what they corrupt.
    let named = |stream: &'static str, shm_name: &'static str| if shm { shm_name } else { stream };
    let mut tests: Vec<(&str, TestFn)> = vec![
        ("prop_echo_sequences", prop_echo_sequences),
        (
            "kill_child_while_parent_blocked_in_recv",
            kill_while_blocked_in_recv,
        ),
        (
            "kill_child_while_parent_blocked_in_send",
            kill_while_blocked_in_send,
        ),
        ("recv_timeout_and_try_recv_on_empty", timeout_and_empty),
        (
            "poll_is_true_exactly_when_a_whole_message_is_ready",
            poll_exact,
        ),
        (
            named(
                "oversized_frame_is_too_large_without_allocating",
                "oversized_record_is_too_large_without_allocating",
            ),
            oversized_frame,
        ),
        (
            named(
                "truncated_frame_is_protocol_error",
                "truncated_record_is_protocol_error",
            ),
            truncated_frame,
        ),
        (
            "garbage_cbor_is_decode_error_and_channel_survives",
            garbage_cbor,
        ),
        (
            named(
                "wrong_handshake_is_protocol_error",
                "bad_segment_header_is_protocol_error",
            ),
            wrong_handshake,
        ),
        (
            "unrelated_concurrent_children_do_not_keep_channel_alive",
            unrelated_children,
        ),
        (
            "handed_receiver_and_duplex_work_in_both_directions",
            handed_roles,
        ),
        ("many_tiny_messages_echoed_in_order", many_tiny_messages),
        ("send_bytes_and_recv_bytes_into_echo_every_size", bytes_api),
    ];
    tests.extend([
        (
            "nonblocking_calls_notice_a_killed_peer_within_1s",
            hardening::nonblocking_calls_notice_a_killed_peer as TestFn,
        ),
        (
            "poll_waits_and_counts_a_gone_peer_as_ready",
            hardening::poll_waits_and_counts_a_gone_peer_as_ready,
        ),
        (
            "try_send_and_send_timeout_on_a_full_channel",
            hardening::try_send_and_send_timeout_on_a_full_channel,
        ),
        (
            "dropping_a_split_sender_ends_the_peer_stream",
            hardening::dropping_a_split_sender_ends_the_peer_stream,
        ),
    ]);
    if shm {
        tests.push((
            "hostile_peer_scribbling_shared_memory_never_panics_or_hangs",
            hostile_scribbler,
        ));
        tests.push((
            "records_are_never_replayed_nor_looped_over",
            hardening::shm_records_are_never_replayed,
        ));
    } else {
        tests.push((
            "announced_frames_commit_memory_as_it_arrives",
            hardening::announced_frames_commit_memory_as_it_arrives,
        ));
    }
    tests
        .into_iter()
        .map(|(name, f)| Trial::test(format!("{}::{name}", t.name()), move || f(t)))
        .chain(crate::handoff_cases::trials(t))
        .collect()
}

/// Tests that do not depend on a transport.
pub fn general_trials() -> Vec<Trial> {
    let mut trials = vec![Trial::test(
        "handoff::adopt_reports_missing_malformed_and_unsupported",
        adopt_errors,
    )];
    trials.extend(crate::handoff_cases::general_trials());
    trials
}

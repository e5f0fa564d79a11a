//! The echo property (random sequences of typed and raw messages echoed by
//! a child), shared by the suite and the named trials.

use std::thread;
use std::time::Duration;

use conduit::{Duplex, Transport};
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use proptest::{prop_assert, prop_assert_eq};

use super::{cases, HANG};
use crate::msg::{any_sequence, Item, Msg};
use crate::{fail, spawn, Failed, Spawned};

/// The echo property: random sequences of typed and raw messages sent over
/// `typed` and `raw` to a child that echoes both; failing cases persist in
/// `regressions`.
pub(crate) fn echo_property(
    what: &str,
    regressions: &'static str,
    typed: &Duplex<Msg, Msg>,
    raw: &Duplex<Vec<u8>, Vec<u8>>,
) -> Result<(), Failed> {
    let config = Config {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
        ..Config::default()
    };
    TestRunner::new(config)
        .run(&any_sequence(), |seq| echo_case(what, seq, typed, raw))
        .map_err(|e| Failed::from(e.to_string()))
}

/// One case of the echo property: sends `seq` over `typed` and `raw` (a child
/// echoes both) and checks that everything came back once, intact, in order.
fn echo_case(
    what: &str,
    seq: Vec<Item>,
    typed: &Duplex<Msg, Msg>,
    raw: &Duplex<Vec<u8>, Vec<u8>>,
) -> Result<(), TestCaseError> {
    let typed_sent: Vec<Msg> = seq
        .iter()
        .filter_map(|i| {
            if let Item::Typed(m) = i {
                Some(m.clone())
            } else {
                None
            }
        })
        .collect();
    let raw_sent: Vec<_> = seq
        .iter()
        .filter_map(|i| if let Item::Raw(p) = i { Some(*p) } else { None })
        .collect();
    let (typed_got, raw_got) = crate::watchdog(what, HANG * 4, || {
        thread::scope(|s| {
            s.spawn(|| {
                for item in &seq {
                    match item {
                        Item::Typed(m) => typed.send(m).expect("send typed"),
                        Item::Raw(p) => raw.send(&p.bytes()).expect("send raw"),
                    }
                }
            });
            let tg = s.spawn(|| {
                (0..typed_sent.len())
                    .map(|_| typed.recv())
                    .collect::<Vec<_>>()
            });
            let rg = s.spawn(|| (0..raw_sent.len()).map(|_| raw.recv()).collect::<Vec<_>>());
            (tg.join(), rg.join())
        })
    });
    let typed_got = typed_got.map_err(|_| TestCaseError::fail("typed receiver panicked"))?;
    let raw_got = raw_got.map_err(|_| TestCaseError::fail("raw receiver panicked"))?;
    for (i, (got, want)) in typed_got.into_iter().zip(&typed_sent).enumerate() {
        let got = got.map_err(|e| TestCaseError::fail(format!("typed echo {i}: {e}")))?;
        prop_assert_eq!(&got, want, "typed message {} differs", i);
    }
    for (i, (got, want)) in raw_got.into_iter().zip(&raw_sent).enumerate() {
        let got = got.map_err(|e| TestCaseError::fail(format!("raw echo {i}: {e}")))?;
        prop_assert!(
            got == want.bytes(),
            "raw message {} ({} bytes) differs",
            i,
            want.len
        );
    }
    // Nothing extra arrived (no duplicates).
    prop_assert!(!typed
        .poll(Duration::ZERO)
        .map_err(|e| TestCaseError::fail(e.to_string()))?);
    prop_assert!(!raw
        .poll(Duration::ZERO)
        .map_err(|e| TestCaseError::fail(e.to_string()))?);
    Ok(())
}

/// An echo child with the parent's ends of its typed and raw duplexes.
pub(super) type Echo = (Spawned, Duplex<Msg, Msg>, Duplex<Vec<u8>, Vec<u8>>);

/// Spawns an echo child (the `echo` child function) with a typed and a raw
/// duplex.
pub(super) fn spawn_echo(t: Transport) -> Result<Echo, Failed> {
    let (typed, typed_child) = t.duplex::<Msg, Msg>().map_err(fail("duplex"))?;
    let (raw, raw_child) = t.duplex::<Vec<u8>, Vec<u8>>().map_err(fail("duplex"))?;
    let child = spawn("echo", |cmd| {
        conduit::handoff(cmd, "typed", typed_child)?;
        conduit::handoff(cmd, "raw", raw_child)
    })?;
    Ok((child, typed, raw))
}

pub(super) fn prop_echo_sequences(t: Transport) -> Result<(), Failed> {
    let (mut child, typed, raw) = spawn_echo(t)?;
    echo_property(
        "echo case",
        concat!(env!("CARGO_MANIFEST_DIR"), "/proptest-regressions/echo.txt"),
        &typed,
        &raw,
    )?;
    drop(typed);
    drop(raw);
    child.wait_success()
}

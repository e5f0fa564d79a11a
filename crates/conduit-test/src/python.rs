//! A Python peer speaking `docs/wire-format.md` with `cbor2`
//! (`tests/python/peer.py`): the first cross-language user, and the proof
//! that the documented wire format is the real one.
//!
//! The trials are ignored (with the reason in their name's output) when
//! `python3` with the `cbor2` module is not installed; `.ci/run` installs
//! `cbor2` from PyPI.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use conduit::{Duplex, Transport};
use serde::{Deserialize, Serialize};

use crate::msg::Status;
use crate::{ensure, fail, Failed, Trial};

/// A struct with every kind of field the wire format documents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    id: u64,
    neg: i64,
    name: String,
    #[serde(with = "serde_bytes")]
    blob: Vec<u8>,
    maybe: Option<u32>,
    none: Option<String>,
    /// Representable as a half-precision float (ciborium and cbor2 send
    /// the shortest width that keeps the value).
    half: f64,
    /// Needs a single-precision float.
    single: f32,
    /// Needs a double.
    double: f64,
    tags: Vec<String>,
    map: BTreeMap<u32, String>,
    status: Status,
}

/// The messages exchanged with the Python peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Py {
    /// A unit variant (`"Unit"` on the wire).
    Unit,
    /// A newtype variant (`{"Text": ...}`).
    Text(String),
    /// A struct.
    Sample(Sample),
    /// Enums inside a vector inside an enum.
    Nested(Vec<Py>),
    /// The end of one side's messages.
    End,
}

fn sample() -> Sample {
    Sample {
        id: u64::MAX,
        neg: i64::MIN,
        name: "π".into(),
        blob: (0..=255).collect(),
        maybe: Some(7),
        none: None,
        half: 1.5,
        single: 0.1,
        double: 0.1,
        tags: vec!["a".into(), String::new(), "ç".into()],
        map: BTreeMap::from([(1, "one".into()), (3, "three".into())]),
        status: Status::Failed(-2),
    }
}

/// What Rust sends (the peer echoes each), and what the peer's own
/// messages must decode to (see `own_messages` in `peer.py`).
fn ours() -> Vec<Py> {
    let mut odd = sample();
    odd.half = -0.0;
    odd.single = f32::MAX;
    odd.double = f64::MIN_POSITIVE;
    odd.maybe = None;
    odd.blob.clear();
    odd.map.clear();
    odd.status = Status::Pending;
    vec![
        Py::Unit,
        Py::Text(String::new()),
        Py::Text("hello from rust ✓".into()),
        Py::Sample(sample()),
        Py::Sample(odd),
        Py::Nested(vec![Py::Unit, Py::Nested(vec![Py::Text("deep".into())])]),
    ]
}

fn theirs() -> Vec<Py> {
    vec![
        Py::Unit,
        Py::Text("hello from python ✓".into()),
        Py::Sample(sample()),
        Py::Nested(vec![Py::Text("inner".into()), Py::Unit, Py::Nested(vec![])]),
    ]
}

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/python/peer.py");

/// True when `python3` can import `cbor2`.
fn python_ready() -> bool {
    Command::new("python3")
        .args(["-c", "import cbor2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The conversation: our messages echoed, then the peer's own, then End.
fn converse(conn: &Duplex<Py, Py>) -> Result<(), Failed> {
    let limit = Duration::from_secs(30);
    for m in ours() {
        conn.send(&m).map_err(fail("send"))?;
        let back = conn.recv_timeout(limit).map_err(fail("echo from python"))?;
        ensure(back == m, || format!("python echoed {back:?} for {m:?}"))?;
    }
    conn.send(&Py::End).map_err(fail("send End"))?;
    for want in theirs() {
        let got = conn
            .recv_timeout(limit)
            .map_err(fail("message from python"))?;
        ensure(got == want, || {
            format!("python sent {got:?}, expected {want:?}")
        })?;
    }
    let end = conn.recv_timeout(limit).map_err(fail("End from python"))?;
    ensure(end == Py::End, || format!("expected End, got {end:?}"))
}

fn wait_ok(mut child: std::process::Child) -> Result<(), Failed> {
    let status = child.wait().map_err(fail("wait for python"))?;
    ensure(status.success(), || format!("peer.py failed: {status}"))
}

fn handoff_peer(t: Transport) -> Result<(), Failed> {
    let (conn, theirs) = t.duplex::<Py, Py>().map_err(fail("duplex"))?;
    let mut cmd = Command::new("python3");
    cmd.arg(PEER).args(["handoff", "conn"]).stdin(Stdio::null());
    conduit::handoff(&mut cmd, "conn", theirs).map_err(fail("handoff"))?;
    let child = cmd.spawn().map_err(fail("spawn python3"))?;
    let res = converse(&conn);
    drop(conn);
    res.and(wait_ok(child))
}

#[cfg(all(unix, feature = "named"))]
fn named_peer() -> Result<(), Failed> {
    let name = format!("py-{:016x}", fastrand::u64(..));
    let listener = conduit::named::Listener::<Py, Py>::bind(&name).map_err(fail("bind"))?;
    let path = conduit_named::unix::socket_path(&name).map_err(fail("socket path"))?;
    let child = Command::new("python3")
        .arg(PEER)
        .arg("named")
        .arg(path)
        .stdin(Stdio::null())
        .spawn()
        .map_err(fail("spawn python3"))?;
    let conn = listener
        .accept_timeout(Duration::from_secs(30))
        .map_err(fail("accept the python client"))?;
    let res = converse(&conn);
    drop(conn);
    res.and(wait_ok(child))
}

/// The Python-peer trials, ignored when `python3` + `cbor2` are missing
/// (looked up only when `check` is true; otherwise they are listed as
/// ignored, for runs whose filter cannot select them anyway).
pub fn trials(check: bool) -> Vec<Trial> {
    let ready = check && python_ready();
    if check && !ready {
        eprintln!(
            "conduit-test: python3 with cbor2 not found: the python::* trials are ignored \
             (pip install cbor2 to run them)"
        );
    }
    let mut v = Vec::new();
    for t in Transport::enabled() {
        if matches!(t, Transport::Pipe | Transport::Socketpair) {
            v.push(Trial::test(
                format!(
                    "python::{}_cbor2_peer_round_trips_every_value_kind",
                    t.name()
                ),
                move || handoff_peer(t),
            ));
        }
    }
    #[cfg(all(unix, feature = "named"))]
    v.push(Trial::test(
        "python::named_cbor2_peer_round_trips_every_value_kind",
        named_peer,
    ));
    v.into_iter()
        .map(|t| t.with_ignored_flag(!ready || cfg!(windows)))
        .collect()
}

//! Helpers shared by the trial modules (assertions, property case counts,
//! messages) and the misbehaviours a liar child can be asked to play.

use std::process::Command;
use std::str::FromStr;

use conduit::ErrorKind;

use crate::msg::Msg;
use crate::Failed;

/// Property cases per test: `PROPTEST_CASES`, else 16.
pub(crate) fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16)
}

/// A `Msg::Job` without tags or priority.
pub(crate) fn job(id: u64, name: &str, payload: Vec<u8>) -> Msg {
    Msg::Job {
        id,
        name: name.into(),
        tags: vec![],
        payload,
        priority: None,
    }
}

/// Fails unless `res` is an error of `kind`; returns that error.
pub(crate) fn expect_kind<T: std::fmt::Debug>(
    what: &str,
    res: conduit::Result<T>,
    kind: ErrorKind,
) -> Result<conduit::Error, Failed> {
    match res {
        Err(e) if e.kind() == kind => Ok(e),
        Err(e) => Err(format!("{what}: expected a {kind:?} error, got {:?}: {e}", e.kind()).into()),
        Ok(v) => Err(format!("{what}: expected a {kind:?} error, got Ok({v:?})").into()),
    }
}

/// What a misbehaving child plays, passed in the environment variable
/// [`Scenario::ENV`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// A frame (shm: a record) announcing 2 GiB.
    Huge,
    /// A frame cut short, then the sender exits.
    Truncated,
    /// A handshake (shm: segment header) with the wrong magic.
    Magic,
    /// A handshake with a protocol version from the future.
    Version,
    /// A handshake with another codec's id (postcard's, on a CBOR channel).
    Codec,
    /// A handshake with another maximum frame size.
    MaxFrame,
    /// A frame written in two parts, the second after the parent looked.
    Partial,
    /// A well-framed message that is not valid CBOR, then a good one.
    Garbage,
    /// shm: one message, then a padding record that leads back to it.
    Replay,
    /// shm: a padding record at ring offset 0.
    PadAtStart,
    /// Streams: a frame header announcing 64 MiB, then 100 bytes of it.
    Announce,
    /// Named: the socket directory must be refused.
    Refused,
    /// Named: a fresh socket directory is created private.
    Fresh,
}

impl Scenario {
    /// The environment variable that carries the scenario to the child.
    pub const ENV: &'static str = "CONDUIT_SCENARIO";

    /// Every scenario.
    pub const ALL: [Scenario; 13] = [
        Scenario::Huge,
        Scenario::Truncated,
        Scenario::Magic,
        Scenario::Version,
        Scenario::Codec,
        Scenario::MaxFrame,
        Scenario::Partial,
        Scenario::Garbage,
        Scenario::Replay,
        Scenario::PadAtStart,
        Scenario::Announce,
        Scenario::Refused,
        Scenario::Fresh,
    ];

    /// The value of [`Scenario::ENV`] that names this scenario.
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Huge => "huge",
            Scenario::Truncated => "truncated",
            Scenario::Magic => "magic",
            Scenario::Version => "version",
            Scenario::Codec => "codec",
            Scenario::MaxFrame => "maxframe",
            Scenario::Partial => "partial",
            Scenario::Garbage => "garbage",
            Scenario::Replay => "replay",
            Scenario::PadAtStart => "pad_at_start",
            Scenario::Announce => "announce",
            Scenario::Refused => "refused",
            Scenario::Fresh => "fresh",
        }
    }

    /// Tells the child started by `cmd` to play this scenario.
    pub fn set(self, cmd: &mut Command) {
        cmd.env(Self::ENV, self.as_str());
    }

    /// The scenario a child was asked to play. Test code: panics (failing
    /// the child, hence the parent's test) when it is missing or unknown.
    pub fn from_env() -> Scenario {
        let value = std::env::var(Self::ENV)
            .unwrap_or_else(|e| panic!("{}: no scenario for this child: {e}", Self::ENV));
        value
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", Self::ENV))
    }
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Scenario, String> {
        Scenario::ALL
            .into_iter()
            .find(|sc| sc.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Scenario::ALL.iter().map(|sc| sc.as_str()).collect();
                format!("unknown scenario {s:?} (known: {})", known.join(", "))
            })
    }
}

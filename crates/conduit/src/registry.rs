//! The transport registry: one `cfg`-gated table built from the transport
//! crates' own descriptions (`DESCRIPTOR`, see `conduit_core::transport`).
//!
//! Adding a transport is one row in [`registry!`](registry) below, its
//! crate and its feature lines in `Cargo.toml` (see `docs/architecture.md`).

use serde::de::DeserializeOwned;
use serde::Serialize;

use conduit_core::transport::{Descriptor, Pairs};

use crate::{typed_channel, typed_duplex, Duplex, Error, ErrorKind, FrameConfig, Receiver};
use crate::{Result, Sender};

/// One transport in the table.
struct Row {
    /// The cargo feature, which is also the transport's name.
    feature: &'static str,
    /// The public [`Transport`] it is, if it makes anonymous pairs.
    transport: Option<Transport>,
    /// Its description, when the feature is on.
    descriptor: Option<&'static Descriptor>,
    /// Rank for [`Transport::best_channel`] / [`Transport::best_duplex`]
    /// (lower is better).
    channel_rank: u8,
    duplex_rank: u8,
}

/// `registry! { Variant? => "feature", crate, channel rank, duplex rank, "doc"; ... }`
/// declares [`Transport`] and the table [`ROWS`].
macro_rules! registry {
    ($( $( #[doc = $doc:literal] $variant:ident )? => $feature:literal, $krate:ident, $crank:literal, $drank:literal; )*) => {
        /// A transport that makes anonymous channels and duplex connections,
        /// for choosing one at run time.
        ///
        /// # Examples
        ///
        /// ```
        /// for t in conduit::Transport::enabled() {
        ///     let (tx, rx) = t.channel::<String>().unwrap();
        ///     tx.send(&t.name().to_string()).unwrap();
        ///     assert_eq!(rx.recv().unwrap(), t.name());
        /// }
        /// ```
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Transport {
            $( $( #[doc = $doc] $variant, )? )*
        }

        impl Transport {
            /// Every transport conduit knows, compiled in or not.
            pub const ALL: &'static [Transport] = &[ $( $( Transport::$variant, )? )* ];
        }

        /// Every transport conduit knows, compiled in or not.
        const ROWS: &[Row] = &[
            $( Row {
                feature: $feature,
                transport: registry!(@variant $($variant)?),
                descriptor: {
                    #[cfg(feature = $feature)]
                    const D: Option<&Descriptor> = Some(&$krate::DESCRIPTOR);
                    #[cfg(not(feature = $feature))]
                    const D: Option<&Descriptor> = None;
                    D
                },
                channel_rank: $crank,
                duplex_rank: $drank,
            }, )*
        ];
    };
    (@variant $variant:ident) => { Some(Transport::$variant) };
    (@variant) => { None };
}

registry! {
    /// Anonymous pipes (feature `pipe`).
    Pipe => "pipe", conduit_pipe, 1, 2;
    /// Socket pairs (feature `socketpair`).
    Socketpair => "socketpair", conduit_socketpair, 2, 1;
    /// Shared-memory rings (feature `shm`): first choice when compiled in.
    Shm => "shm", conduit_shm, 0, 0;
    => "named", conduit_named, 255, 255;
    => "queue", conduit_queue, 255, 255;
}

fn row(t: Transport) -> &'static Row {
    // Every variant has a row (the macro declares both from the same list).
    ROWS.iter()
        .find(|r| r.transport == Some(t))
        .unwrap_or(&ROWS[0])
}

/// The descriptor of the transport named `name`, for `adopt`.
pub(crate) fn descriptor(name: &str) -> Result<&'static Descriptor> {
    let row = ROWS.iter().find(|r| r.feature == name).ok_or_else(|| {
        Error::new(
            ErrorKind::Unsupported,
            format!("the parent handed over an endpoint of transport `{name}`, which this version of conduit does not know"),
        )
    })?;
    row.descriptor.ok_or_else(|| disabled(row.feature))
}

fn disabled(feature: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!("transport `{feature}` is not compiled in: enable the `{feature}` cargo feature of conduit"),
    )
}

fn no_transport() -> Error {
    let all: Vec<&str> = ROWS
        .iter()
        .filter(|r| r.transport.is_some())
        .map(|r| r.feature)
        .collect();
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "no transport is compiled in: enable at least one of the cargo features {}",
            all.join(", ")
        ),
    )
}

impl Transport {
    /// The transports compiled into this build, in order of preference
    /// for channels.
    #[must_use]
    pub fn enabled() -> Vec<Transport> {
        let mut v: Vec<Transport> = Transport::ALL
            .iter()
            .copied()
            .filter(|t| t.is_enabled())
            .collect();
        v.sort_by_key(|t| row(*t).channel_rank);
        v
    }

    /// The transport's name (also its cargo feature).
    pub fn name(self) -> &'static str {
        row(self).feature
    }

    /// Looks a transport up by name.
    pub fn from_name(name: &str) -> Option<Transport> {
        ROWS.iter()
            .find(|r| r.feature == name)
            .and_then(|r| r.transport)
    }

    /// True when the transport's cargo feature is on.
    pub fn is_enabled(self) -> bool {
        row(self).descriptor.is_some()
    }

    fn pairs(self) -> Result<Pairs> {
        let row = row(self);
        row.descriptor
            .and_then(|d| d.pairs)
            .ok_or_else(|| disabled(row.feature))
    }

    /// A byte-level duplex connection on this transport (for the process
    /// control channel).
    pub(crate) fn raw_duplex(
        self,
        cfg: FrameConfig,
    ) -> Result<(
        conduit_core::transport::BoxDuplexEnd,
        conduit_core::transport::BoxDuplexEnd,
    )> {
        (self.pairs()?.duplex)(cfg)
    }

    /// Creates a one-way channel on this transport.
    pub fn channel<T: Serialize + DeserializeOwned + 'static>(
        self,
    ) -> Result<(Sender<T>, Receiver<T>)> {
        self.channel_with(FrameConfig::default())
    }

    /// Creates a one-way channel on this transport with `cfg`.
    pub fn channel_with<T: Serialize + DeserializeOwned + 'static>(
        self,
        cfg: FrameConfig,
    ) -> Result<(Sender<T>, Receiver<T>)> {
        let (tx, rx) = (self.pairs()?.channel)(cfg)?;
        Ok(typed_channel(tx, rx))
    }

    /// Creates a two-way connection on this transport.
    pub fn duplex<S, R>(self) -> Result<(Duplex<S, R>, Duplex<R, S>)>
    where
        S: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.duplex_with(FrameConfig::default())
    }

    /// Creates a two-way connection on this transport with `cfg`.
    pub fn duplex_with<S, R>(self, cfg: FrameConfig) -> Result<(Duplex<S, R>, Duplex<R, S>)>
    where
        S: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let ((a_tx, a_rx), (b_tx, b_rx)) = (self.pairs()?.duplex)(cfg)?;
        Ok((typed_duplex(a_tx, a_rx), typed_duplex(b_tx, b_rx)))
    }

    /// Creates a one-way channel on this transport whose messages are
    /// encoded with codec `C` (e.g. [`Postcard`](crate::Postcard), feature
    /// `postcard`) instead of CBOR; `cfg`'s codec is replaced by `C`'s.
    /// Handing an end to a process that adopts it with another codec fails
    /// that `adopt` with a `Protocol` error naming both codecs (and two
    /// ends that meet otherwise, e.g. through `conduit::named`, fail their
    /// handshake the same way).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use conduit::{Cbor, FrameConfig, Transport};
    /// let (tx, rx) = Transport::Pipe.channel_codec::<u32, Cbor>(FrameConfig::default())?;
    /// tx.send(&7)?;
    /// assert_eq!(rx.recv()?, 7);
    /// # Ok(()) }
    /// ```
    pub fn channel_codec<T, C>(self, cfg: FrameConfig) -> Result<(Sender<T, C>, Receiver<T, C>)>
    where
        T: Serialize + DeserializeOwned + 'static,
        C: conduit_core::Codec,
    {
        let cfg = FrameConfig::for_codec::<C>().with_max_frame(cfg.max_frame);
        let (tx, rx) = (self.pairs()?.channel)(cfg)?;
        Ok((Sender::from_raw(tx), Receiver::from_raw(rx)))
    }

    /// Like [`duplex_with`](Self::duplex_with) with codec `C` (see
    /// [`channel_codec`](Self::channel_codec)).
    #[allow(clippy::type_complexity, reason = "the two typed ends")]
    pub fn duplex_codec<S, R, C>(
        self,
        cfg: FrameConfig,
    ) -> Result<(Duplex<S, R, C>, Duplex<R, S, C>)>
    where
        S: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        C: conduit_core::Codec,
    {
        let cfg = FrameConfig::for_codec::<C>().with_max_frame(cfg.max_frame);
        let ((a_tx, a_rx), (b_tx, b_rx)) = (self.pairs()?.duplex)(cfg)?;
        Ok((
            Duplex::from_parts(Sender::from_raw(a_tx), Receiver::from_raw(a_rx)),
            Duplex::from_parts(Sender::from_raw(b_tx), Receiver::from_raw(b_rx)),
        ))
    }

    fn best(rank: fn(&Row) -> u8) -> Result<Transport> {
        ROWS.iter()
            .filter(|r| r.descriptor.is_some_and(|d| d.pairs.is_some()))
            .min_by_key(|r| rank(r))
            .and_then(|r| r.transport)
            .ok_or_else(no_transport)
    }

    /// The best enabled transport for one-way channels (`shm` when it is
    /// compiled in: several times the message rate of a pipe).
    pub fn best_channel() -> Result<Transport> {
        Transport::best(|r| r.channel_rank)
    }

    /// The best enabled transport for two-way connections (`shm` when it is
    /// compiled in: sub-microsecond round trips while both sides are busy).
    pub fn best_duplex() -> Result<Transport> {
        Transport::best(|r| r.duplex_rank)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(feature = "postcard", feature = "pipe"))]
    #[test]
    fn postcard_channel_and_duplex_round_trip_with_postcard_frames() {
        use crate::Postcard;
        let (tx, rx) = Transport::Pipe
            .channel_codec::<(u8, String), Postcard>(FrameConfig::default())
            .unwrap();
        tx.send(&(7, "seven".into())).unwrap();
        // Read as bytes: postcard's encoding, not CBOR's.
        let mut raw = Vec::new();
        rx.recv_bytes_into(&mut raw).unwrap();
        assert_eq!(raw, [7, 5, b's', b'e', b'v', b'e', b'n']);
        tx.send(&(8, "eight".into())).unwrap();
        assert_eq!(rx.recv().unwrap(), (8, "eight".into()));
        let (a, b) = Transport::Pipe
            .duplex_codec::<u32, String, Postcard>(FrameConfig::default())
            .unwrap();
        a.send(&5).unwrap();
        b.send(&"five".to_string()).unwrap();
        assert_eq!(b.recv().unwrap(), 5);
        assert_eq!(a.recv().unwrap(), "five");
    }

    #[test]
    fn every_enabled_row_names_its_crate_s_transport() {
        for r in ROWS {
            if let Some(d) = r.descriptor {
                assert_eq!(d.name, r.feature, "row {}", r.feature);
            }
        }
        for t in Transport::ALL {
            assert_eq!(Transport::from_name(t.name()), Some(*t));
        }
    }
}

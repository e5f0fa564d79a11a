//! Spinning, parking and waking: the wake-up protocol of the crate docs.

use std::sync::atomic::Ordering::{Release, SeqCst};
use std::time::{Duration, Instant};

use conduit_core::Result;

use crate::layout::Word;
use crate::mem::Region;
use crate::sys::Link;

use super::Params;

/// How a wait ended.
pub(super) enum Waited {
    /// The watched word changed, the peer rang, or the peer closed its end.
    Moved,
    /// The deadline passed.
    Deadline,
    /// The peer's process is gone (its lifeline closed).
    PeerGone,
}

/// The words one side parks with.
pub(super) struct ParkWords {
    /// Our "parked" flag (episode counter, odd while parked).
    flag: Word,
    /// The word we park on, which the peer bumps before waking us.
    bell: Word,
}

pub(super) const CONSUMER_PARK: ParkWords = ParkWords {
    flag: Word::RxWait,
    bell: Word::RxBell,
};

pub(super) const PRODUCER_PARK: ParkWords = ParkWords {
    flag: Word::TxWait,
    bell: Word::TxBell,
};

/// Spins for up to `limit` (and not past `deadline`) until `ready()`.
pub(super) fn spin(limit: Duration, deadline: Option<Instant>, ready: &dyn Fn() -> bool) -> bool {
    if ready() {
        return true;
    }
    if limit.is_zero() {
        return false;
    }
    let start = Instant::now();
    let mut end = start.checked_add(limit).unwrap_or(start);
    if let Some(d) = deadline {
        end = end.min(d);
    }
    loop {
        for _ in 0..64 {
            std::hint::spin_loop();
            if ready() {
                return true;
            }
        }
        if Instant::now() >= end {
            return false;
        }
    }
}

/// Spins, then parks until `ready()` (the peer published, moved its index
/// or closed), `deadline` passes, or the peer's process is gone. `ready` must
/// load the words it looks at with `SeqCst`.
///
/// The parked flag is set and cleared by this side only (the waker never
/// touches it, so a late waker cannot erase a later park). The bell is read
/// after the flag is set and before the final look at `ready`, and the
/// waker bumps the bell after publishing (a `SeqCst` store) and before
/// waking; so either this side sees the change, or the futex sees a changed
/// bell, or the wake-up finds this side asleep.
pub(super) fn wait_until(
    region: &Region,
    link: &Link,
    p: &Params,
    words: &ParkWords,
    ready: &dyn Fn() -> bool,
    episode: &mut u32,
    deadline: Option<Instant>,
) -> Result<Waited> {
    if spin(p.spin, deadline, ready) {
        return Ok(Waited::Moved);
    }
    let flag = region.word(words.flag);
    let bell = region.word(words.bell);
    loop {
        let now = Instant::now();
        let timeout = match deadline {
            Some(d) if d <= now => return Ok(Waited::Deadline),
            Some(d) => (d - now).min(p.tick),
            None => p.tick,
        };
        *episode = episode.wrapping_add(1) | 1;
        flag.store(*episode, SeqCst);
        let rung = bell.load(SeqCst);
        let was_ready = ready();
        let timed_out = if was_ready {
            Ok(false)
        } else {
            link.wait(bell, rung, timeout)
        };
        *episode = episode.wrapping_add(1);
        flag.store(*episode, Release);
        let timed_out = timed_out?;
        if was_ready || ready() {
            return Ok(Waited::Moved);
        }
        if timed_out {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(Waited::Deadline);
            }
            if !link.peer_alive() {
                return Ok(Waited::PeerGone);
            }
        } else {
            // Woken (or a spurious return): the peer rang but may not have
            // published yet; look again before parking anew.
            if spin(p.spin, deadline, ready) {
                return Ok(Waited::Moved);
            }
        }
    }
}

/// Rings the peer's bell if it is parked in an episode we have not woken yet.
pub(super) fn ring_peer(region: &Region, link: &Link, flag: Word, bell: Word, woken: &mut u32) {
    let episode = region.word(flag).load(SeqCst);
    if episode & 1 == 1 && episode != *woken {
        *woken = episode;
        let bell = region.word(bell);
        bell.fetch_add(1, SeqCst);
        link.wake(bell);
    }
}

/// Rings the peer's doorbell if it registered for one (its door word is 1;
/// see "Doorbell" in the crate docs): swaps the word to 0, so one
/// registration costs one byte. Call after the `SeqCst` store that
/// published (or closed).
pub(super) fn ring_door(region: &Region, link: &Link, door: Word) {
    let word = region.word(door);
    if word.load(SeqCst) != 0 && word.swap(0, SeqCst) != 0 {
        link.ring();
    }
}

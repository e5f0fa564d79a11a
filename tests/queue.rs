//! `conduit::queue` across real processes: producers and consumers are
//! children started with `conduit::Process` (so this target has
//! `harness = false` and calls `conduit::init()` first, like `process.rs`).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use conduit::{ErrorKind, Process, QueueConfig, QueueReceiver, QueueSender, Sender};
use conduit_tests::{check, fails};
use libtest_mimic::{Arguments, Failed, Trial};
use serde::{Deserialize, Serialize};

fn main() {
    conduit::init();
    let args = Arguments::from_args();
    let mut tests = vec![
        Trial::test(
            "fifo_from_one_producer_process",
            fifo_from_one_producer_process,
        ),
        Trial::test("sizes_up_to_the_maximum", sizes_up_to_the_maximum),
        Trial::test("every_message_once_mpmc", every_message_once_mpmc),
        Trial::test(
            "receivers_drain_then_disconnect_when_senders_exit",
            receivers_drain_then_disconnect_when_senders_exit,
        ),
        Trial::test(
            "killed_senders_and_receivers_count_as_gone",
            killed_senders_and_receivers_count_as_gone,
        ),
        Trial::test(
            "blocked_send_and_recv_notice_a_killed_peer",
            blocked_send_and_recv_notice_a_killed_peer,
        ),
        Trial::test("full_and_empty", full_and_empty),
        Trial::test("joinable_across_processes", joinable_across_processes),
        Trial::test(
            "serializing_a_queue_end_elsewhere_fails",
            serializing_a_queue_end_elsewhere_fails,
        ),
        Trial::test(
            "random_kills_lose_at_most_the_message_in_hand",
            random_kills_lose_at_most_the_message_in_hand,
        ),
        Trial::test(
            "try_send_of_a_streamed_message_does_not_block",
            try_send_of_a_streamed_message_does_not_block,
        ),
        Trial::test(
            "async_receiver_gets_a_streamed_message",
            async_receiver_gets_a_streamed_message,
        ),
        Trial::test(
            "poll_wakes_for_a_streamed_message",
            poll_wakes_for_a_streamed_message,
        ),
        Trial::test(
            "wait_wakes_for_a_streamed_message",
            wait_wakes_for_a_streamed_message,
        ),
        Trial::test(
            "async_sender_sharing_with_a_blocking_one_gets_room",
            async_sender_sharing_with_a_blocking_one_gets_room,
        ),
        Trial::test(
            "async_receiver_sharing_with_a_blocking_one_gets_the_other_item",
            async_receiver_sharing_with_a_blocking_one_gets_the_other_item,
        ),
    ];
    // Stops its producer with SIGSTOP: Unix only.
    if cfg!(unix) {
        tests.push(Trial::test(
            "try_recv_does_not_wait_for_a_stopped_streaming_producer",
            try_recv_does_not_wait_for_a_stopped_streaming_producer,
        ));
    }
    conduit_tests::run_with_processes(&args, tests);
}

/// One test message: who sent it, its number, and a body derived from both
/// (so corruption or mixing shows).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct Item {
    producer: u32,
    seq: u64,
    #[serde(with = "conduit::serde_bytes")]
    body: Vec<u8>,
}

impl Item {
    fn new(producer: u32, seq: u64, len: usize) -> Item {
        let body = (0..len)
            .map(|i| (producer as u64 * 31 + seq * 7 + i as u64) as u8)
            .collect();
        Item {
            producer,
            seq,
            body,
        }
    }

    fn intact(&self) -> bool {
        *self == Item::new(self.producer, self.seq, self.body.len())
    }
}

/// Sends `count` items tagged `producer`; returns how many it sent.
fn produce((tx, producer, count, len): (QueueSender<Item>, u32, u64, usize)) -> u64 {
    for seq in 0..count {
        if tx.send(&Item::new(producer, seq, len)).is_err() {
            return seq;
        }
    }
    count
}

/// Receives until the queue ends; returns what it got.
fn consume(rx: QueueReceiver<Item>) -> Vec<(u32, u64, bool)> {
    rx.iter()
        .map_while(|r| r.ok())
        .map(|i| (i.producer, i.seq, i.intact()))
        .collect()
}

fn fifo_from_one_producer_process() -> Result<(), Failed> {
    let (tx, rx) = conduit::queue::<Item>()?;
    let mut p = Process::spawn(produce, (tx, 1, 2000, 40))?;
    for seq in 0..2000 {
        let item = rx.recv_timeout(Duration::from_secs(20))?;
        check(
            item.producer == 1 && item.seq == seq && item.intact(),
            format!("expected item {seq}, got {item:?}"),
        )?;
    }
    check(p.join()? == 2000, "the producer did not send everything")?;
    // `spawn` consumed the parent's sender with the arguments, and the
    // child exited: no sender is left anywhere.
    let e = fails(rx.recv_timeout(Duration::from_secs(5)))?;
    check(
        e.is_disconnected(),
        format!("expected Disconnected, got {e}"),
    )
}

fn echo_sizes((rx, tx): (QueueReceiver<Vec<u8>>, QueueSender<Vec<u8>>)) -> usize {
    let mut n = 0;
    while let Ok(m) = rx.recv() {
        if tx.send(&m).is_err() {
            break;
        }
        n += 1;
    }
    n
}

fn sizes_up_to_the_maximum() -> Result<(), Failed> {
    let cfg = QueueConfig::default().max_message(8 << 20);
    let (to_child, child_rx) = conduit::queue_with::<Vec<u8>>(cfg)?;
    let (child_tx, from_child) = conduit::queue_with::<Vec<u8>>(cfg)?;
    let mut p = Process::spawn(echo_sizes, (child_rx, child_tx))?;
    let sizes = [0usize, 1, 100, 65_535, 65_536, 65_537, 300_000, 8 << 20];
    for (i, &n) in sizes.iter().enumerate() {
        let msg: Vec<u8> = (0..n).map(|b| (b * 13 + i) as u8).collect();
        to_child.send(&msg)?;
        let back = from_child.recv_timeout(Duration::from_secs(30))?;
        check(back == msg, format!("{n}-byte message came back different"))?;
    }
    // Above the maximum: refused up front, nothing sent.
    let e = fails(to_child.send(&vec![0u8; (8 << 20) + 1]))?;
    check(
        e.kind() == ErrorKind::TooLarge,
        format!("expected TooLarge, got {e}"),
    )?;
    check(
        to_child.is_empty(),
        format!("len {} after a refused send", to_child.len()),
    )?;
    drop(to_child);
    drop(from_child);
    check(
        p.join()? == sizes.len(),
        "the child echoed a different count",
    )
}

fn every_message_once_mpmc() -> Result<(), Failed> {
    let (tx, rx) = conduit::queue::<Item>()?;
    let per = 3000u64;
    let producers: Vec<_> = (0..4u32)
        .map(|p| Process::spawn(produce, (tx.clone(), p, per, 24)))
        .collect::<Result<_, _>>()?;
    let consumers: Vec<_> = (0..3)
        .map(|_| Process::spawn(consume, rx.clone()))
        .collect::<Result<_, _>>()?;
    drop(tx);
    drop(rx);
    for mut p in producers {
        check(p.join()? == per, "a producer could not send everything")?;
    }
    let mut seen = HashSet::new();
    for mut c in consumers {
        let got = c.join()?;
        // Per-producer order holds in what one consumer saw.
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        for (p, seq, intact) in got {
            check(intact, format!("item {p}/{seq} arrived corrupted"))?;
            check(
                seen.insert((p, seq)),
                format!("item {p}/{seq} arrived twice"),
            )?;
            if let Some(prev) = last.insert(p, seq) {
                check(prev < seq, format!("producer {p}: {seq} after {prev}"))?;
            }
        }
    }
    check(
        seen.len() as u64 == 4 * per,
        format!("{} of {} items arrived", seen.len(), 4 * per),
    )
}

fn receivers_drain_then_disconnect_when_senders_exit() -> Result<(), Failed> {
    let (tx, rx) = conduit::queue::<Item>()?;
    // `spawn` consumes the arguments: the child holds the only sender.
    let mut p = Process::spawn(produce, (tx, 0, 50, 8))?;
    check(p.join()? == 50, "the producer did not send everything")?;
    let got: Vec<Item> = rx.iter().collect::<Result<_, _>>()?;
    check(got.len() == 50, format!("drained {} of 50", got.len()))?;
    let e = fails(rx.recv_timeout(Duration::from_secs(5)))?;
    check(
        e.is_disconnected(),
        format!("expected Disconnected, got {e}"),
    )?;
    // And the other way: every receiver gone, send fails.
    let (tx, rx) = conduit::queue::<Item>()?;
    let mut c = Process::spawn(consume, rx)?;
    tx.send(&Item::new(0, 0, 1))?;
    // The consumer gets one item and keeps waiting; kill it.
    c.kill()?;
    let _ = c.join();
    let started = Instant::now();
    loop {
        match tx.send_timeout(&Item::new(0, 1, 1), Duration::from_millis(100)) {
            Err(e) if e.is_disconnected() => break,
            _ if started.elapsed() > Duration::from_secs(1) => {
                return Err("send still succeeds 1 s after the last receiver was killed".into())
            }
            _ => {}
        }
    }
    Ok(())
}

fn wait_forever(_: (QueueSender<Item>, QueueReceiver<Item>)) {
    std::thread::sleep(Duration::from_secs(600));
}

fn killed_senders_and_receivers_count_as_gone() -> Result<(), Failed> {
    // A killed sender: the receiver sees Disconnected within 1 s.
    let (tx, rx) = conduit::queue::<Item>()?;
    let (tx2, rx2) = conduit::queue::<Item>()?;
    let mut p = Process::spawn(wait_forever, (tx, rx2))?;
    drop(tx2);
    p.kill()?;
    let _ = p.join();
    let started = Instant::now();
    let e = fails(rx.recv_timeout(Duration::from_secs(5)))?;
    check(
        e.is_disconnected(),
        format!("expected Disconnected, got {e}"),
    )?;
    check(
        started.elapsed() < Duration::from_secs(1),
        format!("took {:?}", started.elapsed()),
    )
}

/// Sends one item, then waits to be killed.
fn send_one_then_wait((tx, rx): (QueueSender<Item>, QueueReceiver<Item>)) {
    if tx.send(&Item::new(7, 0, 16)).is_ok() {
        wait_forever((tx, rx));
    }
}

/// Runs `f` on a thread; its result, or a failure if it takes over 5 s
/// (a blocked call that never noticed the peer's death).
fn on_thread<T: Send + 'static>(
    f: impl FnOnce() -> conduit::Result<T> + Send + 'static,
) -> impl FnOnce() -> Result<conduit::Result<T>, Failed> {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(f());
    });
    move || {
        done_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| Failed::from("a blocked call did not return within 5 s of the kill"))
    }
}

/// `recv()` and `send()` without a deadline (on Linux they wait inside
/// `recvmsg`/`sendmsg`) return `Disconnected` within 1 s when the process
/// holding the other side's only ends is killed while they wait.
fn blocked_send_and_recv_notice_a_killed_peer() -> Result<(), Failed> {
    // A receiver blocked in recv(): its only producer is killed.
    let (tx, rx) = conduit::queue::<Item>()?;
    let (tx2, rx2) = conduit::queue::<Item>()?;
    let mut p = Process::spawn(send_one_then_wait, (tx, rx2))?;
    drop(tx2);
    check(rx.recv()?.producer == 7, "the first item")?;
    let result = on_thread(move || rx.recv());
    p.kill()?;
    let killed = Instant::now();
    let e = fails(result()?)?;
    check(
        e.is_disconnected(),
        format!("recv: expected Disconnected, got {e}"),
    )?;
    check(
        killed.elapsed() < Duration::from_secs(1),
        format!("recv: took {:?}", killed.elapsed()),
    )?;
    let _ = p.join();

    // A sender blocked in send() on a full queue: its only consumer is killed.
    let (tx, rx) = conduit::queue_with::<Vec<u8>>(QueueConfig::default().capacity_bytes(4096))?;
    let (items_tx, items_rx) = conduit::queue::<Item>()?;
    let mut p = Process::spawn(wait_forever_bytes, (items_tx, items_rx, rx))?;
    let mut sent = 0;
    while tx.try_send(&vec![1u8; 100]).is_ok() {
        sent += 1;
        check(sent < 100_000, "a 4 KiB queue never filled")?;
    }
    let result = on_thread(move || tx.send(&vec![2u8; 100]));
    p.kill()?;
    let killed = Instant::now();
    let e = fails(result()?)?;
    check(
        e.is_disconnected(),
        format!("send: expected Disconnected, got {e}"),
    )?;
    check(
        killed.elapsed() < Duration::from_secs(1),
        format!("send: took {:?}", killed.elapsed()),
    )?;
    let _ = p.join();
    Ok(())
}

fn wait_forever_bytes(
    (tx, rx, _bytes): (
        QueueSender<Item>,
        QueueReceiver<Item>,
        QueueReceiver<Vec<u8>>,
    ),
) {
    wait_forever((tx, rx));
}

fn full_and_empty() -> Result<(), Failed> {
    let (tx, rx) = conduit::queue_with::<Vec<u8>>(QueueConfig::default().capacity_bytes(4096))?;
    let e = fails(rx.try_recv())?;
    check(
        e.kind() == ErrorKind::Empty,
        format!("expected Empty, got {e}"),
    )?;
    let mut sent = 0usize;
    loop {
        match tx.try_send(&vec![1u8; 100]) {
            Ok(()) => sent += 1,
            Err(e) if e.kind() == ErrorKind::Full => break,
            Err(e) => return Err(format!("try_send: {e}").into()),
        }
        check(sent < 100_000, "a 4 KiB queue never filled")?;
    }
    check(
        tx.len() == sent,
        format!("len {} after {sent} sends", tx.len()),
    )?;
    let e = fails(tx.send_timeout(&vec![1u8; 100], Duration::from_millis(20)))?;
    check(e.is_timeout(), format!("expected Timeout, got {e}"))?;
    for _ in 0..sent {
        rx.try_recv()?;
    }
    check(rx.is_empty(), format!("len {} after draining", rx.len()))
}

/// Takes `n` items, marks each done, returns their sum.
fn work((rx, n): (QueueReceiver<u64>, usize)) -> u64 {
    let mut sum = 0;
    for _ in 0..n {
        match rx.recv() {
            Ok(v) => {
                sum += v;
                if rx.task_done().is_err() {
                    return u64::MAX;
                }
            }
            Err(_) => return u64::MAX,
        }
    }
    sum
}

fn joinable_across_processes() -> Result<(), Failed> {
    let (tx, rx) = conduit::queue::<u64>()?;
    for v in 1..=20 {
        tx.send(&v)?;
    }
    // Nobody marked anything done yet.
    let e = fails(tx.join_timeout(Duration::from_millis(30)))?;
    check(e.is_timeout(), format!("expected Timeout, got {e}"))?;
    let mut a = Process::spawn(work, (rx.clone(), 10))?;
    let mut b = Process::spawn(work, (rx.clone(), 10))?;
    tx.join_timeout(Duration::from_secs(20))?;
    check(
        a.join()? + b.join()? == 210,
        "the workers' sums do not add up",
    )?;
    // One more than was sent: refused.
    let e = fails(rx.task_done())?;
    check(
        e.kind() == ErrorKind::InvalidInput,
        format!("expected InvalidInput, got {e}"),
    )?;
    // Unfinished messages and no receiver left: join reports it.
    tx.send(&1)?;
    drop(rx);
    let e = fails(tx.join_timeout(Duration::from_secs(5)))?;
    check(
        e.is_disconnected(),
        format!("expected Disconnected, got {e}"),
    )
}

fn serializing_a_queue_end_elsewhere_fails() -> Result<(), Failed> {
    let (tx, rx) = conduit::queue::<u8>()?;
    let mut out = Vec::new();
    let Err(e) = ciborium::into_writer(&tx, &mut out) else {
        return Err("a QueueSender was serialized outside Process::spawn".into());
    };
    check(
        e.to_string().contains("conduit::Process::spawn"),
        format!("error: {e}"),
    )?;
    tx.send(&3)?;
    check(rx.recv()? == 3, "the queue after a refused serialization")
}

/// A consumer that reports every item to the parent over its own channel
/// the moment it has it, so that a kill loses at most the item in hand.
fn relay((rx, report): (QueueReceiver<Item>, Sender<(u32, u64, bool)>)) {
    while let Ok(item) = rx.recv() {
        if report
            .send(&(item.producer, item.seq, item.intact()))
            .is_err()
        {
            return;
        }
    }
}

/// The headline property: kill random producers and consumers at random
/// moments; every surviving message arrives exactly once, whole, in
/// per-producer order, and at most one message is lost per killed
/// consumer (plus, per killed producer, only messages it had not sent).
fn random_kills_lose_at_most_the_message_in_hand() -> Result<(), Failed> {
    let rounds = std::env::var("CONDUIT_QUEUE_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6u64);
    let mut seed = std::env::var("CONDUIT_QUEUE_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    for round in 0..rounds {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        kill_round(seed)
            .map_err(|e| format!("round {round} (CONDUIT_QUEUE_KILL_SEED={seed}): {e}"))?;
    }
    Ok(())
}

fn kill_round(seed: u64) -> Result<(), String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    // Linux: a small ring, so that the 70,000-byte items stream through it
    // in pieces and the kills also land part-way through streamed items.
    let cfg = if cfg!(target_os = "linux") {
        QueueConfig::default().capacity_bytes(64 << 10)
    } else {
        QueueConfig::default()
    };
    let (tx, rx) = conduit::queue_with::<Item>(cfg).map_err(|e| e.to_string())?;
    let per = 2000u64;
    let n_prod = 3u32;
    let n_cons = 3usize;
    let mut producers = Vec::new();
    for p in 0..n_prod {
        let len = [8usize, 200, 70_000][rng.usize(0..3)];
        let proc = Process::spawn(produce, (tx.clone(), p, per, len)).map_err(|e| e.to_string())?;
        producers.push((p, proc));
    }
    drop(tx);
    let mut consumers = Vec::new();
    let mut reports = Vec::new();
    for _ in 0..n_cons {
        let (report_tx, report_rx) =
            conduit::channel::<(u32, u64, bool)>().map_err(|e| e.to_string())?;
        consumers.push(Process::spawn(relay, (rx.clone(), report_tx)).map_err(|e| e.to_string())?);
        reports.push(report_rx);
    }
    drop(rx);
    // Kill one producer and one consumer (never all consumers) at random
    // moments while the traffic flows.
    let victim_p = rng.usize(0..n_prod as usize);
    let victim_c = rng.usize(0..n_cons);
    std::thread::sleep(Duration::from_millis(rng.u64(0..40)));
    producers[victim_p].1.kill().map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(rng.u64(0..40)));
    consumers[victim_c].kill().map_err(|e| e.to_string())?;
    // Collect every report until every consumer has ended.
    let mut seen: HashSet<(u32, u64)> = HashSet::new();
    let mut per_producer: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, r) in reports.iter().enumerate() {
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match r.recv_timeout(left) {
                Ok((p, seq, intact)) => {
                    if !intact {
                        return Err(format!("item {p}/{seq} arrived corrupted"));
                    }
                    if !seen.insert((p, seq)) {
                        return Err(format!("item {p}/{seq} arrived twice"));
                    }
                    if let Some(prev) = last.insert(p, seq) {
                        if prev >= seq {
                            return Err(format!("consumer {i}: producer {p}'s {seq} after {prev}"));
                        }
                    }
                    per_producer.entry(p).or_default().push(seq);
                }
                Err(e) if e.is_disconnected() => break,
                Err(e) => return Err(format!("consumer {i} hung: {e}")),
            }
        }
    }
    let mut lost_from_live = 0u64;
    for (p, mut proc) in producers {
        let sent = if p as usize == victim_p {
            let _ = proc.join();
            None
        } else {
            Some(proc.join().map_err(|e| e.to_string())?)
        };
        let got = per_producer.get(&p).map_or(0, |v| v.len() as u64);
        match sent {
            Some(sent) => {
                if sent != per {
                    return Err(format!("live producer {p} sent only {sent}"));
                }
                lost_from_live += sent - got;
            }
            None => {
                // A killed producer's messages: whatever it queued arrives,
                // which is a prefix of its sequence minus at most the items
                // the killed consumer had in hand.
                let max = per_producer.get(&p).and_then(|v| v.iter().max().copied());
                if let Some(max) = max {
                    lost_from_live += max + 1 - got;
                }
            }
        }
    }
    for mut c in consumers {
        let _ = c.join();
    }
    if lost_from_live > 1 {
        return Err(format!(
            "{lost_from_live} messages lost; one killed consumer may lose at most 1"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------
// Adversarial review (Linux shared-memory ring): streamed messages
// (longer than a quarter of the ring) and the deadlines / wake-ups around
// them.
// ---------------------------------------------------------------------

/// Runs `f` on a thread and waits for it at most `limit`: `None` when it
/// is still blocked (the thread is left behind; the test then drops the
/// ends that release it).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(f());
    });
    done_rx.recv_timeout(limit).ok()
}

/// `try_send` and `send_timeout` of a message longer than the ring never
/// fit while no consumer receives: they must come back (`Full` /
/// `Timeout`), not wait for consumers without a deadline.
fn try_send_of_a_streamed_message_does_not_block() -> Result<(), Failed> {
    let (tx, rx) = conduit::queue_with::<Vec<u8>>(QueueConfig::default().capacity_bytes(4096))?;
    // A queue of its own: the blocked try_send above keeps the producer lock.
    let (tx2, rx2) = conduit::queue_with::<Vec<u8>>(QueueConfig::default().capacity_bytes(4096))?;
    let tried = within(Duration::from_secs(5), move || {
        tx.try_send(&vec![7u8; 20_000]).map_err(|e| e.kind())
    });
    let timed = within(Duration::from_secs(5), move || {
        tx2.send_timeout(&vec![7u8; 20_000], Duration::from_millis(100))
            .map_err(|e| e.kind())
    });
    // Releases the blocked threads (every receiver gone).
    drop(rx);
    drop(rx2);
    check(
        tried.is_some(),
        "try_send of a 20000-byte message into an idle 4096-byte queue (consumer alive) \
         was still blocked after 5 s",
    )?;
    check(
        timed.is_some(),
        "send_timeout(100 ms) of a 20000-byte message into an idle 4096-byte queue was still blocked after 5 s",
    )
}

/// An async receiver waiting on an empty queue gets a message longer than
/// the ring: the producer streams it as the consumer frees room, so the
/// consumer has to be woken by the first piece, not by the whole message.
fn async_receiver_gets_a_streamed_message() -> Result<(), Failed> {
    let (tx, rx) = conduit::queue_with::<Item>(QueueConfig::default().capacity_bytes(4096))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio: {e}"))?;
    let got = rt.block_on(async move {
        let mut arx = rx.into_async()?;
        let mut fut = Box::pin(arx.recv());
        // The receive runs until it waits for a doorbell on the empty
        // queue (if it were still busy-polling, it would find the first
        // piece itself and the test would pass: it cannot fail wrongly).
        let first = tokio::select! {
            _ = &mut fut => false,
            _ = tokio::time::sleep(Duration::from_millis(200)) => true,
        };
        let sender = std::thread::spawn(move || tx.send(&Item::new(3, 0, 20_000)));
        // The timer first: a timeout that polls the receive when it fires
        // would hide a receive that nothing woke.
        let got = tokio::select! {
            biased;
            _ = tokio::time::sleep(Duration::from_secs(5)) => None,
            r = &mut fut => Some(r),
        };
        drop(fut);
        drop(arx); // releases a blocked sender
        let sent = sender.join();
        Ok::<_, conduit::Error>((first, got.map(|r| r.map(|i| i.intact())), sent.is_ok()))
    })?;
    let (first_pending, got, _) = got;
    check(
        first_pending,
        "the first poll found a message in an empty queue",
    )?;
    match got {
        Some(Ok(true)) => Ok(()),
        Some(Ok(false)) => Err("the streamed message arrived corrupted".into()),
        Some(Err(e)) => Err(format!("recv failed: {e}").into()),
        None => Err(
            "an async receiver waiting on an empty queue did not get a 20000-byte \
             message (4096-byte ring) within 5 s: the producer waits for room, the \
             receiver for a doorbell that is rung only after the whole message"
                .into(),
        ),
    }
}

fn signal(pid: u32, sig: &str) -> Result<(), Failed> {
    let st = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map_err(|e| format!("kill {sig}: {e}"))?;
    check(st.success(), format!("kill {sig} {pid} failed"))
}

/// `try_recv` (and `recv_timeout`) must not wait past their deadline for
/// the rest of a streamed message whose producer is alive but stopped (a
/// silent participant).
fn try_recv_does_not_wait_for_a_stopped_streaming_producer() -> Result<(), Failed> {
    let (tx, rx) = conduit::queue_with::<Item>(QueueConfig::default().capacity_bytes(4096))?;
    // 2,000 bytes: streamed (over a quarter of the ring) but it fits, so it
    // is published and taken all at once. (A receive that has begun a
    // message longer than the ring waits for its producer: documented.)
    let mut p = Process::spawn(produce, (tx, 1, 1, 2_000))?;
    // The first piece is in the ring: the producer is part-way through.
    // (Polled in short rounds: `poll` is not woken by a streamed message,
    // see `poll_wakes_for_a_streamed_message`.)
    let started = Instant::now();
    while !rx.poll(Duration::from_millis(50))? {
        check(
            started.elapsed() < Duration::from_secs(10),
            "the producer sent nothing",
        )?;
    }
    signal(p.pid(), "-STOP")?;
    let rx = std::sync::Arc::new(rx);
    let rx2 = std::sync::Arc::clone(&rx);
    let out = within(Duration::from_secs(3), move || {
        rx2.try_recv().map(|i| i.intact()).map_err(|e| e.kind())
    });
    // Lets the producer finish (the blocked try_recv then gets the message).
    signal(p.pid(), "-CONT")?;
    let _ = p.join();
    check(
        out.is_some(),
        "try_recv was still blocked 3 s later waiting for the rest of a streamed \
         message whose producer is stopped",
    )
}

/// `QueueReceiver::poll` (what `conduit::wait` uses) on an empty queue
/// wakes when a producer starts a message longer than the ring (the
/// producer cannot finish it until a consumer takes the first pieces).
fn poll_wakes_for_a_streamed_message() -> Result<(), Failed> {
    let (tx, rx) = conduit::queue_with::<Item>(QueueConfig::default().capacity_bytes(4096))?;
    // A child: it starts after this process is asleep in `poll` (if it
    // were quicker, `poll` would return at once and the test pass).
    let mut p = Process::spawn(produce, (tx, 1, 1, 20_000))?;
    let started = Instant::now();
    let ready = rx.poll(Duration::from_secs(5))?;
    let took = started.elapsed();
    let got = rx.recv_timeout(Duration::from_secs(5)).map(|i| i.intact());
    let _ = p.join();
    check(ready, "poll(5 s) said nothing arrived")?;
    check(matches!(got, Ok(true)), format!("recv after poll: {got:?}"))?;
    check(
        took < Duration::from_secs(1),
        format!(
            "poll on an empty queue took {took:?} to notice a 20000-byte message \
             (4096-byte ring): the doorbell rings only after the whole message"
        ),
    )
}

/// Child: at each ask, says it is about to receive, takes one item (a
/// blocking `recv`, which holds the consumer lock while it waits) and
/// reports it.
fn take_one_per_ask(
    (rx, asks, ready, got): (
        QueueReceiver<Item>,
        QueueReceiver<u32>,
        QueueSender<u32>,
        QueueSender<u64>,
    ),
) {
    while asks.recv().is_ok() {
        if ready.send(&0).is_err() {
            return;
        }
        match rx.recv() {
            Ok(i) => {
                if got.send(&i.seq).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// An async receiver shares a queue with a blocking receiver in another
/// process. Two items are sent while both wait: the blocking one takes one
/// (it holds the consumer lock while it waits), the async one must get the
/// other. Its attempt can land while the blocking receiver still holds the
/// lock (`Timeout`) after it took both doorbells: it then sleeps with an
/// item queued (fails within a few hundred rounds here).
fn async_receiver_sharing_with_a_blocking_one_gets_the_other_item() -> Result<(), Failed> {
    let (tx, rx) = conduit::queue::<Item>()?;
    let (asks_tx, asks_rx) = conduit::queue::<u32>()?;
    let (ready_tx, ready_rx) = conduit::queue::<u32>()?;
    let (got_tx, got_rx) = conduit::queue::<u64>()?;
    let mut p = Process::spawn(take_one_per_ask, (rx.clone(), asks_rx, ready_tx, got_tx))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio: {e}"))?;
    let out: Result<(), Failed> = rt.block_on(async {
        let mut arx = rx.into_async()?;
        for round in 0..1000u64 {
            // The async receive waits first (the usual case).
            let mut fut = Box::pin(arx.recv());
            tokio::select! {
                _ = &mut fut => return Err("an item in an empty queue".into()),
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
            asks_tx.send(&0)?;
            ready_rx.recv_timeout(Duration::from_secs(10))?;
            // The items go from another thread, while this one waits in
            // the runtime (as the async receiver's process would). The
            // pause is not synchronisation: it lets the blocking receiver
            // get past its spin into the futex sleep (the case that loses
            // the wake-up); a round where it did not cannot fail.
            let tx2 = tx.clone();
            let sender = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(2));
                tx2.send(&Item::new(1, 2 * round, 8))?;
                tx2.send(&Item::new(1, 2 * round + 1, 8))
            });
            let mine = tokio::select! {
                biased;
                _ = tokio::time::sleep(Duration::from_secs(2)) => None,
                r = &mut fut => Some(r?.seq),
            };
            drop(fut);
            sender.join().map_err(|_| "the sender thread panicked")??;
            let theirs = got_rx.recv_timeout(Duration::from_secs(10))?;
            let Some(mine) = mine else {
                // Was it there? A fresh receive tries at once.
                let there = tokio::select! {
                    biased;
                    r = arx.recv() => Some(r?.seq),
                    _ = tokio::time::sleep(Duration::from_millis(1)) => None,
                };
                return Err(format!(
                    "round {round}: the blocking receiver took {theirs}; the async \
                     receiver was not woken for 2 s (a fresh receive then found {there:?})"
                )
                .into());
            };
            check(
                mine / 2 == round && theirs / 2 == round && mine != theirs,
                format!("round {round}: got {mine} and {theirs}"),
            )?;
        }
        Ok(())
    });
    drop(asks_tx);
    let _ = p.join();
    out
}

/// The same through `conduit::wait`.
fn wait_wakes_for_a_streamed_message() -> Result<(), Failed> {
    let (tx, rx) = conduit::queue_with::<Item>(QueueConfig::default().capacity_bytes(4096))?;
    let mut p = Process::spawn(produce, (tx, 1, 1, 20_000))?;
    let started = Instant::now();
    let ready = conduit::wait(&[&rx], Some(Duration::from_secs(5)))?;
    let took = started.elapsed();
    let got = rx.recv_timeout(Duration::from_secs(5)).map(|i| i.intact());
    let _ = p.join();
    check(ready == [0], format!("wait(5 s) said {ready:?}"))?;
    check(matches!(got, Ok(true)), format!("recv after wait: {got:?}"))?;
    check(
        took < Duration::from_secs(1),
        format!(
            "conduit::wait on an empty queue took {took:?} to notice a 20000-byte \
             message (4096-byte ring)"
        ),
    )
}

/// Child: at each ask, says it is about to send, then sends one small
/// item (a blocking `send`, which holds the producer lock while it waits
/// for room).
fn send_one_per_ask((tx, asks, ready): (QueueSender<Item>, QueueReceiver<u64>, QueueSender<u32>)) {
    while let Ok(seq) = asks.recv() {
        if ready.send(&0).is_err() || tx.send(&Item::new(2, seq, 8)).is_err() {
            return;
        }
    }
}

/// An async sender shares a full queue with a blocking sender in another
/// process (which waits for room holding the producer lock). One large
/// item is received, which makes room for both small items: the async
/// sender must be woken and send. It is rung once, when the item is
/// taken; if its attempt finds the producer lock still held by the
/// blocking sender (woken by the same receive), it sleeps with room in
/// the queue and nothing rings again.
fn async_sender_sharing_with_a_blocking_one_gets_room() -> Result<(), Failed> {
    let (tx, rx) = conduit::queue_with::<Item>(QueueConfig::default().capacity_bytes(4096))?;
    let (asks_tx, asks_rx) = conduit::queue::<u64>()?;
    let (ready_tx, ready_rx) = conduit::queue::<u32>()?;
    let mut p = Process::spawn(send_one_per_ask, (tx.clone(), asks_rx, ready_tx))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio: {e}"))?;
    let out: Result<(), Failed> = rt.block_on(async {
        let mut atx = tx.clone().into_async()?;
        for round in 0..200u64 {
            // Empty the queue, then fill it with large items.
            while rx.try_recv().is_ok() {}
            let mut big = 0;
            while tx.try_send(&Item::new(1, round, 900)).is_ok() {
                big += 1;
            }
            check(big >= 2, format!("round {round}: only {big} large items fit"))?;
            // And the rest with items as small as the ones to come.
            while tx.try_send(&Item::new(1, round, 8)).is_ok() {}
            // The blocking sender waits for room (holding the lock).
            asks_tx.send(&round)?;
            ready_rx.recv_timeout(Duration::from_secs(10))?;
            // The async sender waits for room too.
            let item = Item::new(3, round, 8);
            let mut fut = Box::pin(atx.send(&item));
            tokio::select! {
                r = &mut fut => return Err(format!("round {round}: sent into a full queue: {r:?}").into()),
                // Not synchronisation: lets the blocking sender reach its
                // futex sleep; a round where it did not cannot fail.
                _ = tokio::time::sleep(Duration::from_millis(2)) => {}
            }
            // One large item taken: room for both small ones.
            check(rx.recv()?.producer == 1, "a large item first")?;
            let sent = tokio::select! {
                biased;
                _ = tokio::time::sleep(Duration::from_secs(2)) => None,
                r = &mut fut => Some(r),
            };
            drop(fut);
            match sent {
                Some(r) => r?,
                None => {
                    // Was there room? A fresh attempt tries at once.
                    let fresh = tx.try_send(&Item::new(3, round, 8));
                    return Err(format!(
                        "round {round}: the async sender was not woken for 2 s although \
                         a large item was taken (room for its 8-byte item); a fresh \
                         try_send then: {fresh:?}"
                    )
                    .into());
                }
            }
        }
        Ok(())
    });
    drop(asks_tx);
    drop(rx);
    let _ = p.join();
    out
}

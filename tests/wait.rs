//! `conduit::wait` across real processes: receivers and duplex endpoints of
//! every enabled transport, the queue, processes and named listeners.
//!
//! `harness = false` like `process.rs`: children re-execute this binary
//! through `conduit::init()`.

use std::time::Duration;

use conduit::{Duplex, Process, QueueReceiver, QueueSender, Receiver, Sender, Waitable};
use conduit_tests::check;
use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    conduit::init();
    let args = Arguments::from_args();
    let mut tests = vec![
        Trial::test("indices_of_every_transport", indices_of_every_transport),
        Trial::test("timeout_returns_empty", timeout_returns_empty),
        Trial::test("buffered_message_is_ready", buffered_message_is_ready),
        Trial::test("peer_death_makes_ready", peer_death_makes_ready),
        Trial::test("process_exit_is_ready", process_exit_is_ready),
        Trial::test("thousand_objects", thousand_objects),
        Trial::test("queue_receiver_wakes_wait", queue_receiver_wakes_wait),
        Trial::test("queue_recv_behind_a_wait", queue_recv_behind_a_wait),
        Trial::test(
            "queue_wait_races_another_receiver",
            queue_wait_races_another_receiver,
        ),
        Trial::test(
            "queue_killed_waiter_leaves_no_read_behind",
            queue_killed_waiter_leaves_no_read_behind,
        ),
    ];
    // Children talk to the parent over an anonymous channel: a build with
    // only the `named` transport cannot spawn them.
    let anonymous = !conduit::Transport::enabled().is_empty();
    tests = tests
        .into_iter()
        .map(|t| t.with_ignored_flag(!anonymous))
        .collect();
    #[cfg(feature = "named")]
    tests.push(
        Trial::test(
            "named_listener_and_connection",
            named::listener_and_connection,
        )
        .with_ignored_flag(!anonymous),
    );
    #[cfg(feature = "named")]
    tests.push(Trial::test(
        "named_listener_wait_then_accept",
        named::wait_then_accept,
    ));
    #[cfg(feature = "named")]
    tests.push(Trial::test(
        "named_vanished_client_then_real_one",
        named::vanished_client_then_real_one,
    ));
    #[cfg(feature = "named")]
    tests.push(Trial::test(
        "named_wait_while_another_thread_accepts",
        named::wait_while_another_thread_accepts,
    ));
    #[cfg(feature = "named")]
    tests.push(Trial::test(
        "named_mismatch_is_ready_then_reported_once",
        named::mismatch_is_ready_then_reported_once,
    ));
    #[cfg(feature = "named")]
    tests.push(Trial::test(
        "named_more_silent_clients_than_max_pending",
        named::more_silent_clients_than_max_pending,
    ));
    libtest_mimic::run(&args, tests).exit();
}

const LONG: Option<Duration> = Some(Duration::from_secs(10));
const SHORT: Option<Duration> = Some(Duration::from_millis(20));

/// The sending ends a child holds: one-way senders, duplex endpoints and a
/// queue sender, addressed by one index in that order.
#[derive(serde::Serialize, serde::Deserialize)]
struct Ends {
    txs: Vec<Sender<u32>>,
    duplexes: Vec<Duplex<u32, u32>>,
    queue: Option<QueueSender<u32>>,
}

impl Ends {
    fn send_on(&self, i: usize, v: u32) -> conduit::Result<()> {
        let (nt, nd) = (self.txs.len(), self.duplexes.len());
        if i < nt {
            self.txs[i].send(&v)
        } else if i < nt + nd {
            self.duplexes[i - nt].send(&v)
        } else if let Some(q) = &self.queue {
            q.send(&v)
        } else {
            Err(conduit::Error::new(
                conduit::ErrorKind::InvalidInput,
                "no such end",
            ))
        }
    }
}

/// The receiving ends the parent waits on, in the same order as [`Ends`].
struct Mine {
    rxs: Vec<Receiver<u32>>,
    duplexes: Vec<Duplex<u32, u32>>,
    queue: Option<QueueReceiver<u32>>,
}

impl Mine {
    fn objects(&self) -> Vec<&dyn Waitable> {
        let mut v: Vec<&dyn Waitable> = Vec::new();
        v.extend(self.rxs.iter().map(|r| r as &dyn Waitable));
        v.extend(self.duplexes.iter().map(|d| d as &dyn Waitable));
        v.extend(self.queue.iter().map(|q| q as &dyn Waitable));
        v
    }

    fn recv_on(&self, i: usize) -> conduit::Result<u32> {
        let (nt, nd) = (self.rxs.len(), self.duplexes.len());
        let d = Duration::from_secs(10);
        if i < nt {
            self.rxs[i].recv_timeout(d)
        } else if i < nt + nd {
            self.duplexes[i - nt].recv_timeout(d)
        } else {
            self.queue.as_ref().map_or_else(
                || {
                    Err(conduit::Error::new(
                        conduit::ErrorKind::InvalidInput,
                        "no such end",
                    ))
                },
                |q| q.recv_timeout(d),
            )
        }
    }
}

/// `per` one-way channels and `per` duplex connections of every enabled
/// transport, and a queue.
fn make_ends(per: usize) -> conduit::Result<(Mine, Ends)> {
    let mut mine = Mine {
        rxs: Vec::new(),
        duplexes: Vec::new(),
        queue: None,
    };
    let mut ends = Ends {
        txs: Vec::new(),
        duplexes: Vec::new(),
        queue: None,
    };
    for t in conduit::Transport::enabled() {
        for _ in 0..per {
            let (tx, rx) = t.channel::<u32>()?;
            ends.txs.push(tx);
            mine.rxs.push(rx);
            let (a, b) = t.duplex::<u32, u32>()?;
            mine.duplexes.push(a);
            ends.duplexes.push(b);
        }
    }
    let (qtx, qrx) = conduit::queue::<u32>()?;
    ends.queue = Some(qtx);
    mine.queue = Some(qrx);
    Ok((mine, ends))
}

/// A command bit: send a little later.
const LATER: u32 = 1 << 30;

/// Child: for each command `i`, sends `i` on end `i`, then acknowledges;
/// returns when the command channel closes. `u32::MAX` means "send a
/// burst of two on end 0".
fn sender((ends, cmds, acks): (Ends, Receiver<u32>, Sender<u32>)) -> u32 {
    let mut n = 0;
    for cmd in cmds.iter() {
        let Ok(i) = cmd else { break };
        if i == u32::MAX {
            let _ = ends.send_on(0, 1);
            let _ = ends.send_on(0, 2);
        } else if i & LATER != 0 {
            // Not synchronisation: makes it likely that the parent is
            // already inside `wait` when the message comes (the test passes
            // either way when `wait` works).
            std::thread::sleep(Duration::from_millis(20));
            let _ = ends.send_on((i & !LATER) as usize, i & !LATER);
        } else {
            let _ = ends.send_on(i as usize, i);
        }
        n += 1;
        if acks.send(&i).is_err() {
            break;
        }
    }
    n
}

struct Child {
    p: Process<u32>,
    cmds: Sender<u32>,
    acks: Receiver<u32>,
}

impl Child {
    fn start(ends: Ends) -> conduit::Result<Child> {
        let (cmds, cmds_rx) = conduit::channel::<u32>()?;
        let (acks_tx, acks) = conduit::channel::<u32>()?;
        let p = Process::spawn(sender, (ends, cmds_rx, acks_tx))?;
        Ok(Child { p, cmds, acks })
    }

    /// Makes the child send on `i` and waits until it has.
    fn send_on(&self, i: u32) -> Result<(), Failed> {
        self.cmds.send(&i)?;
        let ack = self.acks.recv_timeout(Duration::from_secs(10))?;
        check(ack == i, format!("ack {ack} for {i}"))
    }
}

fn indices_of_every_transport() -> Result<(), Failed> {
    let (mine, ends) = make_ends(2)?;
    let n = mine.objects().len();
    let child = Child::start(ends)?;
    let objects = mine.objects();
    check(
        conduit::wait(&objects, SHORT)?.is_empty(),
        "nothing sent yet",
    )?;
    // Each end alone, then two at once.
    for i in 0..n {
        child.send_on(i as u32)?;
        let ready = conduit::wait(&objects, LONG)?;
        check(ready == [i], format!("sent on {i}, ready {ready:?}"))?;
        check(mine.recv_on(i)? == i as u32, format!("value on {i}"))?;
    }
    // The message comes while the parent waits: a transport must wake it.
    for i in 0..n {
        child.cmds.send(&(i as u32 | LATER))?;
        let ready = conduit::wait(&objects, LONG)?;
        check(ready == [i], format!("sent on {i} later, ready {ready:?}"))?;
        check(mine.recv_on(i)? == i as u32, format!("value on {i}"))?;
        child.acks.recv_timeout(Duration::from_secs(10))?;
    }
    for (i, j) in [(0, n - 1), (1, n / 2)] {
        child.send_on(j as u32)?;
        child.send_on(i as u32)?;
        let ready = conduit::wait(&objects, LONG)?;
        check(
            ready == [i, j],
            format!("sent on {i} and {j}, ready {ready:?}"),
        )?;
        mine.recv_on(i)?;
        mine.recv_on(j)?;
    }
    check(conduit::wait(&objects, SHORT)?.is_empty(), "all received")?;
    drop(child.cmds);
    let mut p = child.p;
    check(p.join()? == 2 * n as u32 + 4, "child's count")
}

fn timeout_returns_empty() -> Result<(), Failed> {
    let (mine, ends) = make_ends(1)?;
    let child = Child::start(ends)?;
    let objects = mine.objects();
    for t in [
        Duration::ZERO,
        Duration::from_millis(1),
        Duration::from_millis(50),
    ] {
        let ready = conduit::wait(&objects, Some(t))?;
        check(ready.is_empty(), format!("timeout {t:?}: ready {ready:?}"))?;
    }
    check(conduit::wait(&[], SHORT)?.is_empty(), "no objects")?;
    let e = conduit::wait(&[], None)
        .err()
        .ok_or("no objects, no timeout: returned")?;
    check(
        e.kind() == conduit::ErrorKind::InvalidInput,
        format!("no objects, no timeout: {e}"),
    )?;
    drop(child.cmds);
    let mut p = child.p;
    check(p.join()? == 0, "child's count")
}

/// A stream receiver that read two messages in one go keeps the second in
/// its own buffer: the socket is empty, yet the receiver is ready.
fn buffered_message_is_ready() -> Result<(), Failed> {
    for t in conduit::Transport::enabled() {
        let (tx, rx) = t.channel::<u32>()?;
        let (_unused_tx, idle) = t.channel::<u32>()?;
        let child = Child::start(Ends {
            txs: vec![tx],
            duplexes: Vec::new(),
            queue: None,
        })?;
        child.send_on(u32::MAX)?;
        let objects: [&dyn Waitable; 2] = [&idle, &rx];
        check(
            conduit::wait(&objects, LONG)? == [1],
            format!("{}: first", t.name()),
        )?;
        check(rx.recv()? == 1, "first value")?;
        let ready = conduit::wait(&objects, LONG)?;
        check(
            ready == [1],
            format!("{}: second message, ready {ready:?}", t.name()),
        )?;
        check(rx.recv()? == 2, "second value")?;
        check(
            conduit::wait(&objects, SHORT)?.is_empty(),
            format!("{}: drained", t.name()),
        )?;
        drop(child.cmds);
        let mut p = child.p;
        p.join()?;
    }
    Ok(())
}

/// Child: holds the ends until killed.
fn hold((ends, ready): (Ends, Sender<u32>)) -> u32 {
    let _ = ready.send(&1);
    std::thread::sleep(Duration::from_secs(120));
    drop(ends);
    0
}

fn peer_death_makes_ready() -> Result<(), Failed> {
    let (mine, ends) = make_ends(1)?;
    let (ready_tx, ready_rx) = conduit::channel::<u32>()?;
    let mut p = Process::spawn(hold, (ends, ready_tx))?;
    ready_rx.recv_timeout(Duration::from_secs(10))?;
    let objects = mine.objects();
    {
        let mut with_p = objects.clone();
        with_p.push(&p);
        check(conduit::wait(&with_p, SHORT)?.is_empty(), "child alive")?;
    }
    p.kill()?;
    for (i, o) in objects.iter().enumerate() {
        let ready = conduit::wait(&[*o], Some(Duration::from_secs(5)))?;
        check(ready == [0], format!("object {i} not ready after the kill"))?;
        let err = match mine.recv_on(i) {
            Ok(v) => return Err(format!("object {i}: got {v} from a dead child").into()),
            Err(e) => e,
        };
        check(err.is_disconnected(), format!("object {i}: {err}"))?;
    }
    let ready = conduit::wait(&objects, LONG)?;
    check(
        ready.len() == objects.len(),
        format!("all ready: {ready:?}"),
    )?;
    check(conduit::wait(&[&p], LONG)? == [0], "killed process")?;
    Ok(())
}

/// Child: returns `x` once told to.
fn finish_when_told((x, go): (u32, Receiver<u32>)) -> u32 {
    let _ = go.recv();
    x
}

fn process_exit_is_ready() -> Result<(), Failed> {
    let (go1, rx1) = conduit::channel::<u32>()?;
    let (go2, rx2) = conduit::channel::<u32>()?;
    let mut p1 = Process::spawn(finish_when_told, (1, rx1))?;
    let mut p2 = Process::spawn(finish_when_told, (2, rx2))?;
    check(
        conduit::wait(&[&p1, &p2], SHORT)?.is_empty(),
        "both running",
    )?;
    go2.send(&0)?;
    check(conduit::wait(&[&p1, &p2], LONG)? == [1], "second exited")?;
    check(p2.join()? == 2, "second result")?;
    // A joined process stays ready.
    check(conduit::wait(&[&p1, &p2], LONG)? == [1], "joined one")?;
    go1.send(&0)?;
    check(conduit::wait(&[&p1], LONG)? == [0], "first exited")?;
    check(p1.join()? == 1, "first result")
}

fn thousand_objects() -> Result<(), Failed> {
    // 4 children with 250 mixed one-way channels each (every enabled
    // transport in turn), plus 4 queue receivers and the 4 processes.
    let transports = conduit::Transport::enabled();
    let mut rxs: Vec<Receiver<u32>> = Vec::new();
    let mut children = Vec::new();
    let mut queues = Vec::new();
    for c in 0..4 {
        let mut txs = Vec::new();
        for k in 0..250 {
            let t = transports[(c * 250 + k) % transports.len()];
            let (tx, rx) = t.channel::<u32>()?;
            txs.push(tx);
            rxs.push(rx);
        }
        let (qtx, qrx) = conduit::queue::<u32>()?;
        queues.push(qrx);
        children.push(Child::start(Ends {
            txs,
            duplexes: Vec::new(),
            queue: Some(qtx),
        })?);
    }
    let mut objects: Vec<&dyn Waitable> = rxs.iter().map(|r| r as &dyn Waitable).collect();
    objects.extend(queues.iter().map(|q| q as &dyn Waitable));
    objects.extend(children.iter().map(|c| &c.p as &dyn Waitable));
    check(objects.len() == 1008, "1008 objects")?;
    check(conduit::wait(&objects, SHORT)?.is_empty(), "idle")?;
    // Child 3 sends on its channel 249 (object 999), child 0 on its queue
    // (object 1000), child 1 on its channel 7 (object 257).
    children[3].send_on(249)?;
    children[0].send_on(250)?;
    children[1].send_on(7)?;
    let ready = conduit::wait(&objects, LONG)?;
    check(ready == [257, 999, 1000], format!("ready {ready:?}"))?;
    check(rxs[999].recv()? == 249 && rxs[257].recv()? == 7, "values")?;
    check(queues[0].recv()? == 250, "queue value")?;
    // Every child gone: every object is ready.
    let mut procs = Vec::new();
    for c in children {
        drop(c.cmds);
        procs.push(c.p);
    }
    for (p, want) in procs.iter_mut().zip([1, 1, 0, 1]) {
        check(p.join()? == want, "child's count")?;
    }
    let mut objects: Vec<&dyn Waitable> = rxs.iter().map(|r| r as &dyn Waitable).collect();
    objects.extend(queues.iter().map(|q| q as &dyn Waitable));
    objects.extend(procs.iter().map(|p| p as &dyn Waitable));
    let ready = conduit::wait(&objects, LONG)?;
    check(
        ready.len() == 1008,
        format!("{} of 1008 ready after the children exited", ready.len()),
    )
}

#[cfg(feature = "named")]
mod named {
    use super::*;

    /// Child: connects to `name`, sends `x`, waits for the reply.
    fn client((name, x): (String, u32)) -> u32 {
        let Ok(conn) = conduit::named::connect::<u32, u32>(&name) else {
            return 0;
        };
        let _ = conn.send(&x);
        conn.recv().unwrap_or(0)
    }

    pub(super) fn listener_and_connection() -> Result<(), Failed> {
        let name = format!(
            "conduit-wait-test-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        );
        let listener = conduit::named::Listener::<u32, u32>::bind(&name)?;
        let (_tx, idle) = conduit::channel::<u32>()?;
        // Every platform (on Windows this was `Unsupported` before).
        check(
            conduit::wait(&[&idle, &listener], SHORT)?.is_empty(),
            "no client yet",
        )?;
        let mut p = Process::spawn(client, (name.clone(), 41))?;
        check(
            conduit::wait(&[&idle, &listener], LONG)? == [1],
            "client waiting",
        )?;
        let conn = listener.accept_timeout(Duration::from_secs(10))?;
        check(
            conduit::wait(&[&idle, &conn], LONG)? == [1],
            "message on the connection",
        )?;
        let x = conn.recv()?;
        conn.send(&(x + 1))?;
        check(p.join()? == 42, "reply")?;
        // The client is gone: its connection is ready (Disconnected).
        check(conduit::wait(&[&idle, &conn], LONG)? == [1], "client gone")?;
        check(
            conn.recv().map_err(|e| e.is_disconnected()).err() == Some(true),
            "disconnected",
        )
    }

    /// Client thread: connects, sends `x`, returns the reply.
    fn thread_client(name: String, x: u32) -> std::thread::JoinHandle<conduit::Result<u32>> {
        std::thread::spawn(move || {
            let conn = conduit::named::connect_timeout::<u32, u32>(&name, Duration::from_secs(10))?;
            conn.send(&x)?;
            conn.recv()
        })
    }

    /// `wait` on a lone listener: ready once a client connects, `accept`
    /// then takes that client (handshake included), and the listener is
    /// not ready again until the next client: its readiness is the
    /// client's, not a signal left behind.
    pub(super) fn wait_then_accept() -> Result<(), Failed> {
        let name = format!(
            "conduit-wait-accept-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        );
        let listener = conduit::named::Listener::<u32, u32>::bind(&name)?;
        let objects: [&dyn Waitable; 1] = [&listener];
        check(conduit::wait(&objects, SHORT)?.is_empty(), "no client yet")?;
        for x in 0..3 {
            let client = thread_client(name.clone(), x);
            check(
                conduit::wait(&objects, LONG)? == [0],
                format!("client {x} waiting"),
            )?;
            // Ready stays ready until the client is taken.
            check(
                conduit::wait(&objects, SHORT)? == [0],
                format!("client {x} still waiting"),
            )?;
            let conn = listener.accept_timeout(Duration::from_secs(10))?;
            let got = conn.recv_timeout(Duration::from_secs(10))?;
            conn.send(&(got + 100))?;
            let reply = client.join().map_err(|_| "client panicked")??;
            check(reply == x + 100, format!("reply {reply} to {x}"))?;
            check(
                conduit::wait(&objects, SHORT)?.is_empty(),
                format!("nobody waiting after client {x}"),
            )?;
        }
        Ok(())
    }

    /// A client that connects without the conduit protocol (a raw open of
    /// the endpoint), kept open until dropped.
    fn raw_client(endpoint: &str) -> std::io::Result<RawClient> {
        #[cfg(windows)]
        {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(endpoint)
        }
        #[cfg(unix)]
        {
            std::os::unix::net::UnixStream::connect(endpoint)
        }
    }
    #[cfg(windows)]
    type RawClient = std::fs::File;
    #[cfg(unix)]
    type RawClient = std::os::unix::net::UnixStream;

    /// Opens a raw client, while the listener's pending instance is busy
    /// (Windows: `ERROR_PIPE_BUSY` until the listener looks again) giving
    /// the listener a look with a zero-timeout `wait`.
    fn raw_client_retrying(
        listener: &conduit::named::Listener<u32, u32>,
    ) -> Result<RawClient, Failed> {
        let mut last = None;
        for _ in 0..10_000 {
            match raw_client(listener.endpoint()) {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
            let objects: [&dyn Waitable; 1] = [listener];
            conduit::wait(&objects, Some(Duration::ZERO))?;
            std::thread::yield_now();
        }
        Err(format!("cannot open a raw client: {last:?}").into())
    }

    /// A client that connects and leaves before it is accepted, seen by a
    /// `wait` (ready): the `accept` that follows times out (nothing to
    /// take) without an error, the listener is not left ready, and the
    /// next real client is accepted.
    pub(super) fn vanished_client_then_real_one() -> Result<(), Failed> {
        let name = format!(
            "conduit-wait-vanish-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        );
        let listener = conduit::named::Listener::<u32, u32>::bind(&name)?;
        let objects: [&dyn Waitable; 1] = [&listener];
        for round in 0..3 {
            // Arms the listener's look for a client (Windows: the connect
            // in flight).
            check(
                conduit::wait(&objects, Some(Duration::ZERO))?.is_empty(),
                format!("round {round}: no client yet"),
            )?;
            let raw = raw_client_retrying(&listener)?;
            check(
                conduit::wait(&objects, LONG)? == [0],
                format!("round {round}: raw client waiting"),
            )?;
            drop(raw);
            match listener.accept_timeout(Duration::from_millis(300)) {
                Err(e) if e.is_timeout() => {}
                Err(e) => return Err(format!("round {round}: accept failed: {e}").into()),
                Ok(_) => return Err(format!("round {round}: accepted a vanished client").into()),
            }
            check(
                conduit::wait(&objects, SHORT)?.is_empty(),
                format!("round {round}: ready with nobody waiting"),
            )?;
            let client = thread_client(name.clone(), round);
            check(
                conduit::wait(&objects, LONG)? == [0],
                format!("round {round}: real client waiting"),
            )?;
            let conn = listener.accept_timeout(Duration::from_secs(10))?;
            let got = conn.recv_timeout(Duration::from_secs(10))?;
            conn.send(&(got + 100))?;
            let reply = client.join().map_err(|_| "client panicked")??;
            check(reply == round + 100, format!("reply {reply} to {round}"))?;
        }
        Ok(())
    }

    /// One thread accepts clients while another calls `wait` on the same
    /// listener over and over (both look at the waiting pipe instance):
    /// every client is served, and neither call fails or hangs.
    pub(super) fn wait_while_another_thread_accepts() -> Result<(), Failed> {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        const CLIENTS: u32 = 12;
        let name = format!(
            "conduit-wait-race-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        );
        let listener = conduit::named::Listener::<u32, u32>::bind(&name)?;
        let done = AtomicBool::new(false);
        std::thread::scope(|s| -> Result<(), Failed> {
            let waiter = s.spawn(|| -> conduit::Result<u32> {
                let objects: [&dyn Waitable; 1] = [&listener];
                let mut ready = 0;
                while !done.load(SeqCst) {
                    ready += conduit::wait(&objects, Some(Duration::from_millis(5)))?.len() as u32;
                }
                Ok(ready)
            });
            let clients: Vec<_> = (0..CLIENTS)
                .map(|x| thread_client(name.clone(), x))
                .collect();
            let mut served = Vec::new();
            let accepted = (|| -> Result<(), Failed> {
                for _ in 0..CLIENTS {
                    let conn = listener.accept_timeout(Duration::from_secs(10))?;
                    let x = conn.recv_timeout(Duration::from_secs(10))?;
                    conn.send(&(x + 100))?;
                    served.push(x);
                }
                Ok(())
            })();
            done.store(true, SeqCst);
            let waits = waiter.join().map_err(|_| "waiter panicked")?;
            accepted?;
            waits?;
            for (x, c) in clients.into_iter().enumerate() {
                let reply = c.join().map_err(|_| "client panicked")??;
                check(reply == x as u32 + 100, format!("reply {reply} to {x}"))?;
            }
            served.sort_unstable();
            check(
                served == (0..CLIENTS).collect::<Vec<_>>(),
                format!("served {served:?}"),
            )
        })
    }

    /// A client with another `FrameConfig`: `wait` says ready, `accept`
    /// reports the mismatch (`Protocol`) once, the listener is not left
    /// ready, and the next client is served. Blocking, then async.
    pub(super) fn mismatch_is_ready_then_reported_once() -> Result<(), Failed> {
        let name = format!(
            "conduit-wait-mismatch-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        );
        let mismatched = |name: &str| {
            let name = name.to_owned();
            std::thread::spawn(move || {
                let cfg = conduit::FrameConfig::default().with_max_frame(4096);
                conduit::named::connect_timeout_with::<u32, u32>(
                    &name,
                    cfg,
                    Duration::from_secs(10),
                )
                .map(|_| ())
            })
        };
        let listener = conduit::named::Listener::<u32, u32>::bind(&name)?;
        let objects: [&dyn Waitable; 1] = [&listener];
        let bad = mismatched(&name);
        check(
            conduit::wait(&objects, LONG)? == [0],
            "mismatched client waiting",
        )?;
        match listener.accept_timeout(Duration::from_secs(10)) {
            Err(e) if e.kind() == conduit::ErrorKind::Protocol => {}
            Err(e) => return Err(format!("accept: {e} instead of a mismatch").into()),
            Ok(_) => return Err("accepted a mismatched client".into()),
        }
        check(
            bad.join().map_err(|_| "client panicked")?.is_err(),
            "the mismatched client connected",
        )?;
        check(
            conduit::wait(&objects, SHORT)?.is_empty(),
            "ready after the mismatch was reported",
        )?;
        let client = thread_client(name.clone(), 3);
        check(conduit::wait(&objects, LONG)? == [0], "client waiting")?;
        let conn = listener.accept_timeout(Duration::from_secs(10))?;
        let got = conn.recv_timeout(Duration::from_secs(10))?;
        conn.send(&(got + 100))?;
        check(
            client.join().map_err(|_| "client panicked")?? == 103,
            "reply",
        )?;
        // The same through the async listener.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let listener = listener.into_async()?;
            let bad = mismatched(&name);
            match tokio::time::timeout(Duration::from_secs(10), listener.accept()).await? {
                Err(e) if e.kind() == conduit::ErrorKind::Protocol => {}
                Err(e) => return Err(format!("async accept: {e} instead of a mismatch").into()),
                Ok(_) => return Err("async: accepted a mismatched client".into()),
            }
            check(
                bad.join().map_err(|_| "client panicked")?.is_err(),
                "async: the mismatched client connected",
            )?;
            let client = thread_client(name.clone(), 4);
            let mut conn =
                tokio::time::timeout(Duration::from_secs(10), listener.accept()).await??;
            let got = conn.recv().await?;
            conn.send(&(got + 100)).await?;
            check(
                client.join().map_err(|_| "client panicked")?? == 104,
                "async reply",
            )
        })
    }

    /// More silent clients (connected, never answering) than
    /// `MAX_PENDING` handshakes at once: `accept` takes no more while
    /// they run, and a real client that comes after them is accepted once
    /// their handshake timeouts pass; `wait` stays usable throughout.
    pub(super) fn more_silent_clients_than_max_pending() -> Result<(), Failed> {
        // conduit_named::MAX_PENDING (128) and one more.
        const SILENT: usize = 129;
        let name = format!(
            "conduit-wait-silent-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        );
        let listener = conduit::named::Listener::<u32, u32>::bind(&name)?
            .with_handshake_timeout(Duration::from_millis(1500));
        let mut raws = Vec::with_capacity(SILENT);
        for i in 0..SILENT {
            raws.push(raw_client_retrying(&listener)?);
            // Starts its set-up (or, once MAX_PENDING run, leaves it
            // waiting); nothing completes.
            match listener.accept_timeout(Duration::from_millis(1)) {
                Err(e) if e.is_timeout() => {}
                Err(e) => return Err(format!("silent client {i}: accept failed: {e}").into()),
                Ok(_) => return Err(format!("silent client {i} was accepted").into()),
            }
        }
        let client = thread_client(name.clone(), 5);
        let objects: [&dyn Waitable; 1] = [&listener];
        let conn = listener.accept_timeout(Duration::from_secs(20))?;
        let got = conn.recv_timeout(Duration::from_secs(10))?;
        conn.send(&(got + 100))?;
        let reply = client.join().map_err(|_| "client panicked")??;
        check(reply == 105, format!("reply {reply}"))?;
        drop(raws);
        // Every silent client is gone or dropped: nothing to accept.
        match listener.accept_timeout(Duration::from_millis(300)) {
            Err(e) if e.is_timeout() => {}
            Err(e) => return Err(format!("accept after the silent clients: {e}").into()),
            Ok(_) => return Err("accepted a silent client".into()),
        }
        check(
            conduit::wait(&objects, SHORT)?.is_empty(),
            "ready with nobody waiting",
        )
    }
}

/// A blocking receive queued behind the zero-byte read that a timed-out
/// `wait` left in flight (Windows) gets the next message: the read that
/// only watches does not swallow the wake-up of the one that takes.
fn queue_recv_behind_a_wait() -> Result<(), Failed> {
    let (tx, rx) = conduit::queue::<u32>()?;
    let objects: [&dyn Waitable; 1] = [&rx];
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let rx2 = rx.clone();
    std::thread::scope(|s| -> Result<(), Failed> {
        let (go_tx, go_rx) = std::sync::mpsc::channel::<bool>();
        let receiver = s.spawn(move || -> conduit::Result<Vec<u32>> {
            let mut got = Vec::new();
            while go_rx.recv().unwrap_or(false) {
                let _ = started_tx.send(());
                got.push(rx2.recv_timeout(Duration::from_secs(5))?);
            }
            Ok(got)
        });
        for round in 0..50u32 {
            // Leaves the zero-byte read in flight.
            check(
                conduit::wait(&objects, Some(Duration::ZERO))?.is_empty(),
                format!("round {round}: empty"),
            )?;
            go_tx.send(true).map_err(|_| "receiver gone")?;
            started_rx.recv().map_err(|_| "receiver gone")?;
            tx.send(&round)?;
            // The next round's wait needs the message taken first: the
            // receiver answers by taking it; a zero-timeout wait would
            // otherwise see it.
            while conduit::wait(&objects, Some(Duration::ZERO))? == [0] {
                if receiver.is_finished() {
                    break;
                }
                std::thread::yield_now();
            }
            if receiver.is_finished() {
                break;
            }
        }
        drop(go_tx);
        let got = receiver.join().map_err(|_| "receiver panicked")??;
        check(
            got == (0..50).collect::<Vec<_>>(),
            format!("received {got:?}"),
        )
    })
}

/// Child: receives until every sender is gone; returns what it got.
fn queue_take_all(rx: QueueReceiver<u32>) -> Vec<u32> {
    let mut got = Vec::new();
    while let Ok(x) = rx.recv() {
        got.push(x);
    }
    got
}

/// `wait` then `try_recv` on a queue while a child receives from the same
/// queue: a ready that the child overtook gives `Empty` (nothing lost,
/// nothing twice), the wait never stays ready on an empty queue (the
/// parent would spin) nor misses a message, and once the senders are gone
/// both ends see it.
fn queue_wait_races_another_receiver() -> Result<(), Failed> {
    const N: u32 = 2000;
    let (tx, rx) = conduit::queue::<u32>()?;
    let mut child = Process::spawn(queue_take_all, rx.clone())?;
    let producer = std::thread::spawn(move || -> conduit::Result<()> {
        for i in 0..N {
            tx.send(&i)?;
        }
        Ok(())
    });
    let objects: [&dyn Waitable; 1] = [&rx];
    let mut mine = Vec::new();
    let (mut empty, mut waits) = (0u32, 0u32);
    loop {
        waits += 1;
        check(
            waits < 20 * N,
            format!("{waits} waits for {N} messages: ready without a message"),
        )?;
        check(
            conduit::wait(&objects, LONG)? == [0],
            format!("no message or end in 10 s ({} taken here)", mine.len()),
        )?;
        match rx.try_recv() {
            Ok(x) => mine.push(x),
            Err(e) if e.kind() == conduit::ErrorKind::Empty => empty += 1,
            Err(e) if e.is_disconnected() => break,
            Err(e) => return Err(format!("try_recv: {e}").into()),
        }
    }
    producer.join().map_err(|_| "producer panicked")??;
    let theirs = child.join()?;
    let mut all: Vec<u32> = mine.iter().chain(&theirs).copied().collect();
    all.sort_unstable();
    check(
        all == (0..N).collect::<Vec<_>>(),
        format!(
            "{} here + {} in the child ({empty} overtaken readies): lost or doubled",
            mine.len(),
            theirs.len()
        ),
    )
}

/// Child: leaves a wait's look at the queue in flight (Windows: the
/// zero-byte read), says so, then blocks until killed.
fn queue_arm_and_hold((rx, armed, hold): (QueueReceiver<u32>, Sender<u32>, Receiver<u32>)) -> u32 {
    let objects: [&dyn Waitable; 1] = [&rx];
    let n = conduit::wait(&objects, Some(Duration::ZERO)).map_or(9, |r| r.len() as u32);
    let _ = armed.send(&n);
    let _ = hold.recv();
    0
}

/// Children that left a wait's look at the queue in flight are killed
/// (their handles closed by the OS, not by our drop): the parent's
/// receives and waits still get every message.
fn queue_killed_waiter_leaves_no_read_behind() -> Result<(), Failed> {
    let (tx, rx) = conduit::queue::<u32>()?;
    let mut kids = Vec::new();
    let mut holds = Vec::new();
    for i in 0..3 {
        let (armed_tx, armed_rx) = conduit::channel::<u32>()?;
        let (hold_tx, hold_rx) = conduit::channel::<u32>()?;
        kids.push(Process::spawn(
            queue_arm_and_hold,
            (rx.clone(), armed_tx, hold_rx),
        )?);
        holds.push(hold_tx);
        check(
            armed_rx.recv_timeout(Duration::from_secs(10))? == 0,
            format!("child {i}: the queue was not empty"),
        )?;
    }
    for k in &mut kids {
        k.kill()?;
        let _ = k.join();
    }
    let objects: [&dyn Waitable; 1] = [&rx];
    for round in 0..3u32 {
        tx.send(&round)?;
        check(
            conduit::wait(&objects, LONG)? == [0],
            format!("round {round}: message queued"),
        )?;
        check(
            rx.recv_timeout(Duration::from_secs(5))? == round,
            format!("round {round}: value"),
        )?;
    }
    // A blocking receive that starts before the message comes.
    let receiver = std::thread::spawn({
        let rx = rx.clone();
        move || rx.recv_timeout(Duration::from_secs(5))
    });
    tx.send(&7)?;
    check(
        receiver.join().map_err(|_| "receiver panicked")?? == 7,
        "late value",
    )
}

/// Child: sends `x` on the queue when told to.
fn queue_send_when_told((tx, go, x): (QueueSender<u32>, Receiver<u32>, u32)) -> u32 {
    if go.recv().is_err() || tx.send(&x).is_err() {
        return 0;
    }
    x
}

/// A queue receiver alone in `wait`: it offers a handle to wait on (on
/// Windows too, where it had none and `wait` looked at it every 1–5 ms),
/// is not ready while empty, and becomes ready when a child sends while
/// the parent waits; empty again after the receive.
fn queue_receiver_wakes_wait() -> Result<(), Failed> {
    let (tx, rx) = conduit::queue::<u32>()?;
    let (go_tx, go_rx) = conduit::channel::<u32>()?;
    {
        let source = rx.wait_source()?;
        let mut handles = Vec::new();
        source.handles(&mut handles);
        check(
            !handles.is_empty(),
            "a queue receiver offers no wait handle",
        )?;
    }
    let objects: [&dyn Waitable; 1] = [&rx];
    check(conduit::wait(&objects, SHORT)?.is_empty(), "empty queue")?;
    let mut p = Process::spawn(queue_send_when_told, (tx, go_rx, 7))?;
    for round in 0..2 {
        if round == 0 {
            // The child sends while the parent waits (or just before).
            go_tx.send(&1)?;
        }
        check(
            conduit::wait(&objects, LONG)? == [0],
            format!("round {round}: message queued"),
        )?;
    }
    check(rx.recv_timeout(Duration::from_secs(10))? == 7, "value")?;
    check(p.join()? == 7, "child")?;
    // The only sender is gone: ready (the next receive is Disconnected).
    check(conduit::wait(&objects, LONG)? == [0], "senders gone")?;
    check(
        rx.try_recv().map_err(|e| e.is_disconnected()).err() == Some(true),
        "disconnected",
    )
}

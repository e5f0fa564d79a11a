//! `iceoryx2`: the shared-memory peer. Two publish-subscribe services of
//! `[u8]` slices, one each way (parent → child, child → parent), an
//! `ipc::Service` node in each process. Messages are sent as a user with a
//! `&[u8]` in hand sends them: `loan_slice_uninit` + `write_from_slice` +
//! `send` (one copy into the shared segment, as conduit's `send` makes).
//!
//! Two receivers:
//! * `iceoryx2` copies the payload out of the sample into the caller's
//!   buffer (`receive` + `extend_from_slice`), like conduit's `recv` /
//!   `recv_bytes_into`;
//! * `iceoryx2 loan` checks the sample where it lies in the shared segment
//!   and releases it (iceoryx2's zero-copy receive). conduit has no
//!   counterpart any more: its `recv_with` lending was removed because a
//!   `&[u8]` over memory a hostile peer can write is undefined behaviour
//!   (docs/design-notes.md), so conduit's row to compare with is its `recv`.
//!
//! iceoryx2's publish-subscribe has no blocking receive (waiting needs an
//! extra event service and a `WaitSet`); the receiver spins on `receive`, its
//! lowest-latency mode. The sender spins too when the subscriber's buffer is
//! full: the service does not overflow, the publisher discards a sample it
//! cannot deliver (`BackpressureStrategy::DiscardData`, `send` then reports
//! 0 recipients) and the bench sends it again until it is delivered, so no
//! message is lost. (iceoryx2's own blocking strategy, `RetryUntilDelivered`,
//! waits with yields and then `nanosleep`s.) The subscriber buffer holds
//! about 4 MiB of payload, the size of conduit's default shm ring.
//!
//! iceoryx2 is a dependency on Linux only: there it binds libc and needs no
//! libclang; elsewhere its build runs bindgen.

use crate::plan::Workload;
use crate::stats::Rep;
use crate::{Ctx, Res};

/// Set in the child: the service name prefix.
#[cfg(target_os = "linux")]
const NAME_ENV: &str = "CONDUIT_BENCH_ICEORYX2";

#[cfg(target_os = "linux")]
mod imp {
    use std::time::{Duration, Instant};

    use iceoryx2::port::publisher::Publisher;
    use iceoryx2::port::subscriber::Subscriber;
    use iceoryx2::prelude::*;
    use iceoryx2::service::port_factory::publish_subscribe::PortFactory;
    use iceoryx2::service::port_factory::PortFactory as _;

    use super::NAME_ENV;
    use crate::link::{self, BytesLink, DATA, END, PING, REPORT, REPORT_LEN};
    use crate::plan::Workload;
    use crate::proc::{self, Spawned};
    use crate::stats::Rep;
    use crate::{err, Ctx, Res};

    type Service = PortFactory<ipc::Service, [u8], ()>;

    /// Payload bytes a subscriber buffer holds (conduit's default ring).
    const BUFFER_BYTES: usize = 4 << 20;

    /// Receive polls between checks of the deadline and of the peer.
    const CHECK_EVERY: u32 = 1024;

    /// One side's ports (and what keeps them alive).
    pub struct Link {
        tx: Publisher<ipc::Service, [u8], ()>,
        rx: Subscriber<ipc::Service, [u8], ()>,
        /// The incoming service: its publisher count says whether the peer
        /// is still there.
        rx_service: Service,
        /// The outgoing service: its subscriber count says whether the
        /// peer has connected.
        tx_service: Service,
        _node: Node<ipc::Service>,
        /// No receive spins past this.
        deadline: Instant,
    }

    fn buffer_slots(size: usize) -> usize {
        (BUFFER_BYTES / size.max(1)).clamp(2, 1024)
    }

    fn service(node: &Node<ipc::Service>, name: &str, slots: usize) -> Res<Service> {
        let name: ServiceName = name.try_into()?;
        Ok(node
            .service_builder(&name)
            .publish_subscribe::<[u8]>()
            .enable_safe_overflow(false)
            .subscriber_max_buffer_size(slots)
            .subscriber_max_borrowed_samples(2)
            .max_publishers(1)
            .max_subscribers(1)
            .max_nodes(2)
            .open_or_create()?)
    }

    impl Link {
        /// Opens (or creates) the two services `<prefix>/p2c` and
        /// `<prefix>/c2p` for messages of up to `size` bytes.
        fn open(prefix: &str, size: usize, parent: bool, timeout: Duration) -> Res<Link> {
            let node = NodeBuilder::new().create::<ipc::Service>()?;
            let slots = buffer_slots(size);
            let p2c = service(&node, &format!("{prefix}/p2c"), slots)?;
            let c2p = service(&node, &format!("{prefix}/c2p"), slots)?;
            let (tx_service, rx_service) = if parent { (p2c, c2p) } else { (c2p, p2c) };
            let rx = rx_service
                .subscriber_builder()
                .buffer_size(slots)
                .create()?;
            let tx = tx_service
                .publisher_builder()
                .initial_max_slice_len(size.max(REPORT_LEN))
                .max_loaned_samples(2)
                .backpressure_strategy(BackpressureStrategy::DiscardData)
                .create()?;
            Ok(Link {
                tx,
                rx,
                rx_service,
                tx_service,
                _node: node,
                deadline: Instant::now() + timeout,
            })
        }

        /// Waits until the peer's subscriber and publisher are connected.
        fn wait_for_peer(&self, alive: &dyn Fn() -> bool) -> Res<()> {
            loop {
                if self.tx_service.dynamic_config().number_of_subscribers() >= 1
                    && self.rx_service.dynamic_config().number_of_publishers() >= 1
                {
                    return Ok(());
                }
                if Instant::now() > self.deadline || !alive() {
                    return Err(err("iceoryx2: the peer did not connect"));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }

        /// True while the peer's publisher exists.
        fn peer_alive(&self) -> bool {
            self.rx_service.dynamic_config().number_of_publishers() > 0
        }

        /// Spins until a sample arrives and hands it to `f`; `Ok(false)`
        /// when the peer is gone.
        fn recv_in_place(&mut self, f: &mut dyn FnMut(&[u8])) -> Res<bool> {
            let mut polls = 0u32;
            loop {
                if let Some(sample) = self.rx.receive()? {
                    f(sample.payload());
                    return Ok(true);
                }
                polls += 1;
                if polls == CHECK_EVERY {
                    polls = 0;
                    if !self.peer_alive() {
                        // A last look: a sample sent just before the peer left.
                        if let Some(sample) = self.rx.receive()? {
                            f(sample.payload());
                            return Ok(true);
                        }
                        return Ok(false);
                    }
                    if Instant::now() > self.deadline {
                        return Err(err("iceoryx2: no message before the case's deadline"));
                    }
                }
                std::hint::spin_loop();
            }
        }
    }

    impl BytesLink for Link {
        fn send(&mut self, msg: &Vec<u8>) -> Res<()> {
            let mut tries = 0u32;
            loop {
                let sample = self.tx.loan_slice_uninit(msg.len())?;
                if sample.write_from_slice(msg).send()? > 0 {
                    return Ok(());
                }
                // The subscriber's buffer is full (or it is gone): try again.
                tries += 1;
                if tries == CHECK_EVERY {
                    tries = 0;
                    if self.tx_service.dynamic_config().number_of_subscribers() == 0 {
                        return Err(err("iceoryx2: the subscriber is gone"));
                    }
                    if Instant::now() > self.deadline {
                        return Err(err("iceoryx2: no room before the case's deadline"));
                    }
                }
                std::hint::spin_loop();
            }
        }

        fn recv(&mut self, buf: &mut Vec<u8>, _len: usize) -> Res<bool> {
            self.recv_in_place(&mut |payload| {
                buf.clear();
                buf.extend_from_slice(payload);
            })
        }
    }

    fn prefix() -> String {
        format!(
            "conduit-bench/{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        )
    }

    /// The parent side of workload `w`.
    pub fn parent(sys_id: &str, w: Workload, ctx: &Ctx) -> Res<Vec<Rep>> {
        let prefix = prefix();
        let timeout = ctx.budget.case_timeout();
        let mut link = Link::open(&prefix, w.size(), true, timeout)?;
        let mut cmd = proc::child_command(sys_id, w, ctx)?;
        cmd.env(NAME_ENV, &prefix);
        let child = Spawned::spawn(&mut cmd, timeout, false)?;
        let res = link
            .wait_for_peer(&|| !child.has_exited())
            .and_then(|()| link::parent_bytes(&mut link, w, &ctx.budget));
        drop(link);
        child.finish(res)
    }

    /// The child side of workload `w`; `loan`: check samples in place.
    pub fn child(w: Workload, loan: bool) -> Res<()> {
        let prefix = std::env::var(NAME_ENV).map_err(|_| err(format!("{NAME_ENV} is not set")))?;
        let lifetime = Duration::from_secs(3600);
        let mut link = Link::open(&prefix, w.size(), false, lifetime)?;
        if !loan {
            return link::child_bytes(&mut link, w);
        }
        // The zero-copy receiver: data messages are checked where they lie.
        let size = w.size();
        let (mut count, mut bad) = (0u64, 0u64);
        let mut ping: Option<Vec<u8>> = None;
        let mut end = false;
        let mut unexpected = false;
        let mut report = vec![0u8; REPORT_LEN];
        loop {
            let got = link.recv_in_place(&mut |payload| match payload.first() {
                Some(&DATA) => {
                    if !link::check(payload, size, count) {
                        bad += 1;
                    }
                    count += 1;
                }
                Some(&PING) => ping = Some(payload.to_vec()),
                Some(&END) => end = true,
                _ => unexpected = true,
            })?;
            if !got {
                return Ok(());
            }
            if unexpected {
                return Err(err("unexpected message"));
            }
            if let Some(p) = ping.take() {
                link.send(&p)?;
            }
            if end {
                end = false;
                report.fill(0);
                report[0] = REPORT;
                report[8..16].copy_from_slice(&count.to_le_bytes());
                report[16..24].copy_from_slice(&bad.to_le_bytes());
                link.send(&report)?;
                (count, bad) = (0, 0);
            }
        }
    }
}

/// The parent side of workload `w`.
pub fn parent(sys_id: &str, w: Workload, ctx: &Ctx) -> Res<Vec<Rep>> {
    #[cfg(target_os = "linux")]
    {
        imp::parent(sys_id, w, ctx)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (sys_id, w, ctx);
        Err(Box::new(crate::plan::Skip(
            "iceoryx2 is measured on Linux only".to_owned(),
        )))
    }
}

/// The child side of workload `w`; `loan`: the zero-copy receiver.
pub fn child(w: Workload, loan: bool) -> Res<()> {
    #[cfg(target_os = "linux")]
    {
        imp::child(w, loan)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (w, loan);
        Err(crate::err("iceoryx2 is measured on Linux only"))
    }
}

//! What is measured: the systems, their workloads, the cases to run, and which
//! raw limit each result is compared with.

use std::fmt;

use conduit::Transport;

use crate::stats::Rep;
use crate::{err, Ctx, Res};

/// One measurement done between two processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Workload {
    /// 64 B round trip, raw bytes (`Vec<u8>`), processes pinned.
    Rtt,
    /// 64 B round trip of a typed message (~64 B of CBOR), pinned.
    RttTyped,
    /// 64 B round trip, raw bytes, processes not pinned.
    RttUnpinned,
    /// 64 B one-way messages per second, raw bytes.
    Msgs,
    /// One-way typed messages (~64 B of CBOR) per second.
    MsgsTyped,
    /// 64 KiB one-way messages, bytes per second.
    Bulk64K,
    /// 1 MiB one-way messages, bytes per second.
    Bulk1M,
}

/// What a workload's number means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Seconds per round trip (lower is better).
    Latency,
    /// Messages per second (higher is better).
    Rate,
    /// Bytes per second (higher is better).
    Bandwidth,
}

impl Workload {
    /// Every workload, in table order.
    pub const ALL: [Workload; 7] = [
        Workload::Rtt,
        Workload::RttTyped,
        Workload::RttUnpinned,
        Workload::Msgs,
        Workload::MsgsTyped,
        Workload::Bulk64K,
        Workload::Bulk1M,
    ];

    /// The workload's id (in JSON and on the command line of a child).
    pub fn id(self) -> &'static str {
        match self {
            Workload::Rtt => "rtt64",
            Workload::RttTyped => "rtt64-typed",
            Workload::RttUnpinned => "rtt64-unpinned",
            Workload::Msgs => "msgs64",
            Workload::MsgsTyped => "msgs64-typed",
            Workload::Bulk64K => "bulk64k",
            Workload::Bulk1M => "bulk1m",
        }
    }

    /// Looks a workload up by id.
    pub fn from_id(id: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.id() == id)
    }

    /// A title for progress lines and table sections.
    pub fn title(self) -> &'static str {
        match self {
            Workload::Rtt => "64 B round trip (Vec<u8>)",
            Workload::RttTyped => "64 B round trip (typed)",
            Workload::RttUnpinned => "64 B round trip (Vec<u8>, unpinned)",
            Workload::Msgs => "64 B one-way msg/s (Vec<u8>)",
            Workload::MsgsTyped => "64 B one-way msg/s (typed)",
            Workload::Bulk64K => "64 KiB one-way GB/s",
            Workload::Bulk1M => "1 MiB one-way GB/s",
        }
    }

    /// A short column header for the summary matrix.
    pub fn short(self) -> &'static str {
        match self {
            Workload::Rtt => "rtt 64B",
            Workload::RttTyped => "rtt typed",
            Workload::RttUnpinned => "rtt unpin",
            Workload::Msgs => "msg/s 64B",
            Workload::MsgsTyped => "msg/s typed",
            Workload::Bulk64K => "GB/s 64K",
            Workload::Bulk1M => "GB/s 1M",
        }
    }

    /// What the number means.
    pub fn kind(self) -> Kind {
        match self {
            Workload::Rtt | Workload::RttTyped | Workload::RttUnpinned => Kind::Latency,
            Workload::Msgs | Workload::MsgsTyped => Kind::Rate,
            Workload::Bulk64K | Workload::Bulk1M => Kind::Bandwidth,
        }
    }

    /// The message size in bytes (for typed workloads: of the byte variant).
    pub fn size(self) -> usize {
        match self {
            Workload::Bulk64K => 64 << 10,
            Workload::Bulk1M => 1 << 20,
            _ => 64,
        }
    }

    /// True for the typed (CBOR struct) variants.
    pub fn typed(self) -> bool {
        matches!(self, Workload::RttTyped | Workload::MsgsTyped)
    }

    /// True when the two processes are pinned to distinct CPUs.
    pub fn pinned(self) -> bool {
        self != Workload::RttUnpinned
    }

    /// The workload of the raw limit this one is compared with.
    pub fn reference(self) -> Workload {
        match self {
            Workload::RttTyped => Workload::Rtt,
            Workload::MsgsTyped => Workload::Msgs,
            other => other,
        }
    }
}

/// Families of systems, for filters, colours and notes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// Hand-written OS limits.
    Raw,
    /// conduit's transports.
    Conduit,
    /// The `ipc-channel` crate.
    IpcChannel,
    /// The `interprocess` crate.
    Interprocess,
    /// The `iceoryx2` crate (shared memory).
    Iceoryx2,
    /// Python `multiprocessing`.
    Python,
}

impl Group {
    /// The group's name (also an `--only` filter).
    pub fn name(self) -> &'static str {
        match self {
            Group::Raw => "raw",
            Group::Conduit => "conduit",
            Group::IpcChannel => "ipc-channel",
            Group::Interprocess => "interprocess",
            Group::Iceoryx2 => "iceoryx2",
            Group::Python => "python",
        }
    }
}

/// How a system is driven.
#[derive(Clone, Copy, Debug)]
pub enum Runner {
    /// Single-core `memcpy` (in process).
    Memcpy,
    /// Two pipes, plain `read`/`write` of fixed-size messages.
    RawPipe,
    /// A socket pair, plain `read`/`write` of fixed-size messages.
    RawSocketpair,
    /// Shared memory: spin ping-pong on a flag; a spinning ring for msg/s.
    RawShmSpin,
    /// Shared memory: futex wait/wake ping-pong (Linux).
    RawFutex,
    /// A conduit transport from `Transport::enabled()`.
    Conduit(Transport),
    /// A conduit transport with the `Postcard` codec (typed workloads).
    ConduitPostcard(Transport),
    /// `conduit::named` (a listener and `connect`, not a `Transport`).
    ConduitNamed,
    /// A conduit transport, the parent's end async (`into_async` on a
    /// current-thread tokio runtime); the child is the blocking one.
    ConduitAsync(Transport),
    /// `conduit::named`, the parent's end async (`into_async` on a
    /// current-thread tokio runtime); the child is the blocking one.
    ConduitAsyncNamed,
    /// `ipc-channel`.
    IpcChannel,
    /// `interprocess` local socket stream.
    Interprocess,
    /// `interprocess` tokio local socket stream in the parent (current-thread
    /// runtime), the blocking stream in the child.
    InterprocessTokio,
    /// `iceoryx2` publish-subscribe; `loan`: the receiver reads the sample
    /// in place instead of copying it out.
    Iceoryx2 {
        /// Zero-copy receive.
        loan: bool,
    },
    /// Python `multiprocessing.Pipe`.
    PythonPipe,
    /// Python `multiprocessing.Queue`.
    PythonQueue,
    /// Python `multiprocessing.Pipe`, the parent on an asyncio loop
    /// (`loop.add_reader` on the connection's fd), the child blocking.
    PythonAsyncio,
}

/// A thing being measured.
#[derive(Clone, Debug)]
pub struct System {
    /// Stable id (JSON, child processes, `--only`).
    pub id: String,
    /// Human name for the table and the plot.
    pub label: String,
    /// Its family.
    pub group: Group,
    /// How to run it.
    pub runner: Runner,
    /// What it measures.
    pub workloads: Vec<Workload>,
    /// Why it cannot run here, if it cannot.
    pub unsupported: Option<String>,
    /// What the reader should know about how it is measured.
    pub note: Option<String>,
}

impl System {
    fn new(id: &str, label: &str, group: Group, runner: Runner, workloads: &[Workload]) -> System {
        System {
            id: id.to_owned(),
            label: label.to_owned(),
            group,
            runner,
            workloads: workloads.to_vec(),
            unsupported: None,
            note: None,
        }
    }

    fn note(mut self, note: &str) -> System {
        self.note = Some(note.to_owned());
        self
    }

    fn unsupported_unless(mut self, supported: bool, why: &str) -> System {
        if !supported {
            self.unsupported = Some(why.to_owned());
        }
        self
    }

    /// The id of the raw limit that workload `w` of this system is compared
    /// with (`None` for the limits themselves).
    pub fn reference(&self, w: Workload) -> Option<&'static str> {
        if w.kind() == Kind::Bandwidth {
            return (!matches!(self.runner, Runner::Memcpy)).then_some("memcpy");
        }
        match self.runner {
            Runner::Memcpy
            | Runner::RawPipe
            | Runner::RawSocketpair
            | Runner::RawShmSpin
            | Runner::RawFutex => None,
            Runner::Conduit(t) | Runner::ConduitAsync(t) => match t {
                Transport::Pipe => Some("raw-pipe"),
                Transport::Socketpair => Some("raw-socketpair"),
                Transport::Shm => Some("raw-shm"),
                _ => None,
            },
            Runner::Iceoryx2 { .. } | Runner::ConduitPostcard(Transport::Shm) => Some("raw-shm"),
            Runner::ConduitPostcard(_) => None,
            Runner::ConduitNamed
            | Runner::ConduitAsyncNamed
            | Runner::IpcChannel
            | Runner::Interprocess
            | Runner::InterprocessTokio
            | Runner::PythonPipe
            | Runner::PythonAsyncio => Some("raw-socketpair"),
            Runner::PythonQueue => Some("raw-pipe"),
        }
    }
}

/// A workload of a system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    /// Index into the system list.
    pub system: usize,
    /// What to measure.
    pub workload: Workload,
}

/// An error meaning "not measured here", with the reason.
#[derive(Debug)]
pub struct Skip(pub String);

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Skip {}

/// Every system this build knows, in table order.
pub fn systems() -> Vec<System> {
    use Workload::*;
    let mut v = vec![
        System::new("memcpy", "memcpy (1 core)", Group::Raw, Runner::Memcpy, &[Bulk64K, Bulk1M])
            .note("copy_from_slice between two buffers in one process: the cost of one copy"),
        System::new(
            "raw-pipe",
            "raw pipe",
            Group::Raw,
            Runner::RawPipe,
            &[Rtt, Msgs, Bulk64K, Bulk1M],
        )
        .note("two pipes (1 MiB buffers on Linux), plain read/write of fixed-size messages, no framing"),
        System::new(
            "raw-socketpair",
            "raw socketpair",
            Group::Raw,
            Runner::RawSocketpair,
            &[Rtt, Msgs, Bulk64K, Bulk1M],
        )
        .note("socketpair(AF_UNIX, SOCK_STREAM), plain read/write of fixed-size messages, no framing")
        .unsupported_unless(cfg!(unix), "socketpair(2) is Unix only"),
        System::new(
            "raw-shm",
            "raw shm spin",
            Group::Raw,
            Runner::RawShmSpin,
            &[Rtt, RttUnpinned, Msgs],
        )
        .note("shared memory: round trip = spin on a flag each way; msg/s = a spinning ring of 1024 × 64 B slots, indices published every 32 messages"),
        System::new("raw-futex", "raw futex", Group::Raw, Runner::RawFutex, &[Rtt])
            .note("shared memory: store + FUTEX_WAKE, then FUTEX_WAIT until the reply; no spinning")
            .unsupported_unless(cfg!(target_os = "linux"), "futex(2) is Linux only"),
    ];
    for t in Transport::enabled() {
        let mut ws = vec![Rtt, RttTyped, Msgs, MsgsTyped, Bulk64K, Bulk1M];
        if t == Transport::Shm {
            ws.insert(2, RttUnpinned);
        }
        v.push(System::new(
            &format!("conduit-{}", t.name()),
            &format!("conduit {}", t.name()),
            Group::Conduit,
            Runner::Conduit(t),
            &ws,
        ));
    }
    if Transport::Shm.is_enabled() {
        v.push(
            System::new(
                "conduit-shm-postcard",
                "conduit shm postcard",
                Group::Conduit,
                Runner::ConduitPostcard(Transport::Shm),
                &[RttTyped, MsgsTyped],
            )
            .note("the typed rows of conduit shm with the Postcard codec (feature `postcard`: compact, not self-describing, Rust to Rust) instead of CBOR"),
        );
    }
    for t in Transport::enabled() {
        v.push(
            System::new(
                &format!("conduit-async-{}", t.name()),
                &format!("conduit async {}", t.name()),
                Group::Conduit,
                Runner::ConduitAsync(t),
                &[Rtt, Msgs],
            )
            .note("the parent's end through into_async() on a current-thread tokio runtime, entered once for the whole run as a task is (each operation polled once, block_on only when it must wait); the child's end blocking")
        );
    }
    let all = [Rtt, RttTyped, Msgs, MsgsTyped, Bulk64K, Bulk1M];
    v.push(
        System::new("conduit-named", "conduit named", Group::Conduit, Runner::ConduitNamed, &all)
            .note("conduit::named: Listener::bind + accept in the parent, named::connect in the child (a Unix domain socket / Windows named pipe)"),
    );
    v.push(
        System::new("conduit-async-named", "conduit async named", Group::Conduit, Runner::ConduitAsyncNamed, &[Rtt, Msgs])
            .note("conduit named with the accepted connection made async (into_async() on a current-thread tokio runtime, driven like conduit async <transport>); the child's end blocking")
    );
    v.push(
        System::new("ipc-channel", "ipc-channel", Group::IpcChannel, Runner::IpcChannel, &all)
            .note("IpcBytesSender/IpcBytesReceiver for bytes, IpcSender<T> (postcard) for typed; bootstrap with IpcOneShotServer")
            .unsupported_unless(
                cfg!(any(target_os = "linux", target_os = "macos")),
                "measured on Linux and macOS only",
            ),
    );
    v.push(
        System::new("interprocess", "interprocess", Group::Interprocess, Runner::Interprocess, &all)
            .note("local socket stream, u32 length prefix written by the bench; typed = ciborium CBOR + the same framing"),
    );
    v.push(
        System::new("interprocess-tokio", "interprocess tokio", Group::Interprocess, Runner::InterprocessTokio, &[Rtt, Msgs])
            .note("the parent's end is interprocess's tokio local socket stream (accept, read_exact/write_all of the same u32-prefixed frames) on a current-thread runtime entered once for the whole run, each operation polled once and block_on only when it must wait (as conduit async); the child's end is the blocking stream"),
    );
    v.push(
        System::new("iceoryx2", "iceoryx2", Group::Iceoryx2, Runner::Iceoryx2 { loan: false }, &[Rtt, Msgs, Bulk64K, Bulk1M])
            .note("iceoryx2 0.9 publish-subscribe of [u8] slices, one service each way; send = loan_slice_uninit + write_from_slice + send; receive spins on receive() and copies the payload out (like conduit's recv); when the subscriber's buffer is full the sender spins and sends again (no loss)")
            .unsupported_unless(cfg!(target_os = "linux"), "measured on Linux only (elsewhere its build needs libclang for bindgen)"),
    );
    v.push(
        System::new("iceoryx2-loan", "iceoryx2 loan", Group::Iceoryx2, Runner::Iceoryx2 { loan: true }, &[Bulk64K, Bulk1M])
            .note("iceoryx2 zero-copy receive: the sample is checked where it lies in shared memory, not copied out (the sender still copies the payload in); conduit has no such row: its recv_with lending was removed as unsound with a hostile peer, compare with conduit shm's recv")
            .unsupported_unless(cfg!(target_os = "linux"), "measured on Linux only (elsewhere its build needs libclang for bindgen)"),
    );
    v.push(
        System::new("python-pipe", "Python mp.Pipe", Group::Python, Runner::PythonPipe, &all)
            .note("multiprocessing.Pipe(): send_bytes/recv_bytes for bytes, send/recv (pickle) of a 4-field dict for typed"),
    );
    v.push(
        System::new(
            "python-queue",
            "Python mp.Queue",
            Group::Python,
            Runner::PythonQueue,
            &all,
        )
        .note("two multiprocessing.Queue()s (put/get, pickled); bytes objects or a 4-field dict"),
    );
    v.push(
        System::new("python-asyncio", "Python asyncio Pipe", Group::Python, Runner::PythonAsyncio, &[Rtt, Msgs])
            .note("multiprocessing.Pipe() with the parent on an asyncio loop: a reader registered once with loop.add_reader(conn.fileno()) takes each message (recv_bytes) and wakes the awaiting task; send_bytes as is (a blocking write: asyncio has no async send for a Connection); the child blocking, as in Python mp.Pipe")
            .unsupported_unless(cfg!(unix), "loop.add_reader on a Connection's fd is Unix only (Windows' proactor loop has no add_reader)"),
    );
    v
}

fn matches(sys: &System, filter: &str) -> bool {
    let f = filter.to_ascii_lowercase();
    sys.id == f
        || sys.group.name() == f
        || sys.label.to_ascii_lowercase() == f
        || sys.id.split('-').any(|seg| seg == f)
}

/// The cases to run: every workload of every system that passes the filters
/// (all when there are none), plus the workloads of the raw limits that the
/// selected results are compared with.
pub fn select(systems: &[System], only: &[String]) -> Res<Vec<Case>> {
    for f in only {
        if !systems.iter().any(|s| matches(s, f)) {
            let ids: Vec<&str> = systems.iter().map(|s| s.id.as_str()).collect();
            return Err(err(format!(
                "--only {f}: no such system; systems: {}; groups: raw, conduit, ipc-channel, interprocess, iceoryx2, python",
                ids.join(", ")
            )));
        }
    }
    let chosen = |s: &System| only.is_empty() || only.iter().any(|f| matches(s, f));
    let mut wanted: Vec<Case> = Vec::new();
    for (i, s) in systems.iter().enumerate() {
        if chosen(s) {
            wanted.extend(s.workloads.iter().map(|&w| Case {
                system: i,
                workload: w,
            }));
        }
    }
    let mut refs: Vec<Case> = Vec::new();
    for c in &wanted {
        let s = &systems[c.system];
        let Some(rid) = s.reference(c.workload) else {
            continue;
        };
        let rw = c.workload.reference();
        if let Some(ri) = systems.iter().position(|r| r.id == rid) {
            let rc = Case {
                system: ri,
                workload: rw,
            };
            if systems[ri].workloads.contains(&rw) && !wanted.contains(&rc) && !refs.contains(&rc) {
                refs.push(rc);
            }
        }
    }
    wanted.extend(refs);
    // Table order: system order, then workload order.
    wanted.sort_by_key(|c| {
        (
            c.system,
            Workload::ALL.iter().position(|w| *w == c.workload),
        )
    });
    Ok(wanted)
}

/// Names the reference systems that `select` added to a filtered run.
pub fn added_references(systems: &[System], cases: &[Case], only: &[String]) -> Option<String> {
    if only.is_empty() {
        return None;
    }
    let mut added: Vec<&str> = Vec::new();
    for c in cases {
        let s = &systems[c.system];
        if !only.iter().any(|f| matches(s, f)) && !added.contains(&s.label.as_str()) {
            added.push(&s.label);
        }
    }
    (!added.is_empty()).then(|| added.join(", "))
}

/// Runs workload `w` of `sys` in the parent and returns its repetitions.
pub fn run(sys: &System, w: Workload, ctx: &Ctx) -> Res<Vec<Rep>> {
    match sys.runner {
        Runner::Memcpy => crate::sys_raw::memcpy(w, &ctx.budget),
        Runner::RawPipe => crate::sys_raw::pipe_parent(&sys.id, w, ctx),
        Runner::RawSocketpair => crate::sys_raw::socketpair_parent(&sys.id, w, ctx),
        Runner::RawShmSpin => crate::sys_raw::shm_parent(&sys.id, w, ctx, false),
        Runner::RawFutex => crate::sys_raw::shm_parent(&sys.id, w, ctx, true),
        Runner::Conduit(t) => crate::sys_conduit::parent(t, &sys.id, w, ctx),
        Runner::ConduitPostcard(t) => crate::sys_conduit::postcard_parent(t, &sys.id, w, ctx),
        Runner::ConduitAsync(t) => crate::sys_conduit::async_parent(t, &sys.id, w, ctx),
        Runner::ConduitNamed => crate::sys_conduit::named_parent(&sys.id, w, ctx),
        Runner::ConduitAsyncNamed => crate::sys_conduit::async_named_parent(&sys.id, w, ctx),
        Runner::IpcChannel => crate::sys_ipc::parent(&sys.id, w, ctx),
        Runner::Interprocess => crate::sys_interprocess::parent(&sys.id, w, ctx),
        Runner::InterprocessTokio => crate::sys_interprocess::tokio_parent(&sys.id, w, ctx),
        Runner::Iceoryx2 { .. } => crate::sys_iceoryx2::parent(&sys.id, w, ctx),
        Runner::PythonPipe => crate::sys_python::run("pipe", w, ctx),
        Runner::PythonQueue => crate::sys_python::run("queue", w, ctx),
        Runner::PythonAsyncio => crate::sys_python::run("asyncio", w, ctx),
    }
}

/// Runs the child side of workload `w` of `sys`.
pub fn run_child(sys: &System, w: Workload) -> Res<()> {
    match sys.runner {
        Runner::RawPipe => crate::sys_raw::stdio_child(w, false),
        Runner::RawSocketpair => crate::sys_raw::stdio_child(w, true),
        Runner::RawShmSpin => crate::sys_raw::shm_child(w, false),
        Runner::RawFutex => crate::sys_raw::shm_child(w, true),
        Runner::Conduit(_) | Runner::ConduitAsync(_) => crate::sys_conduit::child(w),
        Runner::ConduitPostcard(_) => crate::sys_conduit::postcard_child(),
        Runner::ConduitNamed | Runner::ConduitAsyncNamed => crate::sys_conduit::named_child(w),
        Runner::IpcChannel => crate::sys_ipc::child(w),
        Runner::Interprocess | Runner::InterprocessTokio => crate::sys_interprocess::child(w),
        Runner::Iceoryx2 { loan } => crate::sys_iceoryx2::child(w, loan),
        Runner::Memcpy | Runner::PythonPipe | Runner::PythonQueue | Runner::PythonAsyncio => {
            Err(err(format!("{} has no Rust child", sys.id)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_references() {
        let systems = systems();
        let only = vec!["python-queue".to_string()];
        let cases = select(&systems, &only).unwrap();
        let ids: Vec<(&str, Workload)> = cases
            .iter()
            .map(|c| (systems[c.system].id.as_str(), c.workload))
            .collect();
        assert!(ids.contains(&("python-queue", Workload::RttTyped)));
        assert!(ids.contains(&("raw-pipe", Workload::Rtt)));
        assert!(ids.contains(&("memcpy", Workload::Bulk1M)));
        assert!(!ids.iter().any(|(id, _)| *id == "raw-socketpair"));
        assert!(select(&systems, &["nonesuch".to_string()]).is_err());
        // The async peers: byte rows only, compared with the raw socketpair.
        for id in [
            "interprocess-tokio",
            "python-asyncio",
            "conduit-async-named",
        ] {
            let cases = select(&systems, &[id.to_string()]).unwrap();
            let got: Vec<(&str, Workload)> = cases
                .iter()
                .map(|c| (systems[c.system].id.as_str(), c.workload))
                .collect();
            assert_eq!(
                got,
                [
                    ("raw-socketpair", Workload::Rtt),
                    ("raw-socketpair", Workload::Msgs),
                    (id, Workload::Rtt),
                    (id, Workload::Msgs),
                ],
                "{id}"
            );
        }
        let all = select(&systems, &[]).unwrap();
        assert_eq!(
            all.len(),
            systems.iter().map(|s| s.workloads.len()).sum::<usize>()
        );
    }
}

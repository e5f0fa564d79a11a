//! `ipc-channel`: the parent makes an `IpcOneShotServer`, the child connects
//! to it and sends back the parent's ends of two fresh channels (bytes:
//! `IpcBytesSender`/`IpcBytesReceiver`; typed: `IpcSender<Sample>`/
//! `IpcReceiver<Sample>`, which ipc-channel encodes with postcard).
//! Measured on Linux and macOS.

use crate::plan::Workload;
use crate::stats::Rep;
use crate::{Ctx, Res};

/// Set in the child: the one-shot server's name.
#[cfg(any(target_os = "linux", target_os = "macos"))]
const SERVER_ENV: &str = "CONDUIT_BENCH_IPC_SERVER";

/// The ipc-channel cases (Linux and macOS).
#[cfg(any(target_os = "linux", target_os = "macos"))]
mod imp {
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    use ipc_channel::ipc::{
        self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcReceiver, IpcSender,
    };
    use ipc_channel::IpcError;
    use serde::de::DeserializeOwned;
    use serde::Serialize;

    use super::SERVER_ENV;
    use crate::link::{self, BytesLink, Sample, TypedLink};
    use crate::plan::Workload;
    use crate::proc::{self, Spawned};
    use crate::stats::Rep;
    use crate::{err, Ctx, Res};

    /// What the child sends the parent: the parent's sending and receiving ends.
    type BytesBoot = (IpcBytesSender, IpcBytesReceiver);
    type TypedBoot = (IpcSender<Sample>, IpcReceiver<Sample>);

    struct Bytes(BytesBoot);

    impl BytesLink for Bytes {
        fn send(&mut self, msg: &Vec<u8>) -> Res<()> {
            Ok(self.0 .0.send(msg)?)
        }

        fn recv(&mut self, buf: &mut Vec<u8>, _len: usize) -> Res<bool> {
            match self.0 .1.recv() {
                Ok(v) => {
                    *buf = v;
                    Ok(true)
                }
                Err(IpcError::Disconnected) => Ok(false),
                Err(e) => Err(err(format!("ipc-channel: {e:?}"))),
            }
        }
    }

    struct Typed(TypedBoot);

    impl TypedLink for Typed {
        fn send(&mut self, msg: &Sample) -> Res<()> {
            self.0
                 .0
                .send(msg.clone())
                .map_err(|e| err(format!("ipc-channel: {e:?}")))
        }

        fn recv(&mut self) -> Res<Option<Sample>> {
            match self.0 .1.recv() {
                Ok(v) => Ok(Some(v)),
                Err(IpcError::Disconnected) => Ok(None),
                Err(e) => Err(err(format!("ipc-channel: {e:?}"))),
            }
        }
    }

    /// Accepts the child's connection, giving up after `timeout` (the accept
    /// thread is then left blocked; the child is killed by its watchdog).
    fn accept<T>(server: IpcOneShotServer<T>, timeout: Duration) -> Res<T>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(server.accept().map(|(_, boot)| boot));
        });
        match rx.recv_timeout(timeout) {
            Ok(Ok(boot)) => Ok(boot),
            Ok(Err(e)) => Err(err(format!("ipc-channel accept: {e:?}"))),
            Err(_) => Err(err("the child did not connect to the IpcOneShotServer")),
        }
    }

    fn serve<T, L>(
        sys_id: &str,
        w: Workload,
        ctx: &Ctx,
        link_of: impl FnOnce(T) -> L,
        parent: impl FnOnce(&mut L) -> Res<Vec<Rep>>,
    ) -> Res<Vec<Rep>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        let (server, name) = IpcOneShotServer::<T>::new()?;
        let mut cmd = proc::child_command(sys_id, w, ctx)?;
        cmd.env(SERVER_ENV, name);
        let timeout = ctx.budget.case_timeout();
        let child = Spawned::spawn(&mut cmd, timeout, false)?;
        let res = accept(server, timeout).and_then(|boot| {
            let mut link = link_of(boot);
            parent(&mut link)
        });
        child.finish(res)
    }

    /// The parent side of workload `w`.
    pub fn parent(sys_id: &str, w: Workload, ctx: &Ctx) -> Res<Vec<Rep>> {
        let b = ctx.budget;
        if w.typed() {
            serve::<TypedBoot, _>(sys_id, w, ctx, Typed, |l| link::parent_typed(l, w, &b))
        } else {
            serve::<BytesBoot, _>(sys_id, w, ctx, Bytes, |l| link::parent_bytes(l, w, &b))
        }
    }

    /// The child side: connects to the server, sends the parent its ends.
    pub fn child(w: Workload) -> Res<()> {
        let name =
            std::env::var(SERVER_ENV).map_err(|_| err(format!("{SERVER_ENV} is not set")))?;
        if w.typed() {
            let boot = IpcSender::<TypedBoot>::connect(name)?;
            let (to_child, from_parent) = ipc::channel::<Sample>()?;
            let (to_parent, from_child) = ipc::channel::<Sample>()?;
            boot.send((to_child, from_child))
                .map_err(|e| err(format!("ipc-channel: {e:?}")))?;
            link::child_typed(&mut Typed((to_parent, from_parent)))
        } else {
            let boot = IpcSender::<BytesBoot>::connect(name)?;
            let (to_child, from_parent) = ipc::bytes_channel()?;
            let (to_parent, from_child) = ipc::bytes_channel()?;
            boot.send((to_child, from_child))
                .map_err(|e| err(format!("ipc-channel: {e:?}")))?;
            link::child_bytes(&mut Bytes((to_parent, from_parent)), w)
        }
    }
}

/// The parent side of workload `w`.
#[cfg(any(target_os = "linux", target_os = "macos"))]
pub fn parent(sys_id: &str, w: Workload, ctx: &Ctx) -> Res<Vec<Rep>> {
    imp::parent(sys_id, w, ctx)
}

/// The child side of workload `w`.
#[cfg(any(target_os = "linux", target_os = "macos"))]
pub fn child(w: Workload) -> Res<()> {
    imp::child(w)
}

/// ipc-channel is measured on Linux and macOS only.
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub fn parent(_sys_id: &str, _w: Workload, _ctx: &Ctx) -> Res<Vec<Rep>> {
    Err(crate::plan::Skip("measured on Linux and macOS only".into()).into())
}

/// ipc-channel is measured on Linux and macOS only.
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub fn child(_w: Workload) -> Res<()> {
    Err(crate::err(
        "ipc-channel is measured on Linux and macOS only",
    ))
}

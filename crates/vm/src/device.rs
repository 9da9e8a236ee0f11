//! The vhost-user virtio-vsock device: QEMU (`-device vhost-user-vsock-device`) hands this
//! process the guest's memory and the RX/TX virtqueues over a Unix socket; this module moves
//! packets between those queues and the [`Muxer`].
//!
//! Built on rust-vmm: `vhost-user-backend` speaks the vhost-user protocol and runs the worker
//! thread that waits on the queue kicks; `virtio-queue` walks descriptor chains;
//! `virtio-vsock`'s `VsockPacket` checks that a chain's header and payload lie inside guest
//! memory, are of the right direction, and that the payload is no longer than
//! [`MAX_PKT_DATA`]. The guest's cid is the device's config space (8 bytes, little endian),
//! read by QEMU with `VHOST_USER_GET_CONFIG`.
//!
//! Queues: 0 = RX (device to guest), 1 = TX (guest to device). The event queue (2) belongs to
//! QEMU. The muxer's epoll descriptor is registered with the worker as event
//! [`BACKEND_EVENT`].

use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::virtio_config::{VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1};
use virtio_queue::{QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::muxer::{Muxer, MAX_PKT_DATA, MAX_PKT_LEN};
use crate::packet::{Header, HEADER_LEN};

/// RX queue index.
pub const RX_QUEUE: u16 = 0;
/// TX queue index.
pub const TX_QUEUE: u16 = 1;
/// Queues served by this device, as a queue index type.
const QUEUE_COUNT: u16 = 2;
/// Queues served by this device.
pub const NUM_QUEUES: usize = QUEUE_COUNT as usize;
/// Largest queue size accepted.
pub const MAX_QUEUE_SIZE: usize = 1024;
/// Worker event of the muxer's epoll descriptor (ids up to NUM_QUEUES are the library's).
pub const BACKEND_EVENT: u16 = QUEUE_COUNT + 1;

type Memory = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// Errors starting the device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The vhost-user socket could not be bound.
    #[error("binding the vhost-user socket {0}")]
    Bind(PathBuf, #[source] vhost::vhost_user::Error),
    /// The vhost-user daemon could not be set up.
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
    /// A system call failed.
    #[error("vsock device: {context}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

struct State {
    muxer: Muxer,
    mem: Option<Memory>,
    scratch: Vec<u8>,
    bad_chains: u64,
}

/// The backend (cheap to clone: the daemon and its worker share it).
#[derive(Clone)]
pub struct VsockBackend {
    cid: u64,
    state: Arc<Mutex<State>>,
    exit: Arc<EventFd>,
}

impl std::fmt::Debug for VsockBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockBackend")
            .field("cid", &self.cid)
            .finish_non_exhaustive()
    }
}

impl VsockBackend {
    /// Wraps a muxer.
    pub fn new(cid: u32, muxer: Muxer) -> Result<Self, DeviceError> {
        let exit = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| DeviceError::Io {
            context: "eventfd",
            source,
        })?;
        Ok(Self {
            cid: u64::from(cid),
            state: Arc::new(Mutex::new(State {
                muxer,
                mem: None,
                scratch: vec![0u8; MAX_PKT_DATA],
                bad_chains: 0,
            })),
            exit: Arc::new(exit),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the muxer (tests, statistics).
    pub fn with_muxer<R>(&self, f: impl FnOnce(&mut Muxer) -> R) -> R {
        f(&mut self.lock().muxer)
    }

    /// Descriptor chains rejected as malformed since start.
    pub fn bad_chains(&self) -> u64 {
        self.lock().bad_chains
    }

    fn process_tx(state: &mut State, vring: &VringRwLock) -> io::Result<()> {
        let Some(mem) = state.mem.as_ref().map(GuestMemoryAtomic::memory) else {
            return Ok(());
        };
        let mut vs = vring.get_mut();
        let mut used = false;
        loop {
            let queue = vs.get_queue_mut();
            if !queue.ready() {
                break;
            }
            let Some(mut chain) = queue.pop_descriptor_chain(mem.clone()) else {
                break;
            };
            let head = chain.head_index();
            match VsockPacket::from_tx_virtq_chain(mem.deref(), &mut chain, MAX_PKT_LEN) {
                Ok(pkt) => {
                    let h = Header {
                        src_cid: pkt.src_cid(),
                        dst_cid: pkt.dst_cid(),
                        src_port: pkt.src_port(),
                        dst_port: pkt.dst_port(),
                        len: pkt.len(),
                        type_: pkt.type_(),
                        op: pkt.op(),
                        flags: pkt.flags(),
                        buf_alloc: pkt.buf_alloc(),
                        fwd_cnt: pkt.fwd_cnt(),
                    };
                    let n = match pkt.data_slice() {
                        Some(d) if d.len() <= state.scratch.len() => {
                            d.copy_to(&mut state.scratch[..d.len()])
                        }
                        _ => 0,
                    };
                    if n == h.len as usize {
                        let State { muxer, scratch, .. } = &mut *state;
                        muxer.on_guest_packet(&h, &scratch[..n]);
                    } else {
                        state.bad_chains += 1;
                    }
                }
                Err(_) => state.bad_chains += 1,
            }
            if vs.get_queue_mut().add_used(mem.deref(), head, 0).is_err() {
                state.bad_chains += 1;
            }
            used = true;
        }
        if used {
            vs.signal_used_queue()?;
        }
        Ok(())
    }

    fn process_rx(state: &mut State, vring: &VringRwLock) -> io::Result<()> {
        let Some(mem) = state.mem.as_ref().map(GuestMemoryAtomic::memory) else {
            return Ok(());
        };
        let mut vs = vring.get_mut();
        let mut used = false;
        while state.muxer.has_rx() {
            let queue = vs.get_queue_mut();
            if !queue.ready() {
                break;
            }
            let Some(mut chain) = queue.pop_descriptor_chain(mem.clone()) else {
                break;
            };
            let head = chain.head_index();
            let mut pkt =
                match VsockPacket::from_rx_virtq_chain(mem.deref(), &mut chain, MAX_PKT_LEN) {
                    Ok(p) => p,
                    Err(_) => {
                        state.bad_chains += 1;
                        let _ = queue.add_used(mem.deref(), head, 0);
                        used = true;
                        continue;
                    }
                };
            let cap = pkt.data_slice().map_or(0, |d| d.len()).min(MAX_PKT_DATA);
            let State { muxer, scratch, .. } = &mut *state;
            let Some((h, n)) = muxer.next_rx(&mut scratch[..cap]) else {
                queue.go_to_previous_position();
                break;
            };
            let written = pkt.set_header_from_raw(&h.encode()).is_ok()
                && match pkt.data_slice() {
                    Some(d) if n <= d.len() => {
                        d.copy_from(&scratch[..n]);
                        true
                    }
                    Some(_) => false,
                    None => n == 0,
                };
            // At most a header and MAX_PKT_DATA: always fits.
            let len = if written {
                u32::try_from(HEADER_LEN + n).unwrap_or(0)
            } else {
                0
            };
            if queue.add_used(mem.deref(), head, len).is_err() {
                state.bad_chains += 1;
            }
            used = true;
        }
        if used {
            vs.signal_used_queue()?;
        }
        Ok(())
    }
}

impl VhostUserBackend for VsockBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_F_NOTIFY_ON_EMPTY)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ
    }

    fn set_event_idx(&self, _enabled: bool) {
        // VIRTIO_RING_F_EVENT_IDX is not offered.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let config = self.cid.to_le_bytes();
        let start = offset as usize;
        let end = start.saturating_add(size as usize);
        config
            .get(start..end)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    fn reset_device(&self) {
        self.lock().muxer.reset_all();
    }

    fn update_memory(&self, mem: Memory) -> io::Result<()> {
        self.lock().mem = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<EventFd> {
        self.exit.try_clone().ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        let (Some(rx), Some(tx)) = (
            vrings.get(usize::from(RX_QUEUE)),
            vrings.get(usize::from(TX_QUEUE)),
        ) else {
            return Ok(());
        };
        let mut state = self.lock();
        match device_event {
            TX_QUEUE => Self::process_tx(&mut state, tx)?,
            BACKEND_EVENT => state.muxer.process_host_events(),
            _ => {}
        }
        Self::process_rx(&mut state, rx)
    }
}

/// A running device: the vhost-user socket QEMU connects to, and its threads.
pub struct VsockDevice {
    backend: VsockBackend,
    socket: PathBuf,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for VsockDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockDevice")
            .field("cid", &self.backend.cid)
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl VsockDevice {
    /// Binds the vhost-user socket at `socket` and serves one front-end connection on it.
    pub fn start(cid: u32, muxer: Muxer, socket: &Path) -> Result<Self, DeviceError> {
        let epoll_fd = muxer.epoll_fd();
        let backend = VsockBackend::new(cid, muxer)?;
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::<()>::new());
        let mut daemon = VhostUserDaemon::new("vsock-vhost".into(), backend.clone(), mem)
            .map_err(|e| DeviceError::Daemon(e.to_string()))?;
        for handler in daemon.get_epoll_handlers() {
            handler
                .register_listener(epoll_fd, EventSet::IN, u64::from(BACKEND_EVENT))
                .map_err(|source| DeviceError::Io {
                    context: "registering the muxer with the vhost worker",
                    source,
                })?;
        }
        let listener =
            Listener::new(socket, true).map_err(|e| DeviceError::Bind(socket.to_owned(), e))?;
        let exit = backend.exit.clone();
        let thread = std::thread::Builder::new()
            .name("vsock-vhost-main".into())
            .spawn(move || {
                if daemon.start(listener).is_ok() {
                    let _ = daemon.wait();
                }
                let _ = exit.write(1);
            })
            .map_err(|source| DeviceError::Io {
                context: "spawning the vhost-user thread",
                source,
            })?;
        Ok(Self {
            backend,
            socket: socket.to_owned(),
            thread: Some(thread),
        })
    }

    /// The backend (statistics, tests).
    pub fn backend(&self) -> &VsockBackend {
        &self.backend
    }

    /// The vhost-user socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops serving: returns once the front-end has gone (call after QEMU exited).
    pub fn stop(&mut self) {
        let _ = self.backend.exit.write(1);
        if let Some(t) = self.thread.take() {
            if !t.is_finished() {
                // Still waiting for a front-end that never came: connect once so the accept
                // returns; the empty connection then ends the request loop.
                let _ = std::os::unix::net::UnixStream::connect(&self.socket);
            }
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
        self.lock_reset();
    }

    fn lock_reset(&self) {
        let mut state = self.backend.lock();
        state.muxer.reset_all();
        state.muxer.close_host_socket();
    }
}

impl Drop for VsockDevice {
    fn drop(&mut self) {
        self.stop();
    }
}

//! cloister-vsock: vsock addressing and transports for Cloister.
//!
//! - [`VsockStream`] / [`VsockListener`] (blocking, `Read + Write`) and, with the `tokio`
//!   feature, [`tokio::VsockStream`] / [`tokio::VsockListener`] (`AsyncRead + AsyncWrite`).
//!   They pick a transport with [`Transport::detect`]: inside a Cloister process enclave
//!   (`/dev/vsock.sock` exists) the broker's line protocol; on the host the fabric directory
//!   `<run>/vsock` (run dir from `CLOISTER_RUN_DIR`, default `/run/cloister`); elsewhere native
//!   `AF_VSOCK`. `CLOISTER_VSOCK_TRANSPORT=fabric|enclave|native` forces one. Explicit
//!   constructors (`connect_fabric`, `bind_enclave`, ...) take a directory or socket path.
//! - [`broker::Broker`]: the monitor side, one per enclave.
//! - [`proto`] (the handshake lines) and [`nsm_frame`] (the NSM channel's framing): the
//!   parsers of untrusted bytes, fuzzed by `fuzz/fuzz_targets/vsock_fabric.rs`.
//!
//! # Protocol decisions (details the runtime design left to this crate)
//!
//! - Streams are never relayed: the broker passes connected Unix sockets with SCM_RIGHTS.
//!   Enclave `CONNECT 3 <port>` is answered `OK <src_port>\n` with the connected socket
//!   attached to that line; `CONNECT 0 1` (NSM) and the first `CONNECT 3 9000` (heartbeat) are
//!   answered `OK <src_port>\n` with no descriptor, and the request connection itself carries
//!   the stream. Rule for clients: the stream is the descriptor that came with the `OK` line,
//!   or the request connection when none came.
//! - `LISTEN <port>\n` -> `OK\n`; each incoming connection is `ACCEPT <cid> <port>\n` with the
//!   connection's descriptor attached to that line. Errors: `ERR EADDRINUSE`, `ERR ENOBUFS`
//!   (listener cap), `ERR EACCES` (cid other than 0 and 3), `ERR ECONNREFUSED`, `ERR EINVAL`
//!   (malformed request), `ERR EAGAIN` (connection cap), `ERR ETIMEDOUT`, `ERR ECONNRESET`,
//!   `ERR EIO`.
//! - NSM frames: the broker reads frames up to 64 KiB (`nsm_frame::NSM_FRAME_HARD_CAP`; a
//!   larger length prefix closes the channel) and hands every one to the `NsmService`, whose
//!   job it is to answer `InputTooLarge` above 4096 bytes; the broker itself does not speak
//!   CBOR.
//! - Inside a process enclave the local cid is unknown; `local_addr().cid` is
//!   `VMADDR_CID_ANY` there.
//! - Fabric trust: a host client checks that `<cid>.sock` is held by root or by its own uid, and
//!   a host listener accepts `CONNECT-FROM` only from root, its own uid, or the host identity
//!   the named cid's broker socket vouches for (`SO_PEERCRED`), so an unprivileged host user can
//!   neither impersonate an enclave nor fake a broker. The fabric directory is created with
//!   mode 1777 (and refused when others may write to it without the sticky bit) and sockets
//!   with mode 0666: any host user may act as a parent process, as on a Nitro parent instance.
//!   The broker dials only singly linked sockets bound in the fabric directory, never through a
//!   symlink, and with the enclave's unprivileged host identity, never root's: see [`hostfs`].

pub mod addr;
pub mod broker;
pub(crate) mod fdpass;
pub mod hostfs;
pub mod nsm_frame;
pub mod proto;
pub mod ratelimit;
pub mod stream;
#[cfg(feature = "tokio")]
pub mod tokio;

pub use addr::{
    enclave_may_reach, is_enclave_cid, VsockAddr, FIRST_ENCLAVE_CID, HEARTBEAT_BYTE,
    HEARTBEAT_PORT, LAST_ENCLAVE_CID, NSM_PORT, PARENT_CID, VMADDR_CID_ANY, VMADDR_CID_HOST,
    VMADDR_CID_HYPERVISOR, VMADDR_CID_LOCAL, VMADDR_PORT_ANY,
};
pub use broker::{
    Broker, BrokerConfig, BrokerError, BrokerLimits, BrokerStats, EnclaveSocket, NsmService,
};
pub use hostfs::{FabricDir, FabricError, HostIdentity};
pub use stream::{
    fabric_dir, run_dir, Transport, VsockError, VsockListener, VsockStream, ENCLAVE_SOCKET_PATH,
};

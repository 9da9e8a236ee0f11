//! cloister-sdk: what code inside an enclave links.
//!
//! - [`nsm`]: the NSM client (AWS's `nsm_init` / `nsm_process_request` / `nsm_exit`, over
//!   `/dev/nsm` or the vsock fabric's NSM channel) and the typed [`nsm::NsmClient`];
//! - vsock: [`VsockStream`], [`VsockListener`] and friends, re-exported from `cloister-vsock`
//!   (the whole crate is [`vsock`]), which pick the right transport on their own.

pub mod nsm;
pub use cloister_vsock as vsock;
pub use cloister_vsock::{
    Transport, VsockAddr, VsockError, VsockListener, VsockStream, HEARTBEAT_PORT, NSM_PORT,
    PARENT_CID, VMADDR_CID_ANY, VMADDR_CID_HYPERVISOR,
};

pub mod kms_client;
pub mod recipient;

//! vsock addressing: `(cid, port)` pairs, the well-known CIDs and ports, and the CID rules
//! that every transport applies.

use std::fmt;
use std::str::FromStr;

/// Wildcard CID: bind on every local CID (and "unknown" for a local address).
pub const VMADDR_CID_ANY: u32 = u32::MAX;
/// The hypervisor: the NSM and the console live here.
pub const VMADDR_CID_HYPERVISOR: u32 = 0;
/// Local loopback (reserved here: enclaves cannot use it to reach anything).
pub const VMADDR_CID_LOCAL: u32 = 1;
/// Reserved by Linux for "the host" in nested setups; unused by Cloister.
pub const VMADDR_CID_HOST: u32 = 2;
/// The parent instance (the host side of every enclave).
pub const PARENT_CID: u32 = 3;
/// Smallest CID an enclave can have.
pub const FIRST_ENCLAVE_CID: u32 = 4;
/// Largest CID an enclave can have (`u32::MAX` is `VMADDR_CID_ANY`).
pub const LAST_ENCLAVE_CID: u32 = u32::MAX - 1;
/// Wildcard port.
pub const VMADDR_PORT_ANY: u32 = u32::MAX;
/// Parent port that receives init's boot heartbeat.
pub const HEARTBEAT_PORT: u32 = 9000;
/// The heartbeat byte, sent by init and echoed by the monitor.
pub const HEARTBEAT_BYTE: u8 = 0xB7;
/// Port of the NSM on the hypervisor CID.
pub const NSM_PORT: u32 = 1;

/// True when `cid` can name an enclave (4 ..= 2^32-2).
pub const fn is_enclave_cid(cid: u32) -> bool {
    cid >= FIRST_ENCLAVE_CID && cid <= LAST_ENCLAVE_CID
}

/// True when code inside an enclave may connect to `cid`: only the parent and the hypervisor's
/// services, never another enclave.
pub const fn enclave_may_reach(cid: u32) -> bool {
    cid == PARENT_CID || cid == VMADDR_CID_HYPERVISOR
}

/// A vsock address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VsockAddr {
    /// Context id (the machine).
    pub cid: u32,
    /// Port on that machine.
    pub port: u32,
}

impl VsockAddr {
    /// The address `(cid, port)`.
    pub const fn new(cid: u32, port: u32) -> Self {
        Self { cid, port }
    }
}

impl fmt::Display for VsockAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.cid, self.port)
    }
}

/// Error parsing a `cid:port` string.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddrParseError {
    /// The address is not of the form `cid:port`.
    #[error("vsock address {0:?} is not of the form cid:port")]
    Syntax(String),
    /// The cid or the port is not a decimal u32.
    #[error("vsock address {0:?} has a cid or port that is not a decimal u32")]
    Number(String),
}

impl FromStr for VsockAddr {
    type Err = AddrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (cid, port) = s
            .split_once(':')
            .ok_or_else(|| AddrParseError::Syntax(s.to_owned()))?;
        let cid = cid
            .parse::<u32>()
            .map_err(|_| AddrParseError::Number(s.to_owned()))?;
        let port = port
            .parse::<u32>()
            .map_err(|_| AddrParseError::Number(s.to_owned()))?;
        Ok(Self { cid, port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cid_rules() {
        assert!(!is_enclave_cid(VMADDR_CID_HYPERVISOR));
        assert!(!is_enclave_cid(PARENT_CID));
        assert!(is_enclave_cid(4));
        assert!(is_enclave_cid(u32::MAX - 1));
        assert!(!is_enclave_cid(VMADDR_CID_ANY));
        assert!(enclave_may_reach(PARENT_CID));
        assert!(enclave_may_reach(VMADDR_CID_HYPERVISOR));
        assert!(!enclave_may_reach(5));
        assert!(!enclave_may_reach(VMADDR_CID_LOCAL));
        assert!(!enclave_may_reach(VMADDR_CID_HOST));
    }

    #[test]
    fn display_and_parse() {
        let a = VsockAddr::new(16, 5005);
        assert_eq!(a.to_string(), "16:5005");
        assert_eq!("16:5005".parse::<VsockAddr>(), Ok(a));
        assert!(matches!(
            "16".parse::<VsockAddr>(),
            Err(AddrParseError::Syntax(_))
        ));
        assert!(matches!(
            "16:-1".parse::<VsockAddr>(),
            Err(AddrParseError::Number(_))
        ));
    }
}

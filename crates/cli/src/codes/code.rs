//! The code type, one constant per code, and what each code's table entry holds.

use std::fmt;

/// One stable error code: `E` and three digits. Only the constants of this module exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Code(&'static str);

impl Code {
    /// The code's text (`E123`).
    pub const fn as_str(self) -> &'static str {
        self.0
    }
}

impl std::ops::Deref for Code {
    type Target = str;

    fn deref(&self) -> &str {
        self.0
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl PartialEq<&str> for Code {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<str> for Code {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

/// Defines each code as a constant named after itself.
macro_rules! codes {
    ($($name:ident),* $(,)?) => {
        $(
            #[doc = concat!("Error code ", stringify!($name), " (see its table entry).")]
            pub const $name: Code = Code(stringify!($name));
        )*
    };
}

codes!(
    E001, E002, E003, E099, E101, E102, E103, E104, E105, E106, E107, E108, E109, E110, E111, E112,
    E113, E114, E115, E116, E117, E118, E119, E120, E121, E122, E123, E124, E125, E126, E127, E128,
    E129, E130, E131, E132, E201, E202, E203, E204, E205, E210, E211, E212, E213, E214, E215, E216,
    E217, E218, E219, E220, E221, E222, E223, E224, E225, E226, E227, E228, E229, E230, E231, E232,
    E233, E234, E235, E236, E237, E301, E302, E303, E304, E305, E306, E307, E308, E309, E310, E311,
    E312, E313, E314, E315, E316, E317, E318, E319, E320, E321, E322, E401, E402, E403, E404, E405,
    E406, E501, E502, E503, E504, E505, E506, E510, E511, E512, E513, E514, E601, E602, E603, E604,
    E605, E606, E607, E608, E609, E610, E611, E612, E613, E614, E701, E702, E801, E802, E803, E804,
    E805, E806, E807, E808, E809, E810, E811, E812, E813, E814, E901, E902, E903, E904,
);

/// Exit statuses, by class of failure. Stable; documented in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Any failure without a more specific class.
    Failure,
    /// Bad command-line usage (also what argument parsing returns).
    Usage,
    /// An input file or document is malformed.
    InvalidInput,
    /// A signature, checksum, attestation or policy check failed.
    VerificationFailed,
    /// A resource (CPU, memory, CID, enclave, key) is missing or unavailable.
    Unavailable,
    /// The operating system refused an operation (I/O, permissions, kernel features).
    System,
    /// Something did not happen in time.
    Timeout,
    /// A bug in cloister.
    Internal,
}

impl ExitKind {
    /// The process exit status for this class.
    pub fn status(self) -> i32 {
        match self {
            ExitKind::Failure => 1,
            ExitKind::Usage => 2,
            ExitKind::InvalidInput => 3,
            ExitKind::VerificationFailed => 4,
            ExitKind::Unavailable => 5,
            ExitKind::System => 6,
            ExitKind::Timeout => 7,
            ExitKind::Internal => 8,
        }
    }
}

/// One documented error code.
#[derive(Debug, Clone, Copy)]
pub struct ErrorInfo {
    /// `E` and three digits.
    pub code: Code,
    /// Exit class.
    pub exit: ExitKind,
    /// One line: what happened.
    pub summary: &'static str,
    /// What it means and what to do about it.
    pub explanation: &'static str,
}

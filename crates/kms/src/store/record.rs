//! The parts of a [`KeyRecord`](super::KeyRecord) that the operations beyond the core set add:
//! grants, the import state of an `EXTERNAL` key, and the Regions of a multi-Region key. They
//! live with the store, which persists them and reads them (a replica's view, the replicas due
//! for deletion); the operations that change them (`service::ops`) build on these types.

pub mod grant;
pub mod import;
pub mod multi_region;

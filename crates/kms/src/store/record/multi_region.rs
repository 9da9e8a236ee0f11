//! The Regions of a multi-Region key as stored in its record, and the pure functions over
//! them that the store and the Region operations share (each Region's view, replica deletion).

use super::grant::GrantRecord;
use super::import::PendingImport;
use crate::error::{KmsError, KmsResult};
use crate::store::{KeyRecord, KeyState, Tag};
use serde::{Deserialize, Serialize};

/// What the key of each Region of a multi-Region key has of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionFields {
    /// Description.
    pub description: String,
    /// State.
    pub state: KeyState,
    /// When a pending deletion completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_date: Option<f64>,
    /// Waiting period of a pending deletion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_window_days: Option<u32>,
    /// Key policy text.
    pub policy: String,
    /// Tags, in insertion order.
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// Grants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<GrantRecord>,
    /// Of a key of origin `EXTERNAL`: the expiration model of the material imported into this
    /// Region's key (none: this Region's key has no material).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_expiration_model: Option<String>,
    /// When the material imported into this Region's key expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_valid_to: Option<f64>,
    /// This Region's outstanding import parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_pending: Option<PendingImport>,
}

impl RegionFields {
    /// Moves these fields out of `r` (leaving empty values). Of the import state of an
    /// `EXTERNAL` key, each Region has its own material (imported into each Region's key, the
    /// same material everywhere), expiry and import parameters; the digest every import must
    /// match stays shared.
    fn take(r: &mut KeyRecord) -> Self {
        let (import_expiration_model, import_valid_to, import_pending) = match r.import.as_mut() {
            Some(i) => (
                i.expiration_model.take(),
                i.valid_to.take(),
                i.pending.take(),
            ),
            None => (None, None, None),
        };
        RegionFields {
            import_expiration_model,
            import_valid_to,
            import_pending,
            description: std::mem::take(&mut r.description),
            state: r.state,
            deletion_date: r.deletion_date.take(),
            pending_window_days: r.pending_window_days.take(),
            policy: std::mem::take(&mut r.policy),
            tags: std::mem::take(&mut r.tags),
            grants: std::mem::take(&mut r.grants),
        }
    }

    /// Puts these fields into `r`.
    fn put(self, r: &mut KeyRecord) {
        r.description = self.description;
        r.state = self.state;
        r.deletion_date = self.deletion_date;
        r.pending_window_days = self.pending_window_days;
        r.policy = self.policy;
        r.tags = self.tags;
        r.grants = self.grants;
        if let Some(i) = r.import.as_mut() {
            i.expiration_model = self.import_expiration_model;
            i.valid_to = self.import_valid_to;
            i.pending = self.import_pending;
        }
    }
}

/// A replica of a multi-Region key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaRecord {
    /// Its Region.
    pub region: String,
    /// When it was made.
    pub created: f64,
    /// Its own policy, grants, description, tags and state. Absent in records of earlier
    /// versions, whose replicas shared the primary's: such a replica starts from a copy of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own: Option<RegionFields>,
}

/// Exchanges the Region fields of `r` (its primary's) with those of its replica in `region`;
/// done twice, it restores `r`. Returns false (and changes nothing) when `region` is the
/// primary's or `r` is a single-Region key; NotFoundException when `r` has no replica there.
pub fn swap_region(r: &mut KeyRecord, region: &str) -> KmsResult<bool> {
    let i = match &r.multi_region {
        Some(m) if m.primary != region => m
            .replicas
            .iter()
            .position(|x| x.region == region)
            .ok_or_else(|| KmsError::NotFound(format!("Key '{}' does not exist", r.id)))?,
        _ => return Ok(false),
    };
    let here = RegionFields::take(r);
    let mr = r
        .multi_region
        .as_mut()
        .ok_or_else(|| KmsError::Internal("multi-Region record".into()))?;
    let there = mr.replicas[i].own.take().unwrap_or_else(|| here.clone());
    mr.replicas[i].own = Some(here);
    there.put(r);
    Ok(true)
}

/// The record of a multi-Region key as its replica in `region` sees it (the replicas' own
/// fields left out), or `None` when `region` is not one of its replica Regions.
pub fn replica_view(r: &KeyRecord, region: &str) -> KmsResult<Option<KeyRecord>> {
    match &r.multi_region {
        Some(m) if m.primary != region && m.in_region(region) => {}
        _ => return Ok(None),
    }
    let mut v = r.clone();
    swap_region(&mut v, region)?;
    if let Some(m) = v.multi_region.as_mut() {
        for x in &mut m.replicas {
            x.own = None;
        }
    }
    Ok(Some(v))
}

/// True when a replica of `r` is due for deletion at `at`, or `r` is a primary whose deletion
/// waited for replicas that are all gone.
pub fn replica_deletion_due(r: &KeyRecord, at: f64) -> bool {
    let Some(m) = &r.multi_region else {
        return false;
    };
    (r.state == KeyState::PendingReplicaDeletion && m.replicas.is_empty())
        || m.replicas.iter().any(|x| {
            let own = x.own.as_ref();
            let state = own.map_or(r.state, |o| o.state);
            let date = own.map_or(r.deletion_date, |o| o.deletion_date);
            state == KeyState::PendingDeletion && date.is_some_and(|d| d <= at)
        })
}

/// Deletes the replicas of `r` whose waiting period is over at `at`; when a primary waiting in
/// `PendingReplicaDeletion` has no replica left, its own waiting period begins. Returns how
/// many replicas were deleted.
pub fn delete_due_replicas(r: &mut KeyRecord, at: f64) -> usize {
    let (state, date) = (r.state, r.deletion_date);
    let Some(m) = r.multi_region.as_mut() else {
        return 0;
    };
    let before = m.replicas.len();
    m.replicas.retain(|x| {
        let own = x.own.as_ref();
        let state = own.map_or(state, |o| o.state);
        let date = own.map_or(date, |o| o.deletion_date);
        !(state == KeyState::PendingDeletion && date.is_some_and(|d| d <= at))
    });
    let deleted = before - m.replicas.len();
    if m.replicas.is_empty() && r.state == KeyState::PendingReplicaDeletion {
        let days = r.pending_window_days.unwrap_or(30);
        r.state = KeyState::PendingDeletion;
        r.deletion_date = Some(at + f64::from(days) * 86_400.0);
    }
    deleted
}

/// Gives each replica of a record of an earlier version (whose replicas shared the primary's
/// fields) its own copy of them, so that a change in one Region stays in that Region.
pub fn materialize_replicas(r: &mut KeyRecord) {
    let Some(m) = &r.multi_region else { return };
    if m.replicas.iter().all(|x| x.own.is_some()) {
        return;
    }
    let snapshot = {
        let mut c = r.clone();
        RegionFields::take(&mut c)
    };
    if let Some(m) = r.multi_region.as_mut() {
        for x in &mut m.replicas {
            x.own.get_or_insert_with(|| snapshot.clone());
        }
    }
}

/// The import state of one Region's key of an `EXTERNAL` key: its state, the expiration
/// model of its material (none: it has none) and when that material expires.
#[derive(Debug)]
pub struct RegionImport<'a> {
    /// The key's state in this Region.
    pub state: &'a mut KeyState,
    /// The expiration model of the material imported here (none: no material here).
    pub expiration_model: &'a mut Option<String>,
    /// When the material imported here expires.
    pub valid_to: &'a mut Option<f64>,
}

impl RegionImport<'_> {
    /// The import state of the Region whose fields `r` holds (the primary's, or, in a record
    /// swapped to a replica's Region, that replica's); none for a key not of origin `EXTERNAL`.
    pub fn of_record(r: &mut KeyRecord) -> Option<RegionImport<'_>> {
        let i = r.import.as_mut()?;
        Some(RegionImport {
            state: &mut r.state,
            expiration_model: &mut i.expiration_model,
            valid_to: &mut i.valid_to,
        })
    }
}

/// Calls `f` with the import state of every Region's key of `r` (the record's own Region
/// first); nothing for a key not of origin `EXTERNAL`.
pub fn for_each_region_import(r: &mut KeyRecord, mut f: impl FnMut(RegionImport<'_>)) {
    materialize_replicas(r);
    let Some(own) = RegionImport::of_record(r) else {
        return;
    };
    f(own);
    if let Some(m) = r.multi_region.as_mut() {
        for own in m.replicas.iter_mut().filter_map(|x| x.own.as_mut()) {
            f(RegionImport {
                state: &mut own.state,
                expiration_model: &mut own.import_expiration_model,
                valid_to: &mut own.import_valid_to,
            });
        }
    }
}

/// The Regions of a multi-Region key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiRegionRecord {
    /// The primary Region.
    pub primary: String,
    /// The replica Regions, in the order they were made.
    #[serde(default)]
    pub replicas: Vec<ReplicaRecord>,
}

impl MultiRegionRecord {
    /// True when the key exists in `region`.
    pub fn in_region(&self, region: &str) -> bool {
        self.primary == region || self.replicas.iter().any(|r| r.region == region)
    }
}

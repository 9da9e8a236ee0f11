//! The in-memory view both stores serve reads from ([`Core`]): keys parsed once (policy,
//! private key), aliases, and the row revisions the PostgreSQL store keeps current.

use super::*;

impl Core {
    pub(super) fn new(master: LessSafeKey) -> Self {
        Core {
            master,
            state: RwLock::new(State::default()),
        }
    }

    pub(super) fn read_state(&self) -> KmsResult<std::sync::RwLockReadGuard<'_, State>> {
        self.state.read().map_err(|_| poisoned())
    }

    pub(super) fn write_state(&self) -> KmsResult<std::sync::RwLockWriteGuard<'_, State>> {
        self.state.write().map_err(|_| poisoned())
    }

    pub(super) fn seal_bytes(&self, aad: &[u8], plain: &[u8]) -> KmsResult<String> {
        seal_with(&self.master, aad, plain)
    }

    pub(super) fn unseal_bytes(&self, aad: &[u8], sealed: &str) -> KmsResult<Zeroizing<Vec<u8>>> {
        unseal_with(&self.master, aad, sealed)
    }

    pub(super) fn seal_admin(&self, cred: &AdminCredential) -> KmsResult<String> {
        let json =
            Zeroizing::new(serde_json::to_vec(cred).map_err(|e| KmsError::internal("encode", e))?);
        self.seal_bytes(ADMIN_AAD, &json)
    }

    pub(super) fn unseal_admin(&self, sealed: &str) -> KmsResult<AdminCredential> {
        let plain = self.unseal_bytes(ADMIN_AAD, sealed)?;
        serde_json::from_slice(&plain).map_err(|e| KmsError::internal("admin", e))
    }

    /// Builds the served entry, reusing already-unsealed material where it is the same.
    pub(super) fn entry(&self, record: KeyRecord, prev: Option<&KeyEntry>) -> KmsResult<KeyEntry> {
        // The previous entry's material is reused only where the sealed versions are the very
        // same strings (a cached entry of another server's older state may differ).
        let prev_same = prev.filter(|p| p.record.materials == record.materials);
        let private = self.private_material(&record, prev_same)?;
        let materials = match prev_same {
            _ if private.is_some() => Arc::new(Vec::new()),
            Some(p) => p.materials.clone(),
            None => {
                let mut v = Vec::with_capacity(record.materials.len());
                for (i, sealed) in record.materials.iter().enumerate() {
                    let m = self.unseal_bytes(&material_aad(&record.id, i), sealed)?;
                    if m.len() != MATERIAL_LEN {
                        return Err(KmsError::Internal("material length".into()));
                    }
                    v.push(aead_key(&m)?);
                }
                Arc::new(v)
            }
        };
        let parse = |record: &KeyRecord, prev: Option<&KeyEntry>| -> KmsResult<Arc<Policy>> {
            match prev {
                Some(p) if p.record.policy == record.policy => Ok(p.policy.clone()),
                _ => Ok(Arc::new(Policy::parse(&record.policy).map_err(|e| {
                    KmsError::Internal(format!("stored policy of {}: {e}", record.id))
                })?)),
            }
        };
        let policy = parse(&record, prev)?;
        let mut replicas = Vec::new();
        if let Some(m) = &record.multi_region {
            for x in &m.replicas {
                let Some(view) = record::multi_region::replica_view(&record, &x.region)? else {
                    continue;
                };
                let prev_view = prev.and_then(|p| p.in_region(&x.region)).map(|v| &**v);
                let policy = parse(&view, prev_view)?;
                replicas.push((
                    x.region.clone(),
                    Arc::new(KeyEntry {
                        record: view,
                        materials: materials.clone(),
                        policy,
                        private: private.clone(),
                        replicas: Vec::new(),
                    }),
                ));
            }
        }
        Ok(KeyEntry {
            record,
            materials,
            policy,
            private,
            replicas,
        })
    }

    /// Unseals and parses the material of an asymmetric or HMAC key (one version: these keys do
    /// not rotate); `None` for a symmetric key.
    pub(super) fn private_material(
        &self,
        record: &KeyRecord,
        prev: Option<&KeyEntry>,
    ) -> KmsResult<Option<Arc<KeyMaterial>>> {
        // A symmetric key, or an HMAC key of origin EXTERNAL awaiting its material.
        if record.key_spec.is_symmetric() || record.materials.is_empty() {
            return Ok(None);
        }
        if let Some(p) = prev.and_then(|p| p.private.as_ref()) {
            return Ok(Some(p.clone()));
        }
        let [sealed] = &record.materials[..] else {
            return Err(KmsError::Internal(format!(
                "key {} of spec {} has {} material versions",
                record.id,
                record.key_spec,
                record.materials.len()
            )));
        };
        let bytes = self.unseal_bytes(&material_aad(&record.id, 0), sealed)?;
        Ok(Some(Arc::new(KeyMaterial::load(record.key_spec, &bytes)?)))
    }

    pub(super) fn cached_key(&self, id: &[u8; 16]) -> KmsResult<Option<Arc<KeyEntry>>> {
        Ok(self.read_state()?.keys.get(id).cloned())
    }

    /// Puts a committed entry of revision `rev` in the view unless a newer one is there.
    pub(super) fn put_entry(&self, id: [u8; 16], rev: i64, entry: Arc<KeyEntry>) -> KmsResult<()> {
        let mut st = self.write_state()?;
        if st.key_revs.get(&id).is_some_and(|r| *r > rev) {
            return Ok(());
        }
        st.keys.insert(id, entry);
        st.key_revs.insert(id, rev);
        Ok(())
    }

    /// Puts a committed key record of revision `rev` (read from the database) in the view.
    pub(super) fn apply_key(&self, rev: i64, record: KeyRecord) -> KmsResult<()> {
        let id = parse_key_id(&record.id)
            .ok_or_else(|| KmsError::Internal(format!("bad key id {}", record.id)))?;
        let prev = {
            let st = self.read_state()?;
            if st.key_revs.get(&id).is_some_and(|r| *r >= rev) {
                return Ok(());
            }
            st.keys.get(&id).cloned()
        };
        let entry = Arc::new(self.entry(record, prev.as_deref())?);
        self.put_entry(id, rev, entry)
    }

    /// Removes a key from the view if its cached revision is below `rev`.
    pub(super) fn remove_key_below(&self, id: &[u8; 16], rev: i64) -> KmsResult<()> {
        let mut st = self.write_state()?;
        if st.key_revs.get(id).is_none_or(|r| *r < rev) {
            st.keys.remove(id);
            st.key_revs.remove(id);
        }
        Ok(())
    }

    pub(super) fn apply_alias(&self, name: &str, rev: i64, rec: AliasRecord) -> KmsResult<()> {
        let mut st = self.write_state()?;
        if st.alias_revs.get(name).is_some_and(|r| *r > rev) {
            return Ok(());
        }
        st.aliases.insert(name.to_string(), rec);
        st.alias_revs.insert(name.to_string(), rev);
        Ok(())
    }

    pub(super) fn remove_alias_below(&self, name: &str, rev: i64) -> KmsResult<()> {
        let mut st = self.write_state()?;
        if st.alias_revs.get(name).is_none_or(|r| *r < rev) {
            st.aliases.remove(name);
            st.alias_revs.remove(name);
        }
        Ok(())
    }
}

//! Completed exports by id, kept in memory: a completed export never changes until it is
//! deleted, so reads of its profiles need no export lookup of their own (the page query itself
//! checks that the export still exists).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use uuid::Uuid;

use crate::db::exports::{ExportRow, ExportStatus};

/// Exports kept at most; past that the map starts over (a miss costs one query).
const CAPACITY: usize = 4096;

#[derive(Default)]
pub struct CompletedExports(Mutex<HashMap<Uuid, Arc<ExportRow>>>);

impl CompletedExports {
    pub fn get(&self, id: Uuid) -> Option<Arc<ExportRow>> {
        self.lock().get(&id).cloned()
    }

    /// Keeps `row` if it is completed; returns it either way.
    pub fn offer(&self, row: ExportRow) -> Arc<ExportRow> {
        let row = Arc::new(row);
        if row.status == ExportStatus::Completed {
            let mut map = self.lock();
            if map.len() >= CAPACITY {
                map.clear();
            }
            map.insert(row.id, row.clone());
        }
        row
    }

    pub fn forget(&self, id: Uuid) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<ExportRow>>> {
        // A panic while holding the lock cannot leave the map half-written: use it as it is.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

//! On-disk caches under `<user cache dir>/longctx/`: one JSON list per file, each entry
//! stamped with its schema number. Reading never fails: a missing file is empty, and a file
//! that does not parse, or an entry of another schema, is ignored with a warning naming the
//! file. Writing is atomic (a temporary file in the same directory, then a rename), so a
//! failed write never loses the previous contents.

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One cache file and the schema its entries follow.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DiskCache {
    /// File name under `<user cache dir>/longctx/`.
    pub file: &'static str,
    /// Bumped whenever an entry's meaning changes; older entries are ignored.
    pub schema: u32,
}

#[derive(Serialize, Deserialize)]
struct Stamped<T> {
    schema: u32,
    #[serde(flatten)]
    entry: T,
}

impl DiskCache {
    /// The file's path, if the platform has a user cache directory.
    pub fn path(&self) -> Option<PathBuf> {
        dirs::cache_dir().map(|d| d.join("longctx").join(self.file))
    }

    /// Every readable entry of this schema.
    pub fn load<T: DeserializeOwned>(&self) -> Vec<T> {
        let Some(path) = self.path() else { return Vec::new() };
        if !path.exists() {
            return Vec::new();
        }
        let bytes = match crate::io::read_regular(&path, 64 << 20) {
            Ok(b) => b,
            Err(e) => {
                log::warn!("ignoring the cache: {e} (delete it to start afresh)");
                return Vec::new();
            }
        };
        let values: Vec<serde_json::Value> = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                log::warn!("ignoring unreadable cache {}: {e} (delete it to start afresh)", path.display());
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(values.len());
        for v in values {
            match serde_json::from_value::<Stamped<T>>(v) {
                Ok(s) if s.schema == self.schema => out.push(s.entry),
                Ok(s) => log::warn!(
                    "ignoring an entry of schema {} in {} (this build reads schema {})",
                    s.schema,
                    path.display(),
                    self.schema
                ),
                Err(e) => log::warn!(
                    "ignoring an unreadable entry in {}: {e} (delete the file to start afresh)",
                    path.display()
                ),
            }
        }
        out
    }

    /// Stores `entry`, replacing the entries `same` matches; other entries are kept.
    pub(crate) fn upsert<T: Serialize + DeserializeOwned>(
        &self,
        entry: T,
        same: impl Fn(&T) -> bool,
    ) -> Result<()> {
        let Some(path) = self.path() else { return Ok(()) };
        let mut all: Vec<T> = self.load();
        all.retain(|e| !same(e));
        all.push(entry);
        let stamped: Vec<Stamped<T>> =
            all.into_iter().map(|entry| Stamped { schema: self.schema, entry }).collect();
        let err = |e: std::io::Error| Error::File { path: path.clone(), message: e.to_string() };
        let bytes = serde_json::to_vec_pretty(&stamped).map_err(|e| err(std::io::Error::other(e)))?;
        let dir = path.parent().ok_or_else(|| err(std::io::Error::other("no parent directory")))?;
        std::fs::create_dir_all(dir).map_err(err)?;
        crate::io::write_atomic(&path, &bytes)
    }
}

//! Tuned winners: the autotuner's measured configurations for one adapter, as plain data a
//! caller attaches to a [`Gpu`](crate::runtime::Gpu) ([`Gpu::with_tuned`](crate::runtime::Gpu::with_tuned)),
//! owned or borrowed alike. Each kernel names its own keys and reads its own values; the
//! runtime only stores them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::runtime::cache::DiskCache;
use crate::runtime::profile::driver_of;

/// `<user cache dir>/longctx/tune.json`; schema 2 stores winners under kernel-owned keys.
const CACHE: DiskCache = DiskCache { file: "tune.json", schema: 2 };

/// Where tuned winners come from, for warnings: the cache file (or the attached winners of
/// an embedder, which read the same file with `Gpu::with_cached_tuning`).
pub fn cache_hint() -> String {
    match CACHE.path() {
        Some(p) => format!("the tuned winners ({})", p.display()),
        None => "the tuned winners".into(),
    }
}

/// The winners for one adapter, driver, backend and longctx version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tuned {
    /// Adapter name, as wgpu reports it.
    pub adapter: String,
    /// Driver and driver version (see [`driver_of`]).
    pub driver: String,
    /// Backend (`Vulkan`, `Metal`, …).
    pub backend: String,
    /// The longctx version that measured them: winners never outlive a kernel change.
    pub version: String,
    /// Winners by kernel-owned key (e.g. `flash:d=64`), each a kernel's configuration as
    /// numbers; the kernel validates them when it reads them.
    pub winners: BTreeMap<String, Vec<u32>>,
}

impl Tuned {
    /// An empty record for this adapter and this build.
    pub fn for_adapter(info: &wgpu::AdapterInfo) -> Self {
        Self {
            adapter: info.name.clone(),
            driver: driver_of(info),
            backend: format!("{:?}", info.backend),
            version: crate::VERSION.to_string(),
            winners: BTreeMap::new(),
        }
    }

    /// Whether these winners were measured on this adapter, driver and backend by this build.
    pub fn matches(&self, info: &wgpu::AdapterInfo) -> bool {
        let me = Self::for_adapter(info);
        (&self.adapter, &self.driver, &self.backend, &self.version)
            == (&me.adapter, &me.driver, &me.backend, &me.version)
    }

    /// The winner stored under `key`.
    pub fn get(&self, key: &str) -> Option<&[u32]> {
        self.winners.get(key).map(Vec::as_slice)
    }

    /// Sets the winner under `key`.
    pub fn insert(&mut self, key: impl Into<String>, value: Vec<u32>) {
        self.winners.insert(key.into(), value);
    }

    /// Where [`Tuned::cached`] and [`Tuned::store`] keep winners.
    pub fn cache_path() -> Option<std::path::PathBuf> {
        CACHE.path()
    }

    /// The cached winners for this adapter, if `longctx tune` has measured them.
    pub fn cached(info: &wgpu::AdapterInfo) -> Option<Self> {
        CACHE.load::<Self>().into_iter().find(|t| t.matches(info))
    }

    /// Stores these winners, replacing the record of the same identity (atomic write).
    pub fn store(&self) -> Result<()> {
        let key = |t: &Self| (t.adapter.clone(), t.driver.clone(), t.backend.clone(), t.version.clone());
        let mine = key(self);
        CACHE.upsert(self.clone(), |t| key(t) == mine)
    }
}

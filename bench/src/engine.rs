//! ptvp35 behind the bench's interface.

use std::hint::black_box;
use std::path::{Path, PathBuf};

use anyhow::Result;
use ptvp35::{DbConnection, Delta};

use crate::data::Val;
use crate::stores::{Handle, Store};

pub fn path(dir: &Path) -> PathBuf {
    dir.join("data.db")
}

pub struct Engine {
    pub db: DbConnection<String, Val>,
    /// Bulk loads through `DbConnection::extend` instead of one `Delta`.
    extend: bool,
}

impl Engine {
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Engine {
            db: DbConnection::open(path(dir))?,
            extend: false,
        })
    }

    /// Every commit queued to the writer thread: what a lone committer saves.
    pub fn open_queued(dir: &Path) -> Result<Self> {
        Ok(Engine {
            db: ptvp35::Options::new()
                .caller_writes(false)
                .open(path(dir))?,
            extend: false,
        })
    }

    pub fn open_extend(dir: &Path) -> Result<Self> {
        Ok(Engine {
            db: DbConnection::open(path(dir))?,
            extend: true,
        })
    }
}

struct EngineHandle<'a>(&'a DbConnection<String, Val>);

impl Handle for EngineHandle<'_> {
    fn set(&mut self, k: String, v: Val) -> Result<()> {
        self.0.set(k, v)?;
        Ok(())
    }
    fn txn(&mut self, kv: Vec<(String, Val)>) -> Result<()> {
        let mut d = Delta::new();
        for (k, v) in kv {
            d.set(k, v)?;
        }
        self.0.commit_transaction(d)?;
        Ok(())
    }
    fn get(&mut self, k: &String) -> Result<bool> {
        Ok(self.0.get(k).map(black_box).is_some())
    }
    fn get_ref(&mut self, k: &String) -> Result<bool> {
        Ok(self.0.get_with(k, |v| black_box(v.score)).is_some())
    }
}

impl Store for Engine {
    fn handle(&self) -> Result<Box<dyn Handle + '_>> {
        Ok(Box::new(EngineHandle(&self.db)))
    }
    fn load(&mut self, items: &mut dyn Iterator<Item = (String, Val)>) -> Result<()> {
        if self.extend {
            self.db.extend(items)?;
            return Ok(());
        }
        let mut d = Delta::new();
        for (k, v) in items {
            d.set(k, v)?;
        }
        self.db.commit_transaction(d)?;
        Ok(())
    }
    fn syncs(&self) -> Option<u64> {
        Some(self.db.stats().syncs)
    }
    fn close(self: Box<Self>) -> Result<()> {
        self.db.close()?;
        Ok(())
    }
}

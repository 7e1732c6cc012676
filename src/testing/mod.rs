//! Test support, outside semver: a simulated crashable filesystem ([`SimFs`]), a reference
//! model with its checker, the systematic crash exploration, and the fuzz bodies that
//! `fuzz/` and `cargo test` both call.
//!
//! `docs/recovery.md` ("Crash points") states the disk model that [`SimFs`] implements and
//! lists which test reaches each crash point.

pub use crate::fs::{Fs, FsFile, RealFs};

mod disk;
mod sim;

pub use disk::{random_fate, role, Effect, Fate, Fault, OpKind, PendingOp, Rng, TraceOp};
pub use sim::SimFs;

#[cfg(feature = "testing")]
mod explore;
#[cfg(feature = "testing")]
mod fuzz;
#[cfg(feature = "testing")]
mod model;

#[cfg(feature = "testing")]
pub use explore::{
    crash_recovery as crash_during_recovery, explore, standard_workload, Exploration, Explored,
};
#[cfg(feature = "testing")]
pub use fuzz::{crash_recovery, open_any_files, transactions};
#[cfg(feature = "testing")]
pub use model::{
    db_path, key, open_on, quiet_intended_panics, run_steps, six_paths, state_of, strays, verify,
    Db, IntendedPanic, Model, Outcome, State, Step, Txn, Verified,
};

//! The test kit of `ptvp35`, not published: a simulated crashable filesystem
//! ([`SimFs`]), a reference model with its checker, the systematic crash exploration, and
//! the fuzz bodies that `fuzz/` and `cargo test` both call.
//!
//! It reaches the engine only through the public API and the hidden filesystem seam
//! ([`ptvp35::Fs`], [`ptvp35::Options::filesystem`]), so the library package ships none
//! of it. `docs/recovery.md` ("Crash points") states the disk model that [`SimFs`]
//! implements and lists which test reaches each crash point.

pub use ptvp35::{Fs, FsFile, RealFs};

mod disk;
mod explore;
mod fuzz;
mod model;
mod repair;
mod sim;

pub use disk::{random_fate, role, Effect, Fate, Fault, OpKind, PendingOp, Rng, TraceOp};
pub use explore::{
    explore, first_difference, standard_workload, workload_trace, workload_trace_as, Exploration,
    Explored,
};
pub use fuzz::{
    crash_recovery, crash_recovery_as, open_any_files, open_any_files_as, transactions,
    transactions_as,
};
pub use model::{
    db_path, key, open_on, open_on_as, quiet_intended_panics, run_steps, run_steps_as,
    run_steps_settled, run_steps_settled_as, six_paths, state_of, strays, verify, verify_as, Db,
    IntendedPanic, Kind, Model, Outcome, State, Step, Txn, Verified, WORKLOAD_OWNER,
};
pub use repair::{corrupt_database, explore_repair};
pub use sim::{Owner, SimFs};

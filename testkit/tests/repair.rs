//! `repair` on the simulated filesystem, crashed at each of its operation boundaries,
//! each state then opened with this build's map (`repair_ordered.rs`: the ordered map).

mod common;

use anyhow::{ensure, Result};
use common::Map;
use ptvp35_testkit::{corrupt_database, explore_repair};

#[test]
fn a_crash_anywhere_in_repair_keeps_every_record_and_every_bad_line() -> Result<()> {
    for crashed in [false, true] {
        let (fs, want, bad) = corrupt_database(crashed);
        let n = explore_repair::<Map>(&fs, &want, &bad).map_err(anyhow::Error::msg)?;
        println!(
            "repair of a {} database: {n} crash states",
            if crashed { "crashed" } else { "closed" }
        );
        ensure!(n > 10, "too few crash points: {n}");
    }
    Ok(())
}

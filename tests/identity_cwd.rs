//! A relative path means the directory of the open, whatever the process's working
//! directory does later. Alone in its test binary: it changes the working directory,
//! which every thread of the process shares.

mod common;

use anyhow::{ensure, Result};
use common::{TempDir, TestDb};

#[test]
fn a_relative_path_keeps_naming_the_directory_of_the_open() -> Result<()> {
    let dir = TempDir::new("cwd")?;
    std::fs::create_dir(dir.join("a"))?;
    std::fs::create_dir(dir.join("b"))?;
    std::env::set_current_dir(dir.join("a"))?;
    let db = TestDb::<u32, String>::open("d.db")?;
    db.set(1, "one".into())?;
    std::env::set_current_dir(dir.join("b"))?;
    db.compact()?;
    db.set(2, "two".into())?;
    db.close()?;
    std::env::set_current_dir(dir.path())?;
    ensure!(
        std::fs::read_dir(dir.join("b"))?.next().is_none(),
        "files were written in the new working directory"
    );
    let db = TestDb::<u32, String>::open(dir.join("a").join("d.db"))?;
    ensure!(
        db.recovery_report().was_clean(),
        "{:?}",
        db.recovery_report()
    );
    ensure!(db.get(&1).is_some() && db.get(&2).is_some());
    db.close()?;
    ensure!(db_files(&dir)? == ["d.db"], "{:?}", db_files(&dir)?);
    Ok(())
}

fn db_files(dir: &TempDir) -> std::io::Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("a"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    v.sort();
    Ok(v)
}

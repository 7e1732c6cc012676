//! Transaction views, guards and `transact`: visibility, nesting, panics, isolation.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use anyhow::{bail, ensure, Result};
use common::{TempDir, TestDb};
use ptvp35::{Delta, Error, Options, TransactionView, VirtualConnection};

type Db = TestDb<String, i64>;

fn k(s: &str) -> String {
    s.to_string()
}

#[test]
fn a_transaction_reads_its_own_writes_and_hides_them_until_submitted() -> Result<()> {
    let dir = TempDir::new("ryw")?;
    let db = Db::open(dir.join("t.db"))?;
    db.set(k("a"), 1)?;
    let tx = db.transaction();
    tx.set_nowait(k("a"), 2)?;
    tx.set_nowait(k("b"), 3)?;
    tx.remove_nowait("a")?;
    ensure!(tx.get(&k("a")).is_none(), "own removal");
    ensure!(tx.get(&k("b")) == Some(3), "own write");
    ensure!(
        db.get(&k("a")) == Some(1) && db.get(&k("b")).is_none(),
        "not yet visible"
    );
    tx.submit()?;
    ensure!(db.get(&k("a")).is_none() && db.get(&k("b")) == Some(3));
    drop(tx);
    db.close()?;
    Ok(())
}

#[test]
fn three_levels_with_a_rollback_in_the_middle() -> Result<()> {
    let dir = TempDir::new("nest")?;
    let db = Db::open(dir.join("t.db"))?;
    let outer = db.transaction();
    outer.set_nowait(k("outer"), 1)?;
    {
        let middle = outer.transaction();
        middle.set_nowait(k("middle"), 2)?;
        {
            let inner = middle.transaction();
            inner.set_nowait(k("inner"), 3)?;
            ensure!(
                inner.get(&k("outer")) == Some(1),
                "reads through two parents"
            );
        } // inner submits into middle
        ensure!(middle.get(&k("inner")) == Some(3));
        ensure!(outer.get(&k("inner")).is_none());
        middle.rollback(); // discards its own and the inner changes
    }
    ensure!(outer.get(&k("middle")).is_none() && outer.get(&k("inner")).is_none());
    outer.commit()?;
    ensure!(db.get(&k("outer")) == Some(1));
    ensure!(db.get(&k("middle")).is_none() && db.get(&k("inner")).is_none());
    ensure!(db.len() == 1);
    db.close()?;
    Ok(())
}

#[test]
fn a_panic_inside_a_guard_changes_nothing_and_the_database_stays_usable() -> Result<()> {
    let dir = TempDir::new("panic")?;
    let p = dir.join("t.db");
    let db = Db::open(&p)?;
    db.set(k("keep"), 1)?;
    let outer = db.transaction();
    outer.set_nowait(k("outer"), 1)?;
    let r = catch_unwind(AssertUnwindSafe(|| {
        let tx = outer.transaction();
        tx.set_nowait(k("keep"), 666).ok();
        tx.set_nowait(k("new"), 666).ok();
        panic!("boom");
    }));
    ensure!(r.is_err());
    ensure!(outer.get(&k("new")).is_none() && outer.get(&k("keep")) == Some(1));
    let r = catch_unwind(AssertUnwindSafe(|| {
        let tx = db.transaction();
        tx.set_nowait(k("keep"), 777).ok();
        panic!("boom");
    }));
    ensure!(r.is_err());
    ensure!(db.get(&k("keep")) == Some(1) && db.len() == 1);
    outer.commit()?;
    db.set(k("after"), 2)?;
    db.close()?;
    let db = Db::open(&p)?;
    ensure!(db.get(&k("keep")) == Some(1) && db.get(&k("after")) == Some(2));
    ensure!(db.get(&k("new")).is_none() && db.len() == 3);
    db.close()?;
    Ok(())
}

#[test]
fn dropping_a_guard_submits_and_commit_makes_it_durable() -> Result<()> {
    let dir = TempDir::new("drop")?;
    let p = dir.join("t.db");
    let db = Db::open(&p)?;
    {
        let tx = db.transaction();
        tx.set_nowait(k("a"), 1)?;
        tx.set_nowait(k("b"), 2)?;
    }
    ensure!(
        db.get(&k("a")) == Some(1) && db.get(&k("b")) == Some(2),
        "visible at once"
    );
    db.commit()?;
    let image = dir.join("image.db");
    common::crash_image(&p, &image)?;
    let img = Db::open(&image)?;
    ensure!(img.get(&k("b")) == Some(2), "durable after commit");
    img.close()?;

    let tx = db.transaction();
    tx.set_nowait(k("c"), 3)?;
    tx.commit()?;
    db.close()?;
    let db = Db::open(&p)?;
    ensure!(db.get(&k("c")) == Some(3) && db.len() == 3);
    db.close()?;
    Ok(())
}

#[test]
fn committing_a_nested_guard_commits_its_ancestors_too() -> Result<()> {
    let dir = TempDir::new("nestcommit")?;
    let db = Db::open(dir.join("t.db"))?;
    let outer = db.transaction();
    outer.set_nowait(k("outer"), 1)?;
    let inner = outer.transaction();
    inner.set_nowait(k("inner"), 2)?;
    inner.commit()?;
    ensure!(db.get(&k("outer")) == Some(1) && db.get(&k("inner")) == Some(2));
    outer.rollback(); // nothing left to roll back
    ensure!(db.len() == 2);
    db.close()?;
    Ok(())
}

#[test]
fn submit_transaction_request_waits_for_durability() -> Result<()> {
    let dir = TempDir::new("request")?;
    let db = Db::open(dir.join("t.db"))?;
    let mut d = Delta::new();
    for i in 0..5000 {
        d.set(format!("k{i}"), i)?;
    }
    let before = db.stats();
    let handle = db.submit_transaction_request(d)?;
    ensure!(db.len() == 5000, "visible before wait");
    handle.wait()?;
    let after = db.stats();
    ensure!(after.requests == before.requests + 1, "one unit: {after:?}");
    ensure!(after.records_written == before.records_written + 5000);

    // Through a view: the view's own delta goes with the request.
    let view = TransactionView::new(&db);
    view.set_nowait(k("view"), 1)?;
    let mut d = Delta::new();
    d.set(k("request"), 2)?;
    view.submit_transaction_request(d)?.wait()?;
    ensure!(db.get(&k("view")) == Some(1) && db.get(&k("request")) == Some(2));
    db.close()?;
    Ok(())
}

#[test]
fn a_refused_value_leaves_the_rest_of_the_transaction_intact() -> Result<()> {
    let dir = TempDir::new("refused")?;
    let db = TestDb::<String, f64>::open(dir.join("t.db"))?;
    let tx = db.transaction();
    tx.set_nowait(k("a"), 1.5)?;
    match tx.set_nowait(k("b"), f64::NAN) {
        Err(Error::Serialize { what: "value", .. }) => {}
        other => bail!("expected a refusal, got {other:?}"),
    }
    ensure!(
        tx.get(&k("b")).is_none(),
        "the refused change is not in the view"
    );
    tx.set_nowait(k("c"), 2.5)?;
    tx.commit()?;
    ensure!(db.get(&k("a")) == Some(1.5) && db.get(&k("c")) == Some(2.5) && db.len() == 2);
    db.close()?;
    Ok(())
}

/// A tiny deterministic generator, so the test needs no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn account(i: u64) -> String {
    format!("acct{i}")
}

#[test]
fn bank_transfers_through_transact_never_lose_money() -> Result<()> {
    let dir = TempDir::new("bank")?;
    let p = dir.join("bank.db");
    let db = Db::open(&p)?;
    let mut d = Delta::new();
    for i in 0..10 {
        d.set(account(i), 1000)?;
    }
    db.commit_transaction(d)?;
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let db = &db;
                s.spawn(move || -> Result<()> {
                    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t + 1));
                    for _ in 0..1000 {
                        let from = account(rng.below(10));
                        let to = account(rng.below(10));
                        let amount = i64::try_from(rng.below(50))?;
                        db.transact(|tx| -> Result<()> {
                            let a = tx.get(&from).unwrap_or(0);
                            tx.set_nowait(from.clone(), a - amount)?;
                            let b = tx.get(&to).unwrap_or(0);
                            tx.set_nowait(to.clone(), b + amount)?;
                            Ok(())
                        })?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
        }
        Ok(())
    })?;
    let total: i64 = (0..10).filter_map(|i| db.get(&account(i))).sum();
    ensure!(total == 10_000, "in memory: {total}");
    db.close()?;
    let db = Db::open(&p)?;
    let total: i64 = (0..10).filter_map(|i| db.get(&account(i))).sum();
    ensure!(total == 10_000, "after reopen: {total}");
    db.close()?;
    Ok(())
}

#[test]
fn transact_retries_on_conflict_then_gives_up() -> Result<()> {
    let dir = TempDir::new("conflict")?;
    let db = Options::new()
        .transact_attempts(3)
        .open_as::<String, i64, common::Kind>(dir.join("t.db"))?;
    db.set(k("x"), 0)?;
    let mut runs = 0;
    // Another writer changes `x` after every read of it: every attempt conflicts.
    let r = db.transact(|tx| -> Result<(), Error> {
        runs += 1;
        let x = tx.get(&k("x")).unwrap_or(0);
        db.set(k("x"), x + 100)?;
        tx.set_nowait(k("x"), x + 1)
    });
    ensure!(matches!(r, Err(Error::Conflict { attempts: 3 })), "{r:?}");
    ensure!(runs == 3);
    ensure!(db.get(&k("x")) == Some(300), "no attempt was applied");

    // A conflict on the first run only: the second run succeeds.
    let mut runs = 0;
    let got = db.transact(|tx| -> Result<i64, Error> {
        runs += 1;
        let x = tx.get(&k("x")).unwrap_or(0);
        if runs == 1 {
            db.set(k("x"), x + 1)?;
        }
        tx.set_nowait(k("x"), x * 2)?;
        Ok(x)
    })?;
    ensure!(runs == 2 && got == 301 && db.get(&k("x")) == Some(602));

    // An error from the closure submits nothing and comes back as is.
    let r: Result<(), anyhow::Error> = db.transact(|tx| {
        tx.set_nowait(k("x"), -1)?;
        bail!("changed my mind")
    });
    ensure!(r.is_err_and(|e| e.to_string() == "changed my mind"));
    ensure!(db.get(&k("x")) == Some(602));
    db.close()?;
    Ok(())
}

#[test]
fn views_nest_over_any_virtual_connection() -> Result<()> {
    fn bump(conn: &dyn VirtualConnection<String, i64>) -> Result<()> {
        let view = TransactionView::new(conn);
        let n = view.get(&k("n")).unwrap_or(0);
        view.set_nowait(k("n"), n + 1)?;
        view.submit()?;
        Ok(())
    }
    let dir = TempDir::new("dyn")?;
    let db = Db::open(dir.join("t.db"))?;
    bump(&db)?;
    let tx = db.transaction();
    bump(&*tx)?;
    bump(&*tx)?;
    ensure!(tx.get(&k("n")) == Some(3) && db.get(&k("n")) == Some(1));
    tx.commit()?;
    ensure!(db.get(&k("n")) == Some(3));
    db.close()?;
    Ok(())
}

/// Inside `transact`, the root view's `commit` and `submit` did nothing and said `Ok`
/// (the change was committed later, with the closure's result, or never if the closure
/// then failed); they are refused now, and a nested guard still submits into the root.
#[test]
fn inside_transact_commit_and_submit_are_refused_not_ignored() -> Result<()> {
    let dir = TempDir::new("transact-root")?;
    let db = Db::open(dir.join("t.db"))?;
    let refused = db.transact(|tx| -> ptvp35::Result<Vec<bool>> {
        tx.set_nowait(k("a"), 1)?;
        Ok(vec![
            matches!(tx.commit(), Err(Error::Unsupported { .. })),
            matches!(tx.submit(), Err(Error::Unsupported { .. })),
            tx.submit_transaction_request(Delta::new()).is_err(),
            tx.commit_transaction(Delta::new()).is_err(),
        ])
    })?;
    ensure!(refused == [true; 4], "{refused:?}");
    ensure!(
        db.get("a") == Some(1),
        "transact commits the root's changes itself"
    );
    db.transact(|tx| -> ptvp35::Result<()> {
        let inner = tx.transaction();
        inner.set_nowait(k("b"), 2)?;
        drop(inner);
        assert_eq!(
            tx.get("b"),
            Some(2),
            "the guard submitted into the root view"
        );
        Ok(())
    })?;
    ensure!(db.get("b") == Some(2));
    db.close()?;
    Ok(())
}

//! A progress bar on stderr, drawn only on a terminal (or when `PTVP35_PROGRESS=always`),
//! so that piped and scripted runs stay quiet.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Files smaller than this are compacted too fast for a bar to be worth drawing.
const LARGE: u64 = 8 << 20;

/// Whether to draw bars for work on `bytes` bytes.
pub(crate) fn wanted(bytes: u64) -> bool {
    match std::env::var("PTVP35_PROGRESS").as_deref() {
        Ok("always") => true,
        Ok("never") => false,
        _ => bytes >= LARGE && std::io::stderr().is_terminal(),
    }
}

/// A bar redrawn ten times a second from `probe` (bytes done so far, `None` once the
/// work is past the point the probe can see) until [`Bar::finish`].
#[derive(Debug)]
pub(crate) struct Bar {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Bar {
    pub(crate) fn start(
        label: String,
        total: u64,
        probe: impl Fn() -> Option<u64> + Send + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("ptvp35-progress".into())
            .spawn(move || {
                let started = Instant::now();
                while !flag.load(Ordering::Relaxed) {
                    draw(
                        &label,
                        probe().map_or(total, |n| n.min(total)),
                        total,
                        started,
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
                draw(&label, total, total, started);
                eprintln!();
            })
            .ok();
        Bar { stop, thread }
    }

    pub(crate) fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn draw(label: &str, done: u64, total: u64, started: Instant) {
    const WIDTH: u64 = 30;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    let pct = (done * 100).checked_div(total).unwrap_or(100);
    let bar: String = (0..WIDTH)
        .map(|i| if i < filled { '#' } else { '-' })
        .collect();
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r{label} [{bar}] {pct:>3}% {} / {} {:>5.1}s",
        mib(done),
        mib(total),
        started.elapsed().as_secs_f64()
    );
    let _ = err.flush();
}

/// `bytes` in MiB, one decimal.
pub(crate) fn mib(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)] // a display with one decimal
    let m = bytes as f64 / f64::from(1u32 << 20);
    format!("{m:.1} MiB")
}

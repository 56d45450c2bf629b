//! What a long first build shows while it runs. Cargo keeps a build script's output until the
//! script ends (and never shows it for a registry dependency), so a cold kernel build, 9 to 25
//! minutes of nvcc, would look hung. Each unit nvcc compiles is written as it starts and ends
//! to `<cache>/build-progress.log` and, where the build runs in a terminal, to that terminal
//! (`FLASHINFER_RS_BUILD_PROGRESS=0` keeps the terminal quiet). Units found in the object cache
//! are counted, not listed: a warm build stays silent.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

pub struct Progress {
    sinks: Vec<Mutex<File>>,
    log: PathBuf,
    total: usize,
    done: AtomicUsize,
    started: Instant,
}

impl Progress {
    /// Progress of `total` units; the log is truncated (it describes the latest build).
    pub fn open(cache_root: &Path, total: usize) -> Progress {
        let log = cache_root.join("build-progress.log");
        let mut sinks = Vec::new();
        if let Ok(f) = File::create(&log) {
            sinks.push(Mutex::new(f));
        }
        let quiet = std::env::var("FLASHINFER_RS_BUILD_PROGRESS").is_ok_and(|v| v == "0");
        if !quiet {
            // No terminal (CI, an IDE): the open fails and only the log is written.
            if let Ok(tty) = OpenOptions::new().write(true).open("/dev/tty") {
                sinks.push(Mutex::new(tty));
            }
        }
        Progress {
            sinks,
            log,
            total,
            done: AtomicUsize::new(0),
            started: Instant::now(),
        }
    }

    fn say(&self, line: &str) {
        let secs = self.started.elapsed().as_secs();
        let line = format!(
            "flashinfer-sys [{:>2}m{:02}s, {}/{} units]: {line}\n",
            secs / 60,
            secs % 60,
            self.done.load(Ordering::Relaxed),
            self.total
        );
        for sink in &self.sinks {
            if let Ok(mut f) = sink.lock() {
                let _ = f.write_all(line.as_bytes());
            }
        }
    }

    /// The first compile of a build: says how long a cold build takes and where the log is.
    pub fn cold(&self, to_compile: &str) {
        self.say(&format!(
            "compiling the kernels with nvcc ({to_compile}); a cold build takes 9-25 minutes \
             (objects are cached for the next one); progress: {}",
            self.log.display()
        ));
    }

    pub fn begin(&self, unit: &str) {
        self.say(&format!("compiling {unit}"));
    }

    pub fn end(&self, unit: &str, compiled_secs: Option<f64>) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if let Some(secs) = compiled_secs {
            self.say(&format!("{unit} done in {secs:.0}s"));
        }
    }
}

//! Crash points for tests: with `EXPORTER_CRASH_AT=<name>` the process aborts, exactly as a
//! `kill -9` would, the first time it passes the point of that name. Unset, they cost one load.

use std::sync::OnceLock;

pub fn crash_point(name: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    if AT.get_or_init(|| std::env::var("EXPORTER_CRASH_AT").ok().filter(|v| !v.is_empty())).as_deref() == Some(name) {
        eprintln!("EXPORTER_CRASH_AT={name}: aborting");
        std::process::abort();
    }
}

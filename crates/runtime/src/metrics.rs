//! Prometheus metrics of a process. Each role registers its own metrics in one
//! [`prometheus_client`] registry; process metrics (resident memory, open files, start time) are
//! read from `/proc` at scrape time, so an idle process does no metrics work at all.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

/// The metrics registry of one process.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    started_unix: f64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let started_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        Metrics {
            registry: Mutex::new(Registry::with_prefix("autogate")),
            started_unix,
        }
    }

    /// Register metrics (called at start-up by each component).
    pub fn register(&self, f: impl FnOnce(&mut Registry)) {
        let mut guard = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        {
            let guard = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            // Encoding into a String cannot fail except on fmt errors of our own types.
            let _ = encode(&mut out, &guard);
        }
        // `encode` ends with "# EOF" (OpenMetrics); keep that last.
        let body = out
            .trim_end()
            .strip_suffix("# EOF")
            .unwrap_or(&out)
            .to_owned();
        let stats = ProcessStats::read();
        let mut text = body;
        text.push_str("# HELP process_resident_memory_bytes Resident memory size in bytes.\n");
        text.push_str("# TYPE process_resident_memory_bytes gauge\n");
        text.push_str(&format!(
            "process_resident_memory_bytes {}\n",
            stats.rss_bytes
        ));
        text.push_str("# HELP process_open_fds Number of open file descriptors.\n");
        text.push_str("# TYPE process_open_fds gauge\n");
        text.push_str(&format!("process_open_fds {}\n", stats.open_fds));
        text.push_str("# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n");
        text.push_str("# TYPE process_start_time_seconds gauge\n");
        text.push_str(&format!(
            "process_start_time_seconds {}\n",
            self.started_unix
        ));
        text.push_str("# EOF\n");
        text
    }
}

/// A snapshot of this process's resource use from `/proc/self`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessStats {
    pub rss_bytes: u64,
    pub open_fds: u64,
}

impl ProcessStats {
    pub fn read() -> Self {
        // statm's second field is resident pages; 4 KiB pages on every platform we ship for.
        let rss_pages = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| {
                s.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .unwrap_or(0);
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        ProcessStats {
            rss_bytes: rss_pages * 4096,
            open_fds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn renders_registered_and_process_metrics() {
        let m = Metrics::new();
        let c: Counter = Counter::default();
        c.inc_by(3);
        m.register(|r| r.register("widgets", "Widgets made", c.clone()));
        let text = m.render();
        assert!(text.contains("autogate_widgets_total 3"), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1);
    }
}

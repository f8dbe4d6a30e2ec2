//! The standard process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`, `process_start_time_seconds`), read from `/proc/self` at each scrape.
//! Linux only: elsewhere nothing is written. Parsing is kept apart from reading, so the format
//! is tested on fixed text.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

#[derive(Debug)]
pub(super) struct ProcessCollector;

/// What `/proc/self/stat` says, in clock ticks since boot or since start.
#[derive(Debug, PartialEq)]
struct Stat {
    /// User plus system CPU time.
    cpu_ticks: u64,
    /// When the process started, in ticks after boot.
    start_ticks: u64,
}

/// Fields 14 and 15 (utime, stime) and 22 (starttime) of `/proc/<pid>/stat`. The command name
/// (field 2) is in parentheses and may hold spaces or parentheses: fields are counted after its
/// last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
    })
}

/// Resident pages: the second field of `/proc/self/statm`.
fn parse_statm_resident(text: &str) -> Option<u64> {
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Boot time in Unix seconds: the `btime` line of `/proc/stat`.
fn parse_btime(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if !cfg!(target_os = "linux") {
            return Ok(());
        }
        // SAFETY: sysconf only reads configuration values.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let stat = read("/proc/self/stat").and_then(|t| parse_stat(&t));
        if let Some(stat) = &stat
            && ticks > 0
        {
            let cpu = ConstCounter::new(stat.cpu_ticks as f64 / ticks as f64);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                cpu.metric_type(),
            )?)?;
        }
        if let Some(pages) = read("/proc/self/statm").and_then(|t| parse_statm_resident(&t))
            && page > 0
        {
            let rss = ConstGauge::new((pages * page as u64) as i64);
            rss.encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                None,
                rss.metric_type(),
            )?)?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let open = ConstGauge::new(fds.count() as i64);
            open.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                open.metric_type(),
            )?)?;
        }
        if let (Some(stat), Some(boot)) = (&stat, read("/proc/stat").and_then(|t| parse_btime(&t)))
            && ticks > 0
        {
            let start = ConstGauge::new(boot as f64 + stat.start_ticks as f64 / ticks as f64);
            start.encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                None,
                start.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_formats() {
        let stat = "1234 (con cord) (x) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 \
                    30 0 98765 1000000 500 18446744073709551615";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                cpu_ticks: 300,
                start_ticks: 98765
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(
            parse_statm_resident("5000 1200 300 1 0 900 0\n"),
            Some(1200)
        );
        assert_eq!(
            parse_btime("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
    }
}

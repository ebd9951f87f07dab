//! The process's own metrics, by the Prometheus names every dashboard knows: `process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`,
//! `process_max_fds`, `process_threads` and `process_start_time_seconds`. Read from `/proc` at each
//! scrape (Linux); elsewhere there are none.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// Clock ticks per second in `/proc`'s times: the kernel's `USER_HZ`, 100 on every Linux ABI.
const TICKS_PER_SECOND: f64 = 100.0;

/// The collector Marty registers in every [`super::Metrics`].
#[derive(Debug)]
pub struct ProcessMetrics;

/// One reading of `/proc/self`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessSample {
    /// User and system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory, in bytes.
    pub resident_bytes: i64,
    /// Virtual memory, in bytes.
    pub virtual_bytes: i64,
    /// Open file descriptors.
    pub open_fds: i64,
    /// The soft limit on open file descriptors.
    pub max_fds: i64,
    /// Threads.
    pub threads: i64,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl ProcessSample {
    /// The process as `/proc/self` shows it now; `None` where there is no `/proc`.
    pub fn read() -> Option<ProcessSample> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name (field 2) may hold spaces and parentheses: the fields after it follow
        // the last `)`, starting with field 3.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        let field = |number: usize| fields.get(number - 3).and_then(|value| value.parse::<f64>().ok());
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let status_value = |name: &str| {
            status.lines().find_map(|line| line.strip_prefix(name)?.split_whitespace().next()?.parse::<i64>().ok())
        };
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| stat.lines().find_map(|line| line.strip_prefix("btime ")?.trim().parse::<f64>().ok()));
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let max_fds = limits
            .lines()
            .find(|line| line.starts_with("Max open files"))
            .and_then(|line| line.split_whitespace().nth(3)?.parse().ok())
            .unwrap_or(-1);
        Some(ProcessSample {
            cpu_seconds: (field(14)? + field(15)?) / TICKS_PER_SECOND,
            resident_bytes: status_value("VmRSS:")? * 1024,
            virtual_bytes: status_value("VmSize:")? * 1024,
            open_fds: std::fs::read_dir("/proc/self/fd").map_or(-1, |entries| entries.count() as i64),
            max_fds,
            threads: status_value("Threads:")?,
            start_time_seconds: boot_time.unwrap_or(0.0) + field(22)? / TICKS_PER_SECOND,
        })
    }
}

impl Collector for ProcessMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let Some(sample) = ProcessSample::read() else { return Ok(()) };
        let help = "Total user and system CPU time spent in seconds";
        let cpu = encoder.encode_descriptor("process_cpu_seconds", help, None, MetricType::Counter)?;
        ConstCounter::new(sample.cpu_seconds).encode(cpu)?;
        let gauges: [(&str, &str, i64); 5] = [
            ("process_resident_memory_bytes", "Resident memory size in bytes", sample.resident_bytes),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes", sample.virtual_bytes),
            ("process_open_fds", "Number of open file descriptors", sample.open_fds),
            ("process_max_fds", "Maximum number of open file descriptors", sample.max_fds),
            ("process_threads", "Number of OS threads in the process", sample.threads),
        ];
        for (name, help, value) in gauges {
            ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
        }
        let help = "Start time of the process since unix epoch in seconds";
        let start = encoder.encode_descriptor("process_start_time_seconds", help, None, MetricType::Gauge)?;
        ConstGauge::new(sample.start_time_seconds).encode(start)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::ProcessSample;

    #[test]
    fn a_sample_reads_this_process() {
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let sample = ProcessSample::read().unwrap();
        assert!(sample.resident_bytes > 1 << 20 && sample.virtual_bytes >= sample.resident_bytes, "{sample:?}");
        assert!(sample.open_fds >= 4 && sample.max_fds >= sample.open_fds, "{sample:?}");
        assert!(sample.threads >= 1 && sample.cpu_seconds >= 0.0, "{sample:?}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!((now - 3600.0..=now + 1.0).contains(&sample.start_time_seconds), "{sample:?}");
        drop(file);
    }
}

//! The standard `process_*` metrics, as Prometheus client libraries write
//! them: CPU time, memory, file descriptors and start time of the running
//! process. They are read when rendered; a value the platform cannot give
//! is left out.

use crate::{Encoder, Type};
use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage};
use nix::unistd::{SysconfVar, sysconf};

/// Writes the process families into `e`.
pub fn write(e: &mut Encoder) {
    if let Ok(u) = getrusage(UsageWho::RUSAGE_SELF) {
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        e.family(
            "process_cpu_seconds_total",
            Type::Counter,
            "Total user and system CPU time spent in seconds.",
        )
        .sample(&[], secs(u.user_time()) + secs(u.system_time()));
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |field: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))?
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    };
    if let Some(rss) = kib("VmRSS:") {
        e.family(
            "process_resident_memory_bytes",
            Type::Gauge,
            "Resident memory size in bytes.",
        )
        .sample(&[], rss);
    }
    if let Some(vsz) = kib("VmSize:") {
        e.family(
            "process_virtual_memory_bytes",
            Type::Gauge,
            "Virtual memory size in bytes.",
        )
        .sample(&[], vsz);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        e.family(
            "process_open_fds",
            Type::Gauge,
            "Number of open file descriptors.",
        )
        .sample(&[], fds.count() as u64);
    }
    if let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) {
        e.family(
            "process_max_fds",
            Type::Gauge,
            "Maximum number of open file descriptors.",
        )
        .sample(&[], soft);
    }
    if let Some(start) = start_time() {
        e.family(
            "process_start_time_seconds",
            Type::Gauge,
            "Start time of the process since unix epoch in seconds.",
        )
        .sample(&[], start);
    }
}

/// The process's start, in Unix seconds: the boot time plus the start
/// tick of `/proc/self/stat`.
fn start_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after `(comm)`, which may hold spaces; `starttime` is field
    // 22, the 20th after the comm.
    let ticks: f64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let boot: f64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let hz = sysconf(SysconfVar::CLK_TCK).ok()??;
    Some(boot + ticks / hz as f64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_process_families_parse_and_hold_plausible_values() {
        let mut e = Encoder::new();
        write(&mut e);
        let text = e.finish();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
        let value = |name: &str| -> f64 {
            let s = scrape
                .samples
                .iter()
                .find(|s| s.metric == name)
                .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
            match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => panic!("{name} is not a number"),
            }
        };
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = value("process_start_time_seconds");
        assert!(
            start <= now + 1.0 && start > now - 3600.0,
            "{start} vs {now}"
        );
    }
}

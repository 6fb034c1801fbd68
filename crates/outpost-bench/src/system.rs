//! What the harness reads from the operating system: a process's resident memory and open descriptors, the
//! open-files limit, and a description of the machine for the report.

use std::fmt;
use std::path::Path;
use std::process::Command;

use anyhow::Context as _;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Reads `VmRSS` (in KiB) from the text of `/proc/<pid>/status`.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix("VmRSS:")?.trim();
        let number = value.strip_suffix("kB").unwrap_or(value).trim();
        number.parse().ok()
    })
}

/// Reads a `Name:   N kB` field (`RssAnon`, `RssFile`...) from the text of `/proc/<pid>/status`.
pub fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?.trim();
        value
            .strip_suffix("kB")
            .unwrap_or(value)
            .trim()
            .parse()
            .ok()
    })
}

/// The resident memory of a process split as `/proc/<pid>/status` does: (anonymous, file-backed), in KiB.
pub fn rss_split_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    Ok((
        parse_status_kib(&status, "RssAnon").unwrap_or(0),
        parse_status_kib(&status, "RssFile").unwrap_or(0),
    ))
}

/// The resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_vm_rss_kib(&status).with_context(|| format!("{path} has no VmRSS line"))
}

/// How many file descriptors a process has open (its sockets included).
pub fn open_fds(pid: u32) -> anyhow::Result<usize> {
    let path = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&path)
        .with_context(|| format!("cannot list {path}"))?
        .count())
}

/// Time a process's threads spent on a CPU and waiting in a run queue for one, from
/// `/proc/<pid>/task/*/schedstat` (threads that already exited are not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Nanoseconds on a CPU.
    pub running_ns: u64,
    /// Nanoseconds runnable but waiting for a CPU (other processes, or too many threads).
    pub waiting_ns: u64,
}

impl CpuTimes {
    /// What was spent between `earlier` and `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            running_ns: self.running_ns.saturating_sub(earlier.running_ns),
            waiting_ns: self.waiting_ns.saturating_sub(earlier.waiting_ns),
        }
    }
}

/// Reads one `schedstat` line: nanoseconds running, nanoseconds waiting, time slices.
pub fn parse_schedstat(line: &str) -> Option<CpuTimes> {
    let mut fields = line.split_whitespace().map(str::parse::<u64>);
    Some(CpuTimes {
        running_ns: fields.next()?.ok()?,
        waiting_ns: fields.next()?.ok()?,
    })
}

/// The CPU times of all live threads of a process.
pub fn cpu_times(pid: u32) -> anyhow::Result<CpuTimes> {
    let path = format!("/proc/{pid}/task");
    let mut total = CpuTimes::default();
    for task in std::fs::read_dir(&path).with_context(|| format!("cannot list {path}"))? {
        // A thread may exit between listing and reading: skip it.
        let Ok(text) = std::fs::read_to_string(task?.path().join("schedstat")) else {
            continue;
        };
        if let Some(times) = parse_schedstat(&text) {
            total.running_ns += times.running_ns;
            total.waiting_ns += times.waiting_ns;
        }
    }
    Ok(total)
}

/// The open-files limit (`RLIMIT_NOFILE`) before and after [`raise_open_files_limit`].
#[derive(Debug, Clone, Copy)]
pub struct OpenFilesLimit {
    /// The soft limit the harness started with (`None`: unlimited).
    pub before: Option<u64>,
    /// The soft limit now, which the hub inherits.
    pub now: Option<u64>,
    /// The hard limit, as far as the soft one may go without privileges.
    pub hard: Option<u64>,
}

impl fmt::Display for OpenFilesLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |limit: Option<u64>| limit.map_or_else(|| "unlimited".to_owned(), group);
        if self.before == self.now {
            write!(f, "{} (hard limit {})", show(self.now), show(self.hard))
        } else {
            write!(
                f,
                "raised from {} to {} (the hard limit)",
                show(self.before),
                show(self.now)
            )
        }
    }
}

/// Raises the soft open-files limit to the hard one, so that the harness and the hub it starts can hold as
/// many sockets as the system allows this user.
pub fn raise_open_files_limit() -> OpenFilesLimit {
    let current = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: current.maximum,
        maximum: current.maximum,
    };
    let now = if setrlimit(Resource::Nofile, raised).is_ok() {
        current.maximum
    } else {
        current.current
    };
    OpenFilesLimit {
        before: current.current,
        now,
        hard: current.maximum,
    }
}

/// The machine the figures were measured on.
#[derive(Debug, Clone)]
pub struct Machine {
    /// CPU model, from `/proc/cpuinfo`.
    pub cpu: String,
    /// CPUs this process may run on.
    pub cpus: usize,
    /// Total memory in MiB.
    pub memory_mib: u64,
    /// Kernel release.
    pub kernel: String,
    /// `rustc --version`.
    pub rustc: String,
}

impl Machine {
    /// Describes this machine; what cannot be read shows as "unknown".
    pub fn describe() -> Self {
        let read = |path: &str| std::fs::read_to_string(Path::new(path)).unwrap_or_default();
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map_or_else(|| "unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
        let memory_mib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
        let rustc = Command::new("rustc")
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map_or_else(
                || "unknown".to_owned(),
                |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
            );
        Self {
            cpu,
            cpus: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            memory_mib,
            kernel,
            rustc,
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} CPUs ({}), {} MiB memory, Linux {}, {}",
            self.cpus,
            self.cpu,
            group(self.memory_mib),
            self.kernel,
            self.rustc
        )
    }
}

/// A count with thousands separators (`10,000`).
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_and_file_backed_memory_are_read_by_name() {
        let status = "VmRSS:\t   16000 kB\nRssAnon:\t    9000 kB\nRssFile:\t    7000 kB\n";
        assert_eq!(parse_status_kib(status, "RssAnon"), Some(9000));
        assert_eq!(parse_status_kib(status, "RssFile"), Some(7000));
        assert_eq!(parse_status_kib(status, "RssShmem"), None);
    }

    const STATUS: &str = "Name:\toutpost\nVmPeak:\t  123456 kB\nVmSize:\t  120000 kB\nVmHWM:\t   40000 kB\nVmRSS:\t   38412 kB\nRssAnon:\t   30000 kB\nThreads:\t3\n";

    #[test]
    fn vm_rss_is_read_in_kib_from_proc_status() {
        assert_eq!(parse_vm_rss_kib(STATUS), Some(38_412));
    }

    #[test]
    fn a_status_without_vm_rss_has_no_figure() {
        // Kernel threads and zombies have no VmRSS line.
        assert_eq!(
            parse_vm_rss_kib("Name:\tkthreadd\nState:\tS (sleeping)\n"),
            None
        );
    }

    #[test]
    fn rss_anon_is_not_mistaken_for_vm_rss() {
        assert_eq!(
            parse_vm_rss_kib("RssAnon:\t 5 kB\nVmRSS:\t 7 kB\n"),
            Some(7)
        );
    }

    #[test]
    fn the_own_process_has_a_resident_set_and_open_descriptors() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        assert!(open_fds(std::process::id()).unwrap() >= 3);
    }

    #[test]
    fn schedstat_gives_running_and_waiting_nanoseconds() {
        assert_eq!(
            parse_schedstat("2016720000 2058920000 4711\n"),
            Some(CpuTimes {
                running_ns: 2_016_720_000,
                waiting_ns: 2_058_920_000
            })
        );
        assert_eq!(parse_schedstat("garbage"), None);
    }

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1_000), "1,000");
        assert_eq!(group(10_000), "10,000");
        assert_eq!(group(1_234_567), "1,234,567");
    }
}

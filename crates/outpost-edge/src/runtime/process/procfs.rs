//! What the process runtime learns from `/proc` and does with signals: a process's descendants (the workload API
//! authorises callers by them), whether a pid is alive and still runs a given executable (to recognise orphans of
//! a previous daemon), and terminating process groups.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, kill_process_group, Pid, Signal};

/// The fields of `/proc/{pid}/stat` the runtime needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    ppid: u32,
    state: char,
}

/// Parses `/proc/{pid}/stat`: "pid (comm) state ppid ...". The command name may hold spaces and parentheses, so
/// the fields are read after the last ')'.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(Stat { ppid, state })
}

fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Whether `pid` exists and is not a zombie (a zombie has exited; only its parent has not collected it yet).
pub(super) fn is_alive(pid: u32) -> bool {
    stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
}

/// `root` (if alive) and every live process descending from it.
pub(super) fn with_descendants(root: u32) -> Vec<u32> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(s) = stat(pid) {
            if s.state != 'Z' && s.state != 'X' {
                children.entry(s.ppid).or_default().push(pid);
            }
        }
    }
    let mut found = BTreeSet::new();
    if is_alive(root) {
        found.insert(root);
    }
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        for &child in children.get(&pid).map_or(&[][..], Vec::as_slice) {
            if found.insert(child) {
                queue.push(child);
            }
        }
    }
    found.into_iter().collect()
}

/// Whether `pid` runs `executable`: its `/proc/{pid}/exe` is that file, or (for scripts, whose `exe` is the
/// interpreter) the executable's path is the first or second word of its command line.
pub(super) fn runs(pid: u32, executable: &Path) -> bool {
    if let (Ok(exe), Ok(wanted)) = (
        fs::read_link(format!("/proc/{pid}/exe")),
        executable.canonicalize(),
    ) {
        if exe == wanted {
            return true;
        }
    }
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let wanted = executable.as_os_str().as_encoded_bytes();
    cmdline.split(|&b| b == 0).take(2).any(|arg| arg == wanted)
}

/// Sends `signal` to the process group led by `pid` (children are started as group leaders, so this reaches what
/// they spawned too), or to `pid` alone when it leads no group.
pub(super) fn signal_group(pid: u32, signal: Signal) {
    let Some(target) = Pid::from_raw(pid as i32) else {
        return;
    };
    if kill_process_group(target, signal).is_err() {
        // ESRCH here is the normal case of a group that is already gone.
        let _ = kill_process(target, signal);
    }
}

/// Terminates processes that are not our children (orphans of a previous daemon): SIGTERM to each group, then
/// SIGKILL to those still alive after `grace`. Blocks the calling thread for at most `grace` plus a moment.
pub(super) fn terminate(pids: &[u32], grace: Duration) {
    for &pid in pids {
        signal_group(pid, Signal::TERM);
    }
    let deadline = Instant::now() + grace;
    while pids.iter().any(|&p| is_alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &pid in pids {
        // Also reaches group members that outlived their leader.
        signal_group(pid, Signal::KILL);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while pids.iter().any(|&p| is_alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_is_read_after_a_command_name_with_spaces_and_parentheses() {
        let s = parse_stat("4242 (my (odd) name) S 17 4242 4242 0 -1").unwrap();
        assert_eq!(
            s,
            Stat {
                ppid: 17,
                state: 'S'
            }
        );
    }

    #[test]
    fn a_garbled_stat_line_is_ignored() {
        assert_eq!(parse_stat("4242 no parenthesis"), None);
        assert_eq!(parse_stat("4242 (x)"), None);
    }

    #[test]
    fn the_current_process_is_alive_and_among_its_own_descendants() {
        let me = std::process::id();
        assert!(is_alive(me));
        assert!(with_descendants(me).contains(&me));
    }

    #[test]
    fn the_current_process_runs_its_own_executable() {
        let exe = std::env::current_exe().unwrap();
        assert!(runs(std::process::id(), &exe));
        assert!(!runs(
            std::process::id(),
            Path::new("/bin/definitely-not-this")
        ));
    }
}

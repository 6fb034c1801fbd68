//! The process runtime with real child processes: `/bin/sh` scripts written to a temporary directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use outpost_edge::runtime::process::ProcessRuntime;
use outpost_edge::runtime::{InstanceSpec, InstanceState, InstanceStatus, ModuleRuntime};
use tokio::sync::mpsc;

/// Writes an executable `/bin/sh` script.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn spec(name: &str, executable: &Path, args: &[&str], env: &[(&str, &str)]) -> InstanceSpec {
    InstanceSpec {
        name: name.into(),
        image: String::new(),
        executable: Some(executable.to_owned()),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        create_options: None,
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        workload_socket: PathBuf::from("/nonexistent/workload.sock"),
        gateway_hostname: "edge.local".into(),
        digest: format!("digest-of-{name}"),
    }
}

/// Starts `name`, retrying while the kernel says the script is busy: another test thread may be forking while
/// this one still held its script open for writing (ETXTBSY is about any process holding a write handle).
async fn start(rt: &ProcessRuntime, name: &str) {
    for _ in 0..50 {
        match rt.start(name).await {
            Ok(()) => return,
            Err(e) if e.reason.contains("busy") => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("{name} stayed busy");
}

async fn create_and_start(rt: &ProcessRuntime, spec: &InstanceSpec) {
    rt.create(spec).await.unwrap();
    start(rt, &spec.name).await;
}

async fn state(rt: &ProcessRuntime, name: &str) -> InstanceState {
    rt.list()
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.name == name)
        .unwrap_or_else(|| panic!("{name} is not listed"))
}

/// Waits until `name` is no longer running, and returns its state.
async fn exited(rt: &ProcessRuntime, name: &str) -> InstanceState {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = state(rt, name).await;
        if s.status != InstanceStatus::Running {
            return s;
        }
        assert!(Instant::now() < deadline, "{name} is still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the logs of `name` contain `line`.
async fn logged(rt: &ProcessRuntime, name: &str, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rt.logs(name, None).await.unwrap().iter().any(|l| l == line) {
        assert!(Instant::now() < deadline, "{name} never logged {line:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `pid` is a live process (a zombie has exited).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !matches!(
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .chars()
                .next(),
            Some('Z' | 'X')
        )
    })
}

fn read_pid(path: &Path) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn the_environment_is_exactly_the_spec_env() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(tmp.path().join("state")).unwrap();
    let env_tool = Path::new("/usr/bin/env");
    let with_path = spec(
        "with-path",
        env_tool,
        &[],
        &[("A", "1"), ("B", "two words"), ("PATH", "/opt/x")],
    );
    create_and_start(&rt, &with_path).await;
    let without_path = spec(
        "without-path",
        env_tool,
        &[],
        &[("IOTEDGE_MODULEID", "without-path")],
    );
    create_and_start(&rt, &without_path).await;

    assert_eq!(
        exited(&rt, "with-path").await.status,
        InstanceStatus::Stopped
    );
    let mut lines = rt.logs("with-path", None).await.unwrap();
    lines.sort();
    assert_eq!(lines, ["A=1", "B=two words", "PATH=/opt/x"]);

    exited(&rt, "without-path").await;
    let mut lines = rt.logs("without-path", None).await.unwrap();
    lines.sort();
    let daemon_path = std::env::var("PATH").unwrap();
    assert_eq!(
        lines,
        [
            "IOTEDGE_MODULEID=without-path".to_owned(),
            format!("PATH={daemon_path}")
        ]
    );
}

#[tokio::test]
async fn stdout_and_stderr_are_logged_and_tail_gives_the_last_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(tmp.path().join("state")).unwrap();
    let exe = script(
        tmp.path(),
        "talk.sh",
        "for i in 1 2 3 4 5; do echo out$i; done\nsleep 0.2\necho err >&2\necho \"cwd=$(pwd)\"",
    );
    create_and_start(&rt, &spec("talk", &exe, &[], &[])).await;
    assert_eq!(exited(&rt, "talk").await.exit_code, Some(0));

    let all = rt.logs("talk", None).await.unwrap();
    let cwd = format!("cwd={}", tmp.path().join("state/talk").display());
    assert_eq!(
        all,
        ["out1", "out2", "out3", "out4", "out5", "err", cwd.as_str()]
    );
    assert_eq!(
        rt.logs("talk", Some(2)).await.unwrap(),
        ["err", cwd.as_str()]
    );
    assert_eq!(rt.logs("talk", Some(100)).await.unwrap().len(), 7);
}

#[tokio::test]
async fn output_is_rotated_at_the_cap_keeping_one_old_file() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(tmp.path().join("state"))
        .unwrap()
        .with_log_limit(100);
    let exe = script(
        tmp.path(),
        "chatty.sh",
        "i=0; while [ $i -lt 100 ]; do echo line-$i; i=$((i+1)); done",
    );
    create_and_start(&rt, &spec("chatty", &exe, &[], &[])).await;
    exited(&rt, "chatty").await;
    let dir = tmp.path().join("state/chatty");
    assert!(std::fs::metadata(dir.join("output.log")).unwrap().len() <= 100);
    assert!(std::fs::metadata(dir.join("output.log.1")).unwrap().len() <= 100);
    let lines = rt.logs("chatty", None).await.unwrap();
    assert_eq!(lines.last().map(String::as_str), Some("line-99"));
    assert!(
        lines.len() < 30,
        "old output is dropped: {} lines kept",
        lines.len()
    );
}

#[tokio::test]
async fn exit_codes_map_to_stopped_and_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(tmp.path().join("state")).unwrap();
    for (name, body) in [
        ("ok", "exit 0"),
        ("three", "exit 3"),
        ("killed", "kill -KILL $$"),
    ] {
        let exe = script(tmp.path(), &format!("{name}.sh"), body);
        create_and_start(&rt, &spec(name, &exe, &[], &[])).await;
    }
    let ok = exited(&rt, "ok").await;
    assert_eq!(
        (ok.status, ok.exit_code),
        (InstanceStatus::Stopped, Some(0))
    );
    assert!(ok.started_at.is_some() && ok.exited_at >= ok.started_at);
    assert_eq!(ok.digest, "digest-of-ok");
    assert_eq!(ok.image, tmp.path().join("ok.sh").display().to_string());
    let three = exited(&rt, "three").await;
    assert_eq!(
        (three.status, three.exit_code),
        (InstanceStatus::Failed, Some(3))
    );
    let killed = exited(&rt, "killed").await;
    assert_eq!(
        (killed.status, killed.exit_code),
        (InstanceStatus::Failed, Some(128 + 9))
    );

    // An exited instance starts again.
    start(&rt, "three").await;
    assert_eq!(exited(&rt, "three").await.exit_code, Some(3));
}

#[tokio::test]
async fn stop_waits_the_grace_then_kills_a_process_that_ignores_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(tmp.path().join("state")).unwrap();
    let stubborn = script(
        tmp.path(),
        "stubborn.sh",
        "trap '' TERM\necho ready\nwhile :; do sleep 0.1; done",
    );
    let polite = script(
        tmp.path(),
        "polite.sh",
        "trap 'exit 0' TERM\necho ready\nwhile :; do sleep 0.1; done",
    );
    create_and_start(&rt, &spec("stubborn", &stubborn, &[], &[])).await;
    create_and_start(&rt, &spec("polite", &polite, &[], &[])).await;
    logged(&rt, "stubborn", "ready").await;
    logged(&rt, "polite", "ready").await;
    assert_eq!(state(&rt, "stubborn").await.status, InstanceStatus::Running);

    let begun = Instant::now();
    rt.stop("stubborn", Duration::from_millis(700))
        .await
        .unwrap();
    assert!(
        begun.elapsed() >= Duration::from_millis(700),
        "SIGTERM was ignored, so the grace was waited"
    );
    let s = state(&rt, "stubborn").await;
    assert_eq!(
        (s.status, s.exit_code),
        (InstanceStatus::Failed, Some(128 + 9))
    );

    let begun = Instant::now();
    rt.stop("polite", Duration::from_secs(10)).await.unwrap();
    assert!(begun.elapsed() < Duration::from_secs(5));
    let s = state(&rt, "polite").await;
    assert_eq!((s.status, s.exit_code), (InstanceStatus::Stopped, Some(0)));

    // Stopping what is not running is fine.
    rt.stop("polite", Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn pids_include_descendants_and_stop_ends_them_all() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(tmp.path().join("state")).unwrap();
    let exe = script(
        tmp.path(),
        "family.sh",
        "sh -c 'sleep 300 & echo $! > grandchild.pid; wait' &\nwait",
    );
    create_and_start(&rt, &spec("family", &exe, &[], &[])).await;
    let grandchild = read_pid(&tmp.path().join("state/family/grandchild.pid"));
    let pids = rt.pids("family").await.unwrap();
    let main: u32 = std::fs::read_to_string(tmp.path().join("state/family/pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pids.contains(&main), "{pids:?} lacks the child {main}");
    assert!(
        pids.contains(&grandchild),
        "{pids:?} lacks the grandchild {grandchild}"
    );
    assert!(
        pids.len() >= 3,
        "the child, the intermediate shell and the sleep: {pids:?}"
    );
    assert!(!pids.contains(&std::process::id()));

    rt.stop("family", Duration::from_secs(5)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(grandchild) {
        assert!(Instant::now() < deadline, "the grandchild survived stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(rt.pids("family").await.unwrap().is_empty());
}

#[tokio::test]
async fn follow_logs_streams_new_lines_until_the_instance_is_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = std::sync::Arc::new(ProcessRuntime::new(tmp.path().join("state")).unwrap());
    let exe = script(
        tmp.path(),
        "ticker.sh",
        "i=0; while :; do echo tick-$i; i=$((i+1)); sleep 0.05; done",
    );
    rt.create(&spec("ticker", &exe, &[], &[])).await.unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let follower = tokio::spawn({
        let rt = rt.clone();
        async move { rt.follow_logs("ticker", tx).await }
    });
    start(&rt, "ticker").await;
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, "tick-0");
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap(),
        "tick-1"
    );

    rt.remove("ticker").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), follower)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(rt.list().await.unwrap().is_empty());
    assert!(!tmp.path().join("state/ticker").exists());
    rt.remove("ticker").await.unwrap();
}

#[tokio::test]
async fn a_restarted_daemon_terminates_its_orphan_and_reports_the_instance_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let state_dir = tmp.path().join("state");
    let exe = script(
        tmp.path(),
        "orphan.sh",
        "echo started\nwhile :; do sleep 1; done",
    );
    let spec = spec("orphan", &exe, &["--flag"], &[("K", "V")]);
    let rt = ProcessRuntime::new(state_dir.clone()).unwrap();
    create_and_start(&rt, &spec).await;
    logged(&rt, "orphan", "started").await;
    let pid = read_pid(&state_dir.join("orphan/pid"));
    drop(rt);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        alive(pid),
        "dropping the runtime leaves the child running, as a killed daemon would"
    );

    let rt = ProcessRuntime::new(state_dir.clone()).unwrap();
    assert!(!alive(pid), "the orphan was terminated");
    let s = state(&rt, "orphan").await;
    assert_eq!(s.status, InstanceStatus::Stopped);
    assert_eq!(s.digest, "digest-of-orphan");
    assert!(!state_dir.join("orphan/pid").exists());

    // The agent starts it again, supervised, with the persisted spec.
    start(&rt, "orphan").await;
    assert_eq!(state(&rt, "orphan").await.status, InstanceStatus::Running);
    let pid = read_pid(&state_dir.join("orphan/pid"));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        cmdline.ends_with(b"--flag\0"),
        "{:?}",
        String::from_utf8_lossy(&cmdline)
    );
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(environ.split(|&b| b == 0).any(|v| v == b"K=V"));
    rt.remove("orphan").await.unwrap();
    assert!(!alive(pid));
}

#[tokio::test]
async fn a_restarted_daemon_spares_a_process_that_merely_reused_the_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let state_dir = tmp.path().join("state");
    let exe = script(tmp.path(), "quick.sh", "exit 0");
    let rt = ProcessRuntime::new(state_dir.clone()).unwrap();
    rt.create(&spec("quick", &exe, &[], &[])).await.unwrap();
    drop(rt);
    // A pid file left behind, naming a process that is not the module's executable.
    let mut stranger = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    std::fs::write(state_dir.join("quick/pid"), format!("{}\n", stranger.id())).unwrap();

    let rt = ProcessRuntime::new(state_dir).unwrap();
    assert!(
        alive(stranger.id()),
        "a process that does not run the module's executable is left alone"
    );
    assert_eq!(state(&rt, "quick").await.status, InstanceStatus::Stopped);
    stranger.kill().unwrap();
    stranger.wait().unwrap();
}

#[tokio::test]
async fn a_missing_or_non_executable_file_is_an_error_naming_the_module() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(tmp.path().join("state")).unwrap();
    let missing = spec("ghost", &tmp.path().join("no-such-file"), &[], &[]);
    let e = rt.pull(&missing, &[], false).await.unwrap_err();
    assert_eq!(e.module, "ghost");
    assert!(
        e.to_string()
            .starts_with("could not pull the image of module ghost: "),
        "{e}"
    );

    let plain = tmp.path().join("plain.txt");
    std::fs::write(&plain, "not a program").unwrap();
    let e = rt
        .pull(&spec("plain", &plain, &[], &[]), &[], true)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("module plain") && e.reason.contains("not an executable"),
        "{e}"
    );

    // Created anyway, it fails to start with an error naming it.
    rt.create(&missing).await.unwrap();
    let e = rt.start("ghost").await.unwrap_err();
    assert!(
        e.to_string().starts_with("could not start module ghost: "),
        "{e}"
    );
    assert_eq!(state(&rt, "ghost").await.status, InstanceStatus::Stopped);

    let good = script(tmp.path(), "good.sh", "exit 0");
    rt.pull(&spec("good", &good, &[], &[]), &[], false)
        .await
        .unwrap();
}

#[tokio::test]
async fn create_refuses_a_duplicate_and_a_name_that_escapes_the_state_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(tmp.path().join("state")).unwrap();
    let exe = script(tmp.path(), "x.sh", "exit 0");
    rt.create(&spec("x", &exe, &[], &[])).await.unwrap();
    assert!(rt.create(&spec("x", &exe, &[], &[])).await.is_err());
    assert!(rt.create(&spec("../x", &exe, &[], &[])).await.is_err());
    assert!(rt.create(&spec("..", &exe, &[], &[])).await.is_err());
    let mut no_exe = spec("y", &exe, &[], &[]);
    no_exe.executable = None;
    assert!(rt.create(&no_exe).await.is_err());
    assert_eq!(rt.list().await.unwrap().len(), 1);
}

//! Deployment time: from a manifest applied (`applyConfigurationContent`) to `$edgeAgent` reporting the new
//! module `running`, for a process module; and for a container module next to a bare `docker create` +
//! `docker start` of the same image.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Map;

use crate::edge_process::EdgeProcess;
use crate::report::{Part, Table};
use crate::service::ServiceApi;
use crate::stats::millis;
use crate::Bench;

use super::{manifest, Setup};

/// Polls `$edgeAgent`'s reported properties until `module` is `running`; returns how long that took.
pub async fn wait_running(
    api: &ServiceApi,
    edge: &str,
    module: &str,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let twin = api.module_twin(edge, "$edgeAgent").await?;
        if manifest::reported_status(&twin, module) == Some("running") {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            bail!(
                "{module} not reported running within {timeout:?}; last: {:?}",
                manifest::reported_status(&twin, module)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Times the deployments.
pub async fn run(bench: &Bench, setup: &Setup, skip_docker: bool) -> anyhow::Result<Vec<Part>> {
    let edge = &setup.edge.device.id;
    let mut modules = setup.base_modules.clone();
    modules.insert(
        "sleeper".into(),
        manifest::process_module("/bin/sleep", &["3600"]),
    );
    let started = Instant::now();
    setup
        .api
        .apply_configuration(edge, &manifest::manifest(&modules, &setup.routes))
        .await?;
    wait_running(&setup.api, edge, "sleeper", Duration::from_mins(1)).await?;
    let process = started.elapsed();
    eprintln!("edge: process module running after {process:?}");
    let mut table = Table::new(&["case", "manifest applied → reported running"]);
    table.row(vec![
        "process module (`/bin/sleep 3600`)".into(),
        millis(process),
    ]);
    if skip_docker {
        table.row(vec![
            "container module".into(),
            "skipped (--skip-docker)".into(),
        ]);
    } else if let Err(why) = docker("info", &["--format", "{{.ServerVersion}}"]) {
        eprintln!("edge: container deployment skipped: {why:#}");
        table.row(vec![
            "container module".into(),
            format!("skipped: Docker is unavailable ({why})"),
        ]);
    } else {
        match container_case(bench, setup).await {
            Ok((image, edge, bare)) => {
                table.row(vec![
                    format!("container module (`{image}`, `sleep 3600`)"),
                    millis(edge),
                ]);
                table.row(vec![
                    "bare `docker create` + `docker start`, same image and command".into(),
                    millis(bare),
                ]);
            }
            Err(e) => {
                eprintln!("edge: container deployment failed: {e:#}");
                table.row(vec!["container module".into(), format!("failed: {e:#}")]);
            }
        }
    }
    Ok(vec![
        Part::Heading("Deployment".into()),
        Part::Text(
            "The manifest of the run plus one module, applied with `POST /devices/{edge}/applyConfigurationContent`; \
             the harness polls `GET /twins/{edge}/modules/$edgeAgent` every 20 ms until \
             `properties.reported.modules.{name}.runtimeStatus` is `running`. The figure includes the agent \
             reporting it to the hub. The container case runs on a second daemon with `[runtime] type = \"docker\"` \
             (a FROM scratch image around a static busybox, imported with `docker import`, pushed to the local \
             registry on 127.0.0.1:5000 and present locally, so neither side pulls); next to it, the harness times \
             `docker create` + `docker start` of the same image and command with the docker CLI."
                .into(),
        ),
        Part::Table(table),
    ])
}

/// Runs the docker CLI; returns its standard output.
fn docker(command: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("docker")
        .arg(command)
        .args(args)
        .output()
        .context("cannot run docker")?;
    if !output.status.success() {
        bail!(
            "docker {command}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A FROM scratch image around the static busybox, imported and pushed to the local registry.
fn busybox_image(dir: &Path) -> anyhow::Result<String> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .context("no static busybox (Debian's busybox-static)")?;
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::copy(busybox, root.join("bin/busybox"))?;
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    let image = format!(
        "127.0.0.1:5000/outpost-bench/busybox:{}",
        std::process::id()
    );
    let tar = dir.join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()?;
    if !status.success() {
        bail!("tar failed");
    }
    docker("import", &[&tar.display().to_string(), &image])?;
    docker("push", &[&image])?;
    Ok(image)
}

/// Deploys a container module on a Docker-runtime daemon, then times a bare create + start.
async fn container_case(
    bench: &Bench,
    setup: &Setup,
) -> anyhow::Result<(String, Duration, Duration)> {
    let dir = tempfile::Builder::new()
        .prefix("outpost-bench-docker-")
        .tempdir()?;
    let image = busybox_image(dir.path())?;
    let device = setup.api.create_edge_device("bench-edge-docker").await?;
    let prefix = format!("outpost-bench-{}-", std::process::id());
    let edge = EdgeProcess::start(
        &bench.outpost,
        &setup.hub,
        device,
        dir.path(),
        Some(prefix.clone()),
        256,
    )
    .await?;
    let mut module = manifest::docker_module(&image);
    module["settings"]["createOptions"] =
        serde_json::Value::String(r#"{"Cmd":["/bin/sleep","3600"]}"#.into());
    let mut modules = Map::new();
    modules.insert("sleeper".into(), module);
    let started = Instant::now();
    let applied = async {
        setup
            .api
            .apply_configuration(&edge.device.id, &manifest::manifest(&modules, &Map::new()))
            .await?;
        wait_running(
            &setup.api,
            &edge.device.id,
            "sleeper",
            Duration::from_mins(2),
        )
        .await
    }
    .await;
    let through_edge = started.elapsed();
    let log = edge.log_tail();
    edge.stop().await;
    let _ = docker("rm", &["-f", &format!("{prefix}sleeper")]);
    applied.with_context(|| format!("the edge daemon's log ends with:\n{log}"))?;

    let name = format!("outpost-bench-bare-{}", std::process::id());
    let _ = docker("rm", &["-f", &name]);
    let started = Instant::now();
    docker("create", &["--name", &name, &image, "/bin/sleep", "3600"])?;
    docker("start", &[&name])?;
    let bare = started.elapsed();
    let _ = docker("rm", &["-f", &name]);
    let _ = docker("rmi", &[&image]);
    Ok((image, through_edge, bare))
}

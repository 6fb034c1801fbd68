//! `outpost quickstart`: a hub and an edge device on this machine, on embedded defaults, running the two sample
//! modules (containers when Docker and the sample images are there, processes otherwise) with the sensor routed
//! through the filter to the hub; it shows readings arriving and a twin change taking effect. Ctrl-C stops
//! everything.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use outpost_core::{ConnectionString, Identity};
use outpost_hub::registry::{DeviceSpec, Precondition};
use outpost_hub::twins::TwinWrite;
use outpost_hub::{Hub, HubConfig, RunningHub};
use serde_json::{json, Value};

/// The hub's address and host name.
const HUB_HOST: &str = "127.0.0.2";
/// The edge hub's address (and host name for process modules).
const EDGE_HOST: &str = "127.0.0.3";
/// The edge device.
const EDGE_DEVICE: &str = "quickstart-edge";
/// The sample images `scripts/build-module-images.sh` pushes.
const IMAGES: [(&str, &str); 2] = [
    (
        "simulated-temperature-sensor",
        "127.0.0.1:5000/outpost/simulated-temperature-sensor:0.1.0",
    ),
    ("filter", "127.0.0.1:5000/outpost/filter:0.1.0"),
];

/// Options of `outpost quickstart`.
#[derive(clap::Args)]
pub struct QuickstartArgs {
    /// Where the hub and the edge device keep their state (default: `outpost-quickstart` in the temporary
    /// directory, so that a run from a checkout leaves it clean).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Run the sample modules as processes even when Docker is there.
    #[arg(long)]
    processes: bool,
    /// Show the hub's and the edge daemon's logs here; by default they go to `quickstart.log` in the data
    /// directory and only the quickstart's own narrative is printed.
    #[arg(long)]
    pub verbose: bool,
}

impl QuickstartArgs {
    /// The directory the quickstart keeps its state in.
    pub fn dir(&self) -> std::io::Result<PathBuf> {
        match &self.data_dir {
            Some(dir) => std::path::absolute(dir),
            None => Ok(std::env::temp_dir().join("outpost-quickstart")),
        }
    }

    /// Where the daemons' logs go unless `--verbose`.
    pub fn log_file(&self) -> std::io::Result<PathBuf> {
        Ok(self.dir()?.join("quickstart.log"))
    }
}

fn docker_images_present() -> bool {
    let docker = |args: &[&str]| {
        std::process::Command::new("docker")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    docker(&["version"])
        && IMAGES
            .iter()
            .all(|(_, image)| docker(&["image", "inspect", image]))
}

fn module_binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    if !path.is_file() {
        bail!("the sample module {name} is not built next to outpost ({}): run `cargo build --release --workspace`", path.display());
    }
    Ok(path)
}

fn manifest(containers: bool) -> anyhow::Result<Value> {
    let module = |name: &str, image: &str, desired_order: u32| -> anyhow::Result<Value> {
        let settings = if containers {
            json!({"image": image, "createOptions": "{}"})
        } else {
            json!({"path": module_binary(name)?, "args": []})
        };
        Ok(
            json!({"version": "1.0", "type": if containers { "docker" } else { "process" }, "status": "running",
                  "restartPolicy": "always", "startupOrder": desired_order, "settings": settings}),
        )
    };
    Ok(json!({"modulesContent": {
        "$edgeAgent": {"properties.desired": {
            "schemaVersion": "1.1",
            "runtime": {"type": "docker", "settings": {"minDockerVersion": "v1.25"}},
            "systemModules": {
                "edgeAgent": {"type": "docker", "settings": {"image": "outpost", "createOptions": "{}"}},
                "edgeHub": {"type": "docker", "status": "running", "restartPolicy": "always",
                            "settings": {"image": "outpost", "createOptions": "{}"}}},
            "modules": {
                "SimulatedTemperatureSensor": module("simulated-temperature-sensor", IMAGES[0].1, 2)?,
                "filter": module("filter", IMAGES[1].1, 1)?}}},
        "$edgeHub": {"properties.desired": {
            "schemaVersion": "1.1",
            "routes": {
                "sensorToFilter": "FROM /messages/modules/SimulatedTemperatureSensor/outputs/temperatureOutput INTO BrokeredEndpoint(\"/modules/filter/inputs/input1\")",
                "filterToHub": "FROM /messages/modules/filter/outputs/output1 INTO $upstream"},
            "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}}},
        "SimulatedTemperatureSensor": {"properties.desired": {"SendInterval": 1, "SendData": true}},
        "filter": {"properties.desired": {"TemperatureThreshold": 21}}}}))
}

fn edge_config(
    dir: &Path,
    hub: &Hub,
    key: &str,
    containers: bool,
) -> anyhow::Result<outpost_edge::config::EdgeConfig> {
    let connection = ConnectionString::device(hub.host_name(), EDGE_DEVICE, key);
    let runtime = if containers {
        "type = \"docker\"\nnetwork = \"outpost-quickstart\"\ncontainer_prefix = \"outpost-quickstart-\"\n"
    } else {
        "type = \"process\"\n"
    };
    // Containers reach the edge hub by this name on Outpost's network; processes by the loopback address.
    let hostname = if containers {
        "outpost-edge"
    } else {
        EDGE_HOST
    };
    let text = format!(
        "connection_string = \"{connection}\"\nhub_ca = \"{}\"\nhub_https_port = 8443\ndata_dir = \"{}\"\n\
         hostname = \"{hostname}\"\nlisten_address = \"{EDGE_HOST}\"\nedge_https_port = 8444\n\n[runtime]\n{runtime}",
        dir.join("hub").join("ca.pem").display(),
        dir.join("edge").display(),
    );
    std::fs::write(dir.join("edge.toml"), &text)?;
    outpost_edge::config::EdgeConfig::parse(&text).map_err(anyhow::Error::msg)
}

/// Runs the quickstart until Ctrl-C.
pub async fn run(args: QuickstartArgs) -> anyhow::Result<()> {
    let dir = args.dir()?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let containers = !args.processes && docker_images_present();
    println!(
        "Outpost quickstart in {} (modules as {})",
        dir.display(),
        if containers {
            "containers"
        } else {
            "processes"
        }
    );
    if !args.verbose {
        println!(
            "logs       {} (--verbose shows them here)",
            args.log_file()?.display()
        );
    }

    let hub_ip: IpAddr = HUB_HOST.parse()?;
    let hub_config = HubConfig {
        data_dir: dir.join("hub"),
        database: None,
        host_name: HUB_HOST.into(),
        bind: hub_ip,
        mqtt_port: 8883,
        https_port: 8443,
        event_retention: outpost_hub::messaging::EventRetention::default(),
        amqp_port: None,
        stream: outpost_hub::eventhub::StreamSettings::default(),
        https_limits: outpost_hub::server::HttpsLimits::default(),
        session_expiry: outpost_hub::server::DEFAULT_SESSION_EXPIRY,
        metrics_bind: None,
        certificates: outpost_hub::server::CertificateLifetimes::default(),
        provisioning: None,
    };
    let running = RunningHub::start(&hub_config).await?;
    let hub = running.hub.clone();
    println!("hub        https://{HUB_HOST}:8443 (MQTT {HUB_HOST}:8883)");
    println!(
        "           {}",
        outpost_hub::server::connection_string(&hub, HUB_HOST, 8443)?
    );

    let edge = match hub.registry().device(EDGE_DEVICE).await {
        Ok(edge) => edge,
        Err(_) => {
            hub.registry()
                .put_device(
                    &DeviceSpec {
                        device_id: EDGE_DEVICE.into(),
                        iot_edge: true,
                        ..DeviceSpec::default()
                    },
                    &Precondition::CreateOnly,
                )
                .await?
        }
    };
    let config = edge_config(&dir, &hub, &edge.credentials.primary_key, containers)?;
    let edge = outpost_edge::daemon::start(config).await?;
    println!(
        "edge       {EDGE_DEVICE}, edge hub on {EDGE_HOST}:8883 (settings in {})",
        dir.join("edge.toml").display()
    );

    hub.twins()
        .apply_configuration(EDGE_DEVICE, &manifest(containers)?)
        .await?;
    println!("deployed   SimulatedTemperatureSensor -> filter (TemperatureThreshold 21) -> hub");

    let result = tokio::select! {
        result = show(&hub) => result,
        () = crate::hub_command::shutdown_signal() => Ok(()),
    };
    println!("\nstopping");
    // The daemon's tasks first (its supervisor would restart what is removed here), then every module it
    // started, containers included: the quickstart leaves nothing running.
    let agent = edge.stop().await;
    for instance in agent.runtime.list().await.unwrap_or_default() {
        if let Err(error) = agent.runtime.remove(&instance.name).await {
            eprintln!("could not remove module {}: {error}", instance.name);
        }
    }
    running.shutdown().await;
    result
}

/// Prints readings as the hub receives them, changes the filter's threshold, and shows the filter applying it.
async fn show(hub: &Arc<Hub>) -> anyhow::Result<()> {
    let mut after = hub.messaging().newest_event();
    let started = Instant::now();
    let mut changed_at: Option<Instant> = None;
    let mut applied = false;
    let filter = Identity::module(
        outpost_core::DeviceId::new(EDGE_DEVICE)?,
        outpost_core::ModuleId::new("filter")?,
    );
    loop {
        for (seq, event) in hub
            .messaging()
            .read_events(after, 100, Duration::from_secs(1))
            .await?
        {
            after = seq;
            let body: Value = event
                .get("body")
                .and_then(Value::as_str)
                .and_then(|b| serde_json::from_str(b).ok())
                .unwrap_or_default();
            println!(
                "reading    from {}/{}: machine {:.1} °C, ambient {:.1} °C",
                event["deviceId"].as_str().unwrap_or_default(),
                event["moduleId"].as_str().unwrap_or_default(),
                body.pointer("/machine/temperature")
                    .and_then(Value::as_f64)
                    .unwrap_or(f64::NAN),
                body.pointer("/ambient/temperature")
                    .and_then(Value::as_f64)
                    .unwrap_or(f64::NAN),
            );
        }
        if changed_at.is_none() && started.elapsed() > Duration::from_secs(10) {
            let write = TwinWrite::from_body(
                &json!({"properties": {"desired": {"TemperatureThreshold": 25}}}),
                false,
            )?;
            hub.twins()
                .write_twin(EDGE_DEVICE, Some("filter"), &write, &Precondition::Any)
                .await?;
            println!("twin       filter desired TemperatureThreshold 21 -> 25");
            changed_at = Some(Instant::now());
        }
        if let (Some(at), false) = (changed_at, applied) {
            let reported = hub.twins().device_view(&filter).await?;
            if reported
                .pointer("/reported/TemperatureThreshold")
                .and_then(Value::as_f64)
                == Some(25.0)
            {
                println!("twin       filter reports TemperatureThreshold 25 ({} ms after the change); Ctrl-C stops", at.elapsed().as_millis());
                applied = true;
            }
        }
    }
}

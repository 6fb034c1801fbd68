//! `outpost hub`: run the hub, print its connection strings, manage the consumer groups of its Event
//! Hubs-compatible endpoint, and migrate a SQLite hub into PostgreSQL.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use outpost_core::units::{parse_bytes, parse_duration};
use outpost_hub::eventhub::{StreamSettings, DEFAULT_CONSUMER_GROUP, MAX_CONSUMER_GROUPS};
use outpost_hub::messaging::EventRetention;
use outpost_hub::server::{
    CertificateLifetimes, HttpsLimits, ProvisioningListener, DEFAULT_SESSION_EXPIRY,
};
use outpost_hub::storage::postgres::PostgresEngine;
use outpost_hub::storage::sqlite::SqliteEngine;
use outpost_hub::storage::{transaction, Engine};
use outpost_hub::{HubConfig, RunningHub};
use serde::{Deserialize, Serialize};

/// The `outpost hub` subcommands.
// Parsed once per process: the size of `Serve`'s flags costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum HubCommand {
    /// Run the hub: the REST service API (HTTPS) and the device endpoint (MQTT over TLS).
    Serve {
        /// Where the hub keeps its database and certificates (created on first start).
        #[arg(long)]
        data_dir: PathBuf,
        /// Keep the hub in this PostgreSQL database (`postgres://USER[:PASSWORD]@HOST:PORT/DB` or `key=value`
        /// pairs) instead of SQLite in the data directory: any number of hubs started on one database are
        /// replicas of one hub (docs/operations.md). The data directory then holds this replica's copy of the
        /// shared CA and `hub.json`.
        #[arg(long, value_name = "URL")]
        database: Option<String>,
        /// The name devices and services use for the hub (a DNS name or an IP address).
        #[arg(long, default_value = "localhost")]
        hostname: String,
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: IpAddr,
        /// The MQTT/TLS port.
        #[arg(long, default_value_t = 8883)]
        mqtt_port: u16,
        /// The HTTPS port.
        #[arg(long, default_value_t = 443)]
        https_port: u16,
        /// The AMQP/TLS port of the Event Hubs-compatible endpoint and of cloud-to-device messages over AMQP
        /// (`0`: no AMQP).
        #[arg(long, default_value_t = 5671)]
        amqp_port: u16,
        /// The partitions of the event stream, fixed when the hub is created (4 for a new hub); a different count
        /// on a later start is refused.
        #[arg(long)]
        partitions: Option<u32>,
        /// Whether twin changes (reported, desired, tags) append twin change events to the event stream
        /// (`--twin-change-events false` turns them off).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        twin_change_events: bool,

        // The device-to-cloud event stream (`GET /events`, `outpost monitor`).
        /// How long device-to-cloud events are kept (`90s`, `30m`, `12h`, `7d`); older ones are pruned in the
        /// background. A reader asking for events older than those kept gets the oldest kept.
        #[arg(long, default_value = "1d", value_parser = parse_duration)]
        event_retention: Duration,
        /// The most event JSON kept (`500MiB`, `1GiB`, or bytes); past it the oldest events are pruned.
        #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
        event_max_bytes: u64,

        // The HTTPS listener's limits (docs/operations.md).
        /// HTTPS connections served at once; past this, new ones wait to be accepted.
        #[arg(long, default_value_t = 10_000)]
        https_max_connections: usize,
        /// Seconds an HTTPS client gets to send a request's headers (an idle HTTP/1.1 connection is closed
        /// after this long too).
        #[arg(long, default_value_t = 10)]
        https_header_timeout_secs: u64,
        /// Seconds an HTTPS connection may stay open without a request in flight.
        #[arg(long, default_value_t = 60)]
        https_idle_timeout_secs: u64,

        /// How long the persistent session (unacknowledged publishes) of an MQTT client that went away is kept
        /// in memory (`12h`, `7d`); its subscriptions stay stored for as long as the identity exists.
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        session_expiry: Duration,

        /// Serve Prometheus metrics at `http://ADDR:PORT/metrics` (plain HTTP; off unless given).
        #[arg(long, value_name = "ADDR:PORT")]
        metrics_bind: Option<std::net::SocketAddr>,

        // Certificates (docs/operations.md, "Certificates that renew themselves").
        /// How long a new CA of the hub is valid (`365d`; `90s`, `30m`, `12h` for tests); renewed at 80 % of
        /// its life, the old one staying in ca.pem until it expires.
        #[arg(long, default_value = "365d", value_parser = parse_duration)]
        ca_lifetime: Duration,
        /// How long the listeners' server certificate is valid (`90d`; `30s` for tests); renewed at 80 % of
        /// its life without a restart.
        #[arg(long, default_value = "90d", value_parser = parse_duration)]
        server_cert_lifetime: Duration,

        // The provisioning service (docs/architecture.md, "Provisioning").
        /// Serve the provisioning service (DPS's device protocol: MQTT on port 8883, its REST variant on 443) on this
        /// address of its own: devices dial the provisioning host on the same fixed ports as the hub.
        #[arg(long, value_name = "ADDR")]
        provisioning_bind: Option<IpAddr>,
        /// The name devices dial for provisioning (their global device endpoint; the bind address when absent).
        #[arg(long, value_name = "NAME", requires = "provisioning_bind")]
        provisioning_hostname: Option<String>,
        /// The port of the provisioning service's REST variant (`0`: none).
        #[arg(long, default_value_t = 443, requires = "provisioning_bind")]
        provisioning_https_port: u16,
    },
    /// Print the provisioning host and the hub's ID scope, what devices need to register.
    ProvisioningInfo {
        /// The hub's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// `human` or `json` (`{"host": ..., "idScope": ...}`).
        #[arg(long, value_enum, default_value_t = crate::output::OutputFormat::Human)]
        output: crate::output::OutputFormat,
    },
    /// Copy a stopped hub kept in SQLite (its data directory) into an empty PostgreSQL database: identities and
    /// keys, twins with their versions and etags, deployments, access policies, MQTT sessions, queued
    /// cloud-to-device messages, consumer groups and the CA. Then start it with `outpost hub serve --data-dir
    /// DIR --database URL` (docs/operations.md). The event stream and delivery feedback are not copied.
    Migrate {
        /// The data directory of the SQLite hub (stop the hub first).
        #[arg(long)]
        data_dir: PathBuf,
        /// The PostgreSQL database to copy it into (`postgres://USER[:PASSWORD]@HOST:PORT/DB`); it must hold no
        /// hub yet.
        #[arg(long, value_name = "URL")]
        database: String,
        /// Migrate even though something answers on the hub's HTTPS port (use when that is not the hub).
        #[arg(long)]
        skip_running_check: bool,
    },
    /// Print the service connection string of the `iothubowner` policy.
    ConnectionString {
        /// The hub's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Print the Event Hubs-compatible connection string of the `iothubowner` policy (for `azure-eventhub`).
    EventhubConnectionString {
        /// The hub's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Create, list or delete the consumer groups of the Event Hubs-compatible endpoint (`$Default` always
    /// exists). Works on the database, whether or not the hub runs; a running hub sees the change at once.
    #[command(subcommand)]
    ConsumerGroup(ConsumerGroupCommand),
    /// Add, list or remove the CA certificates that devices registered as `certificateAuthority` present
    /// certificates signed by (X.509 authentication). Works on the database, whether or not the hub runs; a
    /// running hub checks every X.509 CONNECT against what is stored then.
    #[command(subcommand)]
    Ca(crate::hub_ca::CaCommand),
}

/// `outpost hub consumer-group`.
#[derive(Subcommand)]
pub enum ConsumerGroupCommand {
    /// Create a consumer group.
    Create {
        /// The hub's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Its name: letters, digits, `.`, `-`, `_`, at most 50.
        name: String,
    },
    /// List the consumer groups.
    List {
        /// The hub's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Delete a consumer group.
    Delete {
        /// The hub's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Its name.
        name: String,
    },
}

/// What `serve` remembers in the data directory so that `connection-string` can say how to reach the hub.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServedAs {
    host_name: String,
    https_port: u16,
    /// The AMQP port when it is not 5671 (`0`: AMQP is off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    amqp_port: Option<u16>,
    /// The PostgreSQL database of `--database`, when the hub is not SQLite in the data directory (the file is
    /// its user's only, as the directory is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    database: Option<String>,
    /// The provisioning host devices dial, when the hub serves provisioning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    provisioning_host: Option<String>,
}

impl ServedAs {
    /// What `hub.json` says of a hub serving AMQP on `amqp_port` (`0`: not at all).
    fn amqp(amqp_port: u16) -> Option<u16> {
        (amqp_port != AMQP_PORT).then_some(amqp_port)
    }
}

/// The port Event Hubs clients dial.
const AMQP_PORT: u16 = 5671;

const SERVED_AS: &str = "hub.json";

pub async fn run(command: HubCommand) -> anyhow::Result<()> {
    match command {
        HubCommand::Serve {
            data_dir,
            database,
            hostname,
            bind,
            mqtt_port,
            https_port,
            amqp_port,
            partitions,
            twin_change_events,
            event_retention,
            event_max_bytes,
            https_max_connections,
            https_header_timeout_secs,
            https_idle_timeout_secs,
            session_expiry,
            metrics_bind,
            ca_lifetime,
            server_cert_lifetime,
            provisioning_bind,
            provisioning_hostname,
            provisioning_https_port,
        } => {
            let config = HubConfig {
                data_dir,
                database,
                host_name: hostname,
                bind,
                mqtt_port,
                https_port,
                amqp_port: (amqp_port != 0).then_some(amqp_port),
                stream: StreamSettings {
                    partitions,
                    twin_change_events,
                },
                event_retention: EventRetention {
                    max_age: event_retention,
                    max_bytes: event_max_bytes,
                },
                https_limits: HttpsLimits {
                    max_connections: https_max_connections.max(1),
                    header_read_timeout: Duration::from_secs(https_header_timeout_secs.max(1)),
                    idle_timeout: Duration::from_secs(https_idle_timeout_secs.max(1)),
                    ..HttpsLimits::default()
                },
                session_expiry,
                metrics_bind,
                certificates: CertificateLifetimes {
                    ca: ca_lifetime,
                    server: server_cert_lifetime,
                },
                provisioning: provisioning_bind.map(|bind| ProvisioningListener {
                    bind,
                    host_name: provisioning_hostname.unwrap_or_else(|| bind.to_string()),
                    mqtt_port: 8883,
                    https_port: (provisioning_https_port != 0).then_some(provisioning_https_port),
                }),
            };
            serve(&config).await
        }
        HubCommand::Migrate {
            data_dir,
            database,
            skip_running_check,
        } => migrate(data_dir, database, skip_running_check).await,
        HubCommand::ConnectionString { data_dir } => {
            let served: ServedAs = read_served_as(&data_dir)?;
            let config = HubConfig {
                data_dir,
                database: served.database,
                host_name: served.host_name,
                bind: IpAddr::from([127, 0, 0, 1]),
                mqtt_port: 8883,
                https_port: served.https_port,
                amqp_port: None,
                stream: StreamSettings::default(),
                event_retention: EventRetention::default(),
                https_limits: HttpsLimits::default(),
                session_expiry: DEFAULT_SESSION_EXPIRY,
                metrics_bind: None,
                certificates: CertificateLifetimes::default(),
                provisioning: None,
            };
            println!("{}", config.owner_connection_string()?);
            Ok(())
        }
        HubCommand::EventhubConnectionString { data_dir } => {
            println!("{}", eventhub_connection_string(&data_dir)?);
            Ok(())
        }
        HubCommand::ConsumerGroup(command) => consumer_group(command),
        HubCommand::Ca(command) => crate::hub_ca::run(command),
        HubCommand::ProvisioningInfo { data_dir, output } => provisioning_info(&data_dir, output),
    }
}

/// `outpost hub provisioning-info`: the provisioning host `serve` recorded and the ID scope stored in the hub.
fn provisioning_info(data_dir: &Path, output: crate::output::OutputFormat) -> anyhow::Result<()> {
    let served = read_served_as(data_dir)?;
    let host = served.provisioning_host.clone().with_context(|| {
        format!(
            "the hub in {} serves no provisioning: start it with --provisioning-bind ADDR",
            data_dir.display()
        )
    })?;
    let engine: Box<dyn Engine> = match &served.database {
        Some(url) => Box::new(PostgresEngine::connect(url)?),
        None => Box::new(SqliteEngine::open(&data_dir.join("hub.sqlite"))?),
    };
    let scope = transaction(&*engine, |tables| {
        tables.setting(outpost_hub::provisioning::ID_SCOPE_SETTING)
    })?
    .map(|s| String::from_utf8_lossy(&s).into_owned())
    .context("the hub has no ID scope yet: has it started?")?;
    if output == crate::output::OutputFormat::Json {
        println!("{}", serde_json::json!({"host": host, "idScope": scope}));
    } else {
        println!("host     {host}");
        println!("idScope  {scope}");
    }
    Ok(())
}

/// `Endpoint=sb://HOST[:PORT]/;SharedAccessKeyName=iothubowner;SharedAccessKey=..;EntityPath=NAME`.
fn eventhub_connection_string(data_dir: &Path) -> anyhow::Result<String> {
    let served = read_served_as(data_dir)?;
    if served.amqp_port == Some(0) {
        anyhow::bail!("the hub serves no AMQP (it was started with --amqp-port 0)");
    }
    let hub = match &served.database {
        Some(url) => outpost_hub::Hub::with_engine(
            std::sync::Arc::new(PostgresEngine::connect(url)?),
            &served.host_name,
            &StreamSettings::default(),
        )?,
        None => outpost_hub::Hub::open(data_dir, &served.host_name)?,
    };
    let owner = hub
        .policy("iothubowner")
        .ok_or_else(|| anyhow::anyhow!("the hub has no iothubowner policy"))?;
    let host = match served.amqp_port {
        Some(port) => format!("{}:{port}", served.host_name),
        None => served.host_name.clone(),
    };
    Ok(format!(
        "Endpoint=sb://{host}/;SharedAccessKeyName={};SharedAccessKey={};EntityPath={}",
        owner.name,
        owner.primary_key,
        hub.event_hub().name
    ))
}

/// `outpost hub migrate`: refuses a data directory that is a PostgreSQL replica or whose hub seems to run, then
/// copies it (on a thread of its own: the PostgreSQL client blocks) and prints what was copied.
async fn migrate(
    data_dir: PathBuf,
    database: String,
    skip_running_check: bool,
) -> anyhow::Result<()> {
    if let Ok(served) = read_served_as(&data_dir) {
        if served.database.is_some() {
            anyhow::bail!(
                "{} is the data directory of a hub on PostgreSQL (hub.json), not of a SQLite hub: nothing to migrate",
                data_dir.display()
            );
        }
        if !skip_running_check && served.https_port != 0 {
            if let Some(answering) = answering(&served.host_name, served.https_port) {
                anyhow::bail!(
                    "the hub of {} seems to be running ({answering} answers, its HTTPS port in hub.json): stop it \
                     first, or what it writes during the migration is lost (--skip-running-check if that is not the hub)",
                    data_dir.display()
                );
            }
        }
    }
    let source = data_dir.clone();
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let target = PostgresEngine::connect(&database)
            .map_err(|e| anyhow::anyhow!("cannot open the database given by --database: {e}"))?;
        Ok(outpost_hub::migrate::migrate(&source, &target)?)
    })
    .await??;
    println!(
        "migrated the hub of {} into PostgreSQL:",
        data_dir.display()
    );
    for (count, what) in [
        (report.devices, "devices"),
        (report.modules, "modules"),
        (report.twins, "twins"),
        (report.deployments, "deployments"),
        (report.configurations, "automatic configurations"),
        (report.jobs, "scheduled jobs"),
        (report.policies, "shared access policies"),
        (report.sessions, "MQTT sessions"),
        (report.c2d_messages, "queued cloud-to-device messages"),
        (report.consumer_groups, "consumer groups (besides $Default)"),
    ] {
        println!("  {count:>8} {what}");
    }
    println!(
        "  the Event Hub record: {}; the CA: {}",
        if report.event_hub {
            "copied"
        } else {
            "none (created at first start)"
        },
        if report.ca { "copied" } else { "not copied" }
    );
    println!("not copied: the event stream (the new hub's starts empty) and delivery feedback");
    println!(
        "start it with: outpost hub serve --data-dir {} --database URL",
        data_dir.display()
    );
    Ok(())
}

/// The address of `host:port` (or of `127.0.0.1:port`) that accepts a TCP connection within half a second, if any.
fn answering(host: &str, port: u16) -> Option<std::net::SocketAddr> {
    use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
    let mut addresses: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map(Iterator::collect)
        .unwrap_or_default();
    addresses.push(SocketAddr::from(([127, 0, 0, 1], port)));
    addresses
        .into_iter()
        .find(|address| TcpStream::connect_timeout(address, Duration::from_millis(500)).is_ok())
}

/// Whether `name` may name a consumer group (Event Hubs' rule: letters, digits, `.`, `-`, `_`; 1 to 50).
fn valid_consumer_group(name: &str) -> bool {
    (1..=50).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// The storage of the hub whose data directory this is: PostgreSQL when it was served with `--database` (as
/// `hub.json` says), else its `hub.sqlite`. Commands that work on the database whether or not the hub runs
/// (`consumer-group`, `ca`) open it so.
pub(crate) fn open_engine(data_dir: &Path) -> anyhow::Result<Box<dyn Engine>> {
    if let Some(url) = read_served_as(data_dir)
        .ok()
        .and_then(|served| served.database)
    {
        return Ok(Box::new(PostgresEngine::connect(&url)?));
    }
    let path = data_dir.join("hub.sqlite");
    if !path.exists() {
        anyhow::bail!(
            "{} not found: has `outpost hub serve --data-dir {}` run?",
            path.display(),
            data_dir.display()
        );
    }
    Ok(Box::new(SqliteEngine::open(&path)?))
}

fn consumer_group(command: ConsumerGroupCommand) -> anyhow::Result<()> {
    let open = open_engine;
    match command {
        ConsumerGroupCommand::Create { data_dir, name } => {
            if name.eq_ignore_ascii_case(DEFAULT_CONSUMER_GROUP) {
                anyhow::bail!("{DEFAULT_CONSUMER_GROUP} always exists");
            }
            if !valid_consumer_group(&name) {
                anyhow::bail!(
                    "{name:?} is not a consumer group name: letters, digits, '.', '-' and '_', at most 50"
                );
            }
            let engine = open(&data_dir)?;
            transaction(&*engine, |tables| {
                if tables.consumer_groups()?.len() >= MAX_CONSUMER_GROUPS {
                    anyhow::bail!(
                        "a hub has at most {MAX_CONSUMER_GROUPS} consumer groups besides $Default"
                    );
                }
                if !tables.create_consumer_group(&name, chrono::Utc::now().timestamp_millis())? {
                    anyhow::bail!("consumer group {name} exists already");
                }
                Ok(())
            })?;
            println!("created consumer group {name}");
        }
        ConsumerGroupCommand::List { data_dir } => {
            let engine = open(&data_dir)?;
            println!("{DEFAULT_CONSUMER_GROUP}");
            for name in transaction(&*engine, |tables| tables.consumer_groups())? {
                println!("{name}");
            }
        }
        ConsumerGroupCommand::Delete { data_dir, name } => {
            if name.eq_ignore_ascii_case(DEFAULT_CONSUMER_GROUP) {
                anyhow::bail!("{DEFAULT_CONSUMER_GROUP} cannot be deleted");
            }
            let engine = open(&data_dir)?;
            if !transaction(&*engine, |tables| tables.delete_consumer_group(&name))? {
                anyhow::bail!("no consumer group named {name}");
            }
            println!("deleted consumer group {name}");
        }
    }
    Ok(())
}

fn write_served_as(data_dir: &Path, served: &ServedAs) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    // Its user's only: the database URL may carry a password.
    outpost_store::host::write_atomically(
        &data_dir.join(SERVED_AS),
        &serde_json::to_vec_pretty(served)?,
        0o600,
    )
    .context("cannot write hub.json in the data directory")
}

async fn serve(config: &HubConfig) -> anyhow::Result<()> {
    // Written before the listeners open, so that whoever sees them open can ask for the connection string.
    if config.https_port != 0 {
        let served = ServedAs {
            host_name: config.host_name.clone(),
            https_port: config.https_port,
            amqp_port: ServedAs::amqp(config.amqp_port.unwrap_or(0)),
            database: config.database.clone(),
            provisioning_host: config.provisioning.as_ref().map(|p| p.host_name.clone()),
        };
        write_served_as(&config.data_dir, &served)?;
    }
    raise_open_files_limit();
    let running = RunningHub::start(config).await?;
    let served = ServedAs {
        host_name: config.host_name.clone(),
        https_port: running.https_addr.port(),
        amqp_port: ServedAs::amqp(running.amqp_addr.map_or(0, |a| a.port())),
        database: config.database.clone(),
        provisioning_host: config.provisioning.as_ref().map(|p| p.host_name.clone()),
    };
    if config.https_port == 0 || config.amqp_port == Some(0) {
        write_served_as(&config.data_dir, &served)?;
    }
    let connection_string =
        outpost_hub::server::connection_string(&running.hub, &config.host_name, served.https_port)?;
    println!("Outpost hub {}", env!("CARGO_PKG_VERSION"));
    println!("  MQTT   {}", running.mqtt_addr);
    println!("  HTTPS  {}", running.https_addr);
    if let Some(amqp) = running.amqp_addr {
        println!("  AMQP   {amqp}");
    }
    if let Some(metrics) = running.metrics_addr {
        println!("  METRICS http://{metrics}/metrics");
    }
    if let Some(provisioning) = running.provisioning_addr {
        println!(
            "  DPS    {provisioning} (ID scope {})",
            running.hub.id_scope()
        );
    }
    println!("  CA     {}", config.data_dir.join("ca.pem").display());
    println!("Service connection string:");
    println!("{connection_string}");
    shutdown_signal().await;
    eprintln!("shutting down");
    running.shutdown().await;
    Ok(())
}

/// Raises the soft open-files limit to the hard limit (every connection holds a descriptor) and logs the figure.
pub fn raise_open_files_limit() {
    match outpost_store::host::raise_open_files_limit() {
        Ok(limit) => tracing::info!(limit, "open-files soft limit raised to the hard limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open-files limit"),
    }
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let Ok(mut terminate) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

fn read_served_as(data_dir: &Path) -> anyhow::Result<ServedAs> {
    let path = data_dir.join(SERVED_AS);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} not found: has `outpost hub serve --data-dir {}` run?",
            path.display(),
            data_dir.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
}

//! The Docker runtime against the real Docker daemon (`/var/run/docker.sock`).
//!
//! Nothing can be pulled from outside, so the test image is made here: a root file system holding the host's
//! statically linked busybox (Debian's `busybox-static`), imported with the daemon's `images/create?fromSrc=-`.
//! Without a reachable daemon the tests are skipped with a message, unless `CI=true`, where they fail. Every name
//! carries this run's id, and what a test creates it removes, also when it fails.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::auth::DockerCredentials;
use bollard::container::{InspectContainerOptions, ListContainersOptions, RemoveContainerOptions};
use bollard::image::{CreateImageOptions, PushImageOptions, RemoveImageOptions, TagImageOptions};
use bollard::network::InspectNetworkOptions;
use bollard::Docker;
use futures_util::{FutureExt, StreamExt};
use outpost_edge::runtime::docker::{
    DockerRuntime, LABEL_DEVICE, LABEL_DIGEST, LABEL_MODULE, LABEL_NETWORK,
};
use outpost_edge::runtime::{
    InstanceSpec, InstanceState, InstanceStatus, ModuleRuntime, RegistryCredential,
};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

const SOCKET: &str = "/var/run/docker.sock";
/// The registry the project's test set-up runs (Debian's `docker-registry`).
const LOCAL_REGISTRY: &str = "127.0.0.1:5000";
/// Applets linked into the test image's `/bin`.
const APPLETS: &[&str] = &["sh", "cat", "env", "nc", "sleep", "true"];
const GATEWAY_HOST: &str = "edge.gateway.test";

/// What one test created: an image, a network, containers named after the run id.
struct Fixture {
    docker: Docker,
    run: String,
    image: String,
    network: String,
    tmp: tempfile::TempDir,
}

impl Fixture {
    /// Connects to the daemon and imports the test image, or says why the test is skipped (`None`).
    async fn new(test: &str) -> Option<Self> {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        let docker = match Docker::connect_with_unix(SOCKET, 30, bollard::API_DEFAULT_VERSION) {
            Ok(d) => d.negotiate_version().await,
            Err(e) => Err(e),
        };
        let docker = match docker {
            Ok(d) => d,
            Err(e) if ci => panic!("CI=true but the Docker daemon at {SOCKET} is unreachable: {e}"),
            Err(e) => {
                eprintln!("SKIPPED {test}: the Docker daemon at {SOCKET} is unreachable: {e}");
                return None;
            }
        };
        let Some(busybox) = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
        else {
            let message = format!("{test}: the test image needs a static busybox (install the busybox-static package)");
            assert!(!ci, "{message}");
            eprintln!("SKIPPED {message}");
            return None;
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let run = format!("outpost-test-{}-{nanos:x}", std::process::id());
        let repo = format!("{run}-busybox");
        let options = CreateImageOptions {
            from_src: "-",
            repo: repo.as_str(),
            tag: "1",
            ..Default::default()
        };
        let mut import = docker.create_image(Some(options), Some(rootfs(busybox).into()), None);
        while let Some(step) = import.next().await {
            step.expect("cannot import the test image");
        }
        let tmp = tempfile::tempdir().unwrap();
        Some(Self {
            docker,
            image: format!("{repo}:1"),
            network: format!("{run}-net"),
            run,
            tmp,
        })
    }

    /// A runtime for `device` on this run's network, with containers named `{run}-{device}-{module}`.
    async fn runtime(&self, device: &str) -> DockerRuntime {
        DockerRuntime::connect(
            Path::new(SOCKET),
            device,
            &self.network,
            &format!("{}-{device}-", self.run),
        )
        .await
        .unwrap()
    }

    fn spec(&self, name: &str, create_options: &str, env: &[(&str, &str)]) -> InstanceSpec {
        InstanceSpec {
            name: name.into(),
            image: self.image.clone(),
            executable: None,
            args: vec![],
            create_options: Some(create_options.into()),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            workload_socket: self.tmp.path().join("workload.sock"),
            gateway_hostname: GATEWAY_HOST.into(),
            digest: format!("digest-of-{name}"),
        }
    }

    /// Removes every container, the network and the image of this run.
    async fn clean_up(&self) {
        let filters = HashMap::from([("name".to_owned(), vec![self.run.clone()])]);
        let options = ListContainersOptions {
            all: true,
            filters,
            ..Default::default()
        };
        for container in self
            .docker
            .list_containers(Some(options))
            .await
            .unwrap_or_default()
        {
            let options = RemoveContainerOptions {
                force: true,
                ..Default::default()
            };
            let _ = self
                .docker
                .remove_container(container.id.as_deref().unwrap_or_default(), Some(options))
                .await;
        }
        let _ = self.docker.remove_network(&self.network).await;
        let _ = self
            .docker
            .remove_image(
                &self.image,
                Some(RemoveImageOptions {
                    force: true,
                    ..Default::default()
                }),
                None,
            )
            .await;
    }
}

/// Runs `test` with a fresh fixture and cleans up after it, whether it passes or panics.
async fn with_fixture<F, Fut>(name: &str, test: F)
where
    F: FnOnce(Arc<Fixture>) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(fixture) = Fixture::new(name).await.map(Arc::new) else {
        return;
    };
    let outcome = AssertUnwindSafe(test(fixture.clone())).catch_unwind().await;
    fixture.clean_up().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// A root file system: `/bin/busybox` and links to the applets the tests use.
fn rootfs(busybox: &Path) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    tar.append_data(&mut dir, "bin/", std::io::empty()).unwrap();
    tar.append_path_with_name(busybox, "bin/busybox").unwrap();
    for applet in APPLETS {
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_mode(0o777);
        link.set_size(0);
        tar.append_link(&mut link, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    tar.into_inner().unwrap()
}

async fn instance(rt: &DockerRuntime, name: &str) -> Option<InstanceState> {
    rt.list()
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.name == name)
}

async fn wait_until_not_running(rt: &DockerRuntime, name: &str) -> InstanceState {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = instance(rt, name).await.expect("listed");
        if state.status != InstanceStatus::Running {
            return state;
        }
        assert!(Instant::now() < deadline, "{name} keeps running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_log(rt: &DockerRuntime, name: &str, line: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines = rt.logs(name, None).await.unwrap();
        if lines.iter().any(|l| l == line) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never logged {line:?}; it logged {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_missing_daemon_socket_is_a_runtime_error() {
    let e = DockerRuntime::connect(Path::new("/nonexistent/docker.sock"), "d", "n", "p-")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/docker.sock"), "{e}");
}

#[tokio::test]
async fn a_module_container_runs_with_merged_options_on_the_edge_network_and_is_listed_per_device()
{
    with_fixture("docker lifecycle", |f| async move {
        let rt = f.runtime("device-a").await;

        // The network exists, is Outpost's, and its gateway is the address reported.
        let network = f.docker.inspect_network(&f.network, None::<InspectNetworkOptions<String>>).await.unwrap();
        assert_eq!(network.labels.unwrap_or_default().get(LABEL_NETWORK).map(String::as_str), Some("true"));
        assert_eq!(network.driver.as_deref(), Some("bridge"));
        let gateway = rt.gateway_ip();
        let gateways: Vec<IpAddr> =
            network.ipam.unwrap().config.unwrap().iter().filter_map(|c| c.gateway.as_ref()?.parse().ok()).collect();
        assert!(gateways.contains(&gateway), "{gateway} not in {gateways:?}");
        // Connecting again finds the same network.
        assert_eq!(f.runtime("device-a").await.gateway_ip(), gateway);

        // The module reaches the host through the gateway host name.
        let listener = tokio::net::TcpListener::bind((gateway, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _workload = std::os::unix::net::UnixListener::bind(f.tmp.path().join("workload.sock")).unwrap();
        let script = format!(
            "echo SHARED=$SHARED; echo FROM_OPTIONS=$FROM_OPTIONS; echo MODULE_ENV=$MODULE_ENV; \
             [ -S /var/run/iotedge/workload.sock ] && echo socket-mounted; cat /etc/hosts; echo to-stderr >&2; \
             (echo hello | nc {GATEWAY_HOST} {port}) & \
             trap 'echo bye; exit 0' TERM; echo ready; i=0; while :; do echo tick-$i; i=$((i+1)); sleep 0.2; done"
        );
        let options = serde_json::json!({
            "Env": ["FROM_OPTIONS=yes", "SHARED=from-options"],
            "Cmd": ["/bin/sh", "-c", script],
            "Labels": {"team": "edge"},
        });
        let spec = f.spec("filter", &options.to_string(), &[("SHARED", "from-spec"), ("MODULE_ENV", "from-spec")]);
        // The image is present, so this pull does nothing.
        rt.pull(&spec, &[], false).await.unwrap();
        rt.create(&spec).await.unwrap();
        assert!(rt.create(&spec).await.is_err(), "a second create of the same module is refused");
        assert_eq!(instance(&rt, "filter").await.unwrap().status, InstanceStatus::Stopped);
        rt.start("filter").await.unwrap();

        let state = instance(&rt, "filter").await.unwrap();
        assert_eq!(state.status, InstanceStatus::Running);
        assert_eq!(state.digest, "digest-of-filter");
        assert_eq!(state.image, f.image);
        assert!(state.image_id.as_deref().is_some_and(|i| i.starts_with("sha256:")), "{:?}", state.image_id);
        assert!(state.started_at.is_some());
        assert_eq!((state.exited_at, state.exit_code), (None, None));

        // What Docker was asked to create.
        let container = rt.container_name("filter");
        let inspect = f.docker.inspect_container(&container, None::<InspectContainerOptions>).await.unwrap();
        let host_config = inspect.host_config.unwrap();
        let bind = format!("{}:/var/run/iotedge/workload.sock", f.tmp.path().join("workload.sock").display());
        assert!(host_config.binds.unwrap_or_default().contains(&bind));
        assert!(host_config.extra_hosts.unwrap_or_default().contains(&format!("{GATEWAY_HOST}:{gateway}")));
        assert_eq!(host_config.network_mode.as_deref(), Some(f.network.as_str()));
        let config = inspect.config.unwrap();
        let env = config.env.unwrap_or_default();
        for expected in ["FROM_OPTIONS=yes", "SHARED=from-options", "MODULE_ENV=from-spec"] {
            assert!(env.iter().any(|e| e == expected), "{expected} not in {env:?}");
        }
        assert!(!env.iter().any(|e| e == "SHARED=from-spec"), "createOptions' Env wins: {env:?}");
        let labels = config.labels.unwrap_or_default();
        assert_eq!(labels.get(LABEL_DEVICE).map(String::as_str), Some("device-a"));
        assert_eq!(labels.get(LABEL_MODULE).map(String::as_str), Some("filter"));
        assert_eq!(labels.get(LABEL_DIGEST).map(String::as_str), Some("digest-of-filter"));
        assert_eq!(labels.get("team").map(String::as_str), Some("edge"));

        let (mut conn, _) = tokio::time::timeout(Duration::from_secs(30), listener.accept()).await.unwrap().unwrap();
        let mut received = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut received)).await.unwrap().unwrap();
        assert_eq!(received, b"hello\n");
        drop(conn);

        // Logs: stdout and stderr, the environment seen inside, the mount and the host entry.
        let lines = wait_for_log(&rt, "filter", "ready").await;
        for expected in ["SHARED=from-options", "FROM_OPTIONS=yes", "MODULE_ENV=from-spec", "socket-mounted", "to-stderr"] {
            assert!(lines.iter().any(|l| l == expected), "{expected} not logged: {lines:?}");
        }
        let host_entry = format!("{gateway}\t{GATEWAY_HOST}");
        assert!(lines.iter().any(|l| l == &host_entry), "{host_entry:?} not in /etc/hosts: {lines:?}");
        // Wait for a few ticks: stdout and stderr are separate streams, so the stderr line may land late.
        wait_for_log(&rt, "filter", "tick-5").await;
        let tail = rt.logs("filter", Some(2)).await.unwrap();
        assert_eq!(tail.len(), 2);
        assert!(tail.iter().all(|l| l.starts_with("tick-")), "{tail:?}");

        // Host PIDs of the container's processes, the main one included.
        let pids = rt.pids("filter").await.unwrap();
        let main_pid = inspect.state.unwrap().pid.unwrap() as u32;
        assert!(pids.contains(&main_pid), "{main_pid} not in {pids:?}");

        // Following: new lines arrive, and keep arriving until the container is removed.
        let (tx, mut rx) = mpsc::channel(64);
        let follower = tokio::spawn({
            let rt = rt.clone();
            async move { rt.follow_logs("filter", tx).await }
        });
        let line = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.unwrap().unwrap();
        assert!(line.starts_with("tick-"), "{line}");

        // Stop: the module traps SIGTERM and exits 0, so it is stopped, not failed.
        rt.stop("filter", Duration::from_secs(20)).await.unwrap();
        let state = instance(&rt, "filter").await.unwrap();
        assert_eq!((state.status, state.exit_code), (InstanceStatus::Stopped, Some(0)));
        assert!(state.exited_at.is_some());
        assert!(rt.pids("filter").await.unwrap().is_empty(), "a stopped container has no processes");
        let mut followed = Vec::new();
        while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            let done = line == "bye";
            followed.push(line);
            if done {
                break;
            }
        }
        assert_eq!(followed.last().map(String::as_str), Some("bye"), "{followed:?}");

        // A module that exits non-zero is failed, with its code.
        let failing = f.spec("failing", r#"{"Cmd":["/bin/sh","-c","echo failing; exit 3"]}"#, &[]);
        rt.create(&failing).await.unwrap();
        rt.start("failing").await.unwrap();
        let state = wait_until_not_running(&rt, "failing").await;
        assert_eq!((state.status, state.exit_code), (InstanceStatus::Failed, Some(3)));
        assert_eq!(rt.logs("failing", None).await.unwrap(), ["failing"]);

        // Another device on the same engine and network sees only its own containers.
        let other = f.runtime("device-b").await;
        assert!(other.list().await.unwrap().is_empty());
        other.create(&f.spec("filter", r#"{"Cmd":["/bin/true"]}"#, &[])).await.unwrap();
        assert_eq!(other.list().await.unwrap().len(), 1);
        let names: Vec<String> = rt.list().await.unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["failing", "filter"]);

        // Remove (a missing container is fine); the follower ends with it.
        rt.remove("filter").await.unwrap();
        rt.remove("filter").await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), follower).await.unwrap().unwrap().unwrap();
        rt.remove("failing").await.unwrap();
        assert!(rt.list().await.unwrap().is_empty());
        assert_eq!(other.list().await.unwrap().len(), 1);
        other.remove("filter").await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn bad_create_options_and_unknown_containers_are_errors_naming_the_module() {
    with_fixture("docker errors", |f| async move {
        let rt = f.runtime("device-e").await;
        let e = rt
            .create(&f.spec("broken", "{not json", &[]))
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("could not create module broken: createOptions is not valid JSON"),
            "{e}"
        );
        let e = rt
            .create(&f.spec("typed", r#"{"Cmd":"not-a-list"}"#, &[]))
            .await
            .unwrap_err();
        assert_eq!(e.module, "typed");
        assert!(rt.list().await.unwrap().is_empty(), "nothing was created");

        let e = rt.start("ghost").await.unwrap_err();
        assert!(
            e.to_string().starts_with("could not start module ghost"),
            "{e}"
        );
        assert!(rt.logs("ghost", None).await.is_err());
        assert!(rt.pids("ghost").await.is_err());
        let (tx, _rx) = mpsc::channel(1);
        assert!(rt.follow_logs("ghost", tx).await.is_err());
        rt.remove("ghost").await.unwrap();
    })
    .await;
}

/// Pushes the fixture's image to `registry` as `{run}-{suffix}:1` and removes that tag locally, so that using it
/// needs a pull.
async fn publish(
    f: &Fixture,
    registry: &str,
    suffix: &str,
    credentials: Option<DockerCredentials>,
) -> String {
    let repo = format!("{registry}/{}-{suffix}", f.run);
    f.docker
        .tag_image(
            &f.image,
            Some(TagImageOptions {
                repo: repo.as_str(),
                tag: "1",
            }),
        )
        .await
        .unwrap();
    let mut push = f
        .docker
        .push_image(&repo, Some(PushImageOptions { tag: "1" }), credentials);
    while let Some(step) = push.next().await {
        step.unwrap_or_else(|e| panic!("cannot push {repo}:1: {e}"));
    }
    let image = format!("{repo}:1");
    f.docker.remove_image(&image, None, None).await.unwrap();
    image
}

fn answers(address: &str) -> bool {
    std::net::TcpStream::connect_timeout(&address.parse().unwrap(), Duration::from_secs(2)).is_ok()
}

#[tokio::test]
async fn pull_fetches_a_missing_image_from_the_local_registry() {
    if !answers(LOCAL_REGISTRY) {
        eprintln!("SKIPPED pull from the local registry: nothing answers on {LOCAL_REGISTRY} (the test set-up runs docker-registry there)");
        return;
    }
    with_fixture("docker pull", |f| async move {
        let rt = f.runtime("device-p").await;
        let image = publish(&f, LOCAL_REGISTRY, "pulled", None).await;
        let mut spec = f.spec("pulled", "{}", &[]);
        spec.image.clone_from(&image);
        assert!(
            f.docker.inspect_image(&image).await.is_err(),
            "not present before the pull"
        );
        rt.pull(&spec, &[], false).await.unwrap();
        let pulled = f.docker.inspect_image(&image).await.unwrap();
        // `always` pulls again even though it is present.
        rt.pull(&spec, &[], true).await.unwrap();
        assert_eq!(f.docker.inspect_image(&image).await.unwrap().id, pulled.id);

        let mut missing = spec.clone();
        missing.name = "absent".into();
        missing.image = format!("{LOCAL_REGISTRY}/{}-absent:1", f.run);
        let e = rt.pull(&missing, &[], false).await.unwrap_err();
        assert!(
            e.to_string()
                .starts_with("could not pull the image of module absent:"),
            "{e}"
        );
        let _ = f
            .docker
            .remove_image(
                &image,
                Some(RemoveImageOptions {
                    force: true,
                    ..Default::default()
                }),
                None,
            )
            .await;
    })
    .await;
}

/// A registry of our own with basic authentication, run from Debian's `docker-registry`.
struct AuthRegistry {
    child: std::process::Child,
    address: String,
    _dir: tempfile::TempDir,
}

const REGISTRY_USER: &str = "outpost";
const REGISTRY_PASSWORD: &str = "outpost-test-password";
/// bcrypt of `REGISTRY_PASSWORD` (the registry accepts only bcrypt in htpasswd files).
const REGISTRY_HTPASSWD: &str =
    "outpost:$2b$05$gYP./O6GOzpCc4CeH0ADWutPDaCd4zuCbsMqsHwdFPevC4zGYd6fG\n";

impl AuthRegistry {
    fn start() -> Option<Self> {
        let binary = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        std::fs::write(dir.path().join("htpasswd"), REGISTRY_HTPASSWD).unwrap();
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {root}\n\
             http:\n  addr: {address}\nauth:\n  htpasswd:\n    realm: outpost-test\n    path: {htpasswd}\n",
            root = dir.path().join("data").display(),
            htpasswd = dir.path().join("htpasswd").display(),
        );
        let config_path: PathBuf = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = std::process::Command::new(binary)
            .arg("serve")
            .arg(&config_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let registry = Self {
            child,
            address,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !answers(&registry.address) {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start on {}",
                registry.address
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(registry)
    }
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn pull_sends_the_credentials_whose_address_is_the_images_registry() {
    let Some(registry) = AuthRegistry::start() else {
        eprintln!("SKIPPED pull with credentials: docker-registry is not installed");
        return;
    };
    with_fixture("docker pull with credentials", |f| async move {
        let rt = f.runtime("device-c").await;
        let address = registry.address.clone();
        let auth = DockerCredentials {
            username: Some(REGISTRY_USER.into()),
            password: Some(REGISTRY_PASSWORD.into()),
            serveraddress: Some(address.clone()),
            ..Default::default()
        };
        let image = publish(&f, &address, "private", Some(auth)).await;
        let mut spec = f.spec("private", "{}", &[]);
        spec.image.clone_from(&image);
        let right = RegistryCredential {
            address: address.clone(),
            username: REGISTRY_USER.into(),
            password: REGISTRY_PASSWORD.into(),
        };
        let elsewhere = RegistryCredential {
            address: "other.example.com".into(),
            ..right.clone()
        };
        let wrong = RegistryCredential {
            password: "wrong".into(),
            ..right.clone()
        };

        let e = rt.pull(&spec, &[], false).await.unwrap_err();
        assert_eq!(e.module, "private", "{e}");
        assert!(
            rt.pull(&spec, std::slice::from_ref(&elsewhere), false)
                .await
                .is_err(),
            "credentials of another registry are not sent"
        );
        assert!(rt
            .pull(&spec, std::slice::from_ref(&wrong), false)
            .await
            .is_err());
        rt.pull(&spec, &[elsewhere, right], false).await.unwrap();
        assert!(f.docker.inspect_image(&image).await.is_ok());
        let _ = f
            .docker
            .remove_image(
                &image,
                Some(RemoveImageOptions {
                    force: true,
                    ..Default::default()
                }),
                None,
            )
            .await;
        drop(registry);
    })
    .await;
}

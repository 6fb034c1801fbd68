//! A throwaway PostgreSQL for the replica tests (`scripts/postgres.sh`, Debian's binaries), stopped when dropped.
//! Without the binaries a test fails under `CI=true` and is skipped, with a message, otherwise.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

/// A PostgreSQL started by `scripts/postgres.sh`, stopped when dropped.
pub struct Server {
    dir: tempfile::TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Server {
    fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres.sh")
    }

    /// Starts a server on a free port; `None` (with a message) when PostgreSQL is not installed, outside CI.
    pub fn start() -> Option<Self> {
        let installed = std::fs::read_dir("/usr/lib/postgresql").is_ok_and(|versions| {
            versions
                .flatten()
                .any(|version| version.path().join("bin/initdb").exists())
        });
        if !installed {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "PostgreSQL's binaries are missing (apt-get install postgresql; scripts/setup-test-env.sh)"
            );
            eprintln!(
                "skipped: PostgreSQL's binaries are not installed (apt-get install postgresql)"
            );
            return None;
        }
        let port = free_port();
        let server = Self {
            dir: tempfile::tempdir().expect("a temporary directory"),
            port,
        };
        server.run("start");
        Some(server)
    }

    /// Runs `scripts/postgres.sh start|stop` on this server (a stopped one starts again with its data).
    pub fn run(&self, command: &str) {
        let mut script = Command::new(Self::script());
        script.arg(command).arg(self.dir.path().join("pg"));
        if command == "start" {
            script.arg(self.port.to_string());
        }
        let output = script.output().expect("scripts/postgres.sh runs");
        assert!(
            output.status.success(),
            "scripts/postgres.sh {command} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The URL of `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://outpost@127.0.0.1:{}/{database}", self.port)
    }

    /// A new, empty database on this server; its URL.
    pub fn database(&self, name: &str) -> String {
        let url = self.url("outpost");
        let create = format!("CREATE DATABASE {name}");
        // The blocking client cannot run on a thread that drives a runtime: its own thread.
        std::thread::spawn(move || {
            let mut client =
                postgres::Client::connect(&url, postgres::NoTls).expect("the test server answers");
            client.batch_execute(&create).expect("a new database");
        })
        .join()
        .expect("creating the database");
        self.url(name)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new(Self::script())
            .arg("stop")
            .arg(self.dir.path().join("pg"))
            .status();
    }
}

/// A port on 127.0.0.1 nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

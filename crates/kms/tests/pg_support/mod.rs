//! A private PostgreSQL cluster for tests: Debian's `postgresql` package (installed by
//! scripts/install-deps.sh), `initdb` in a temporary directory, served on a Unix socket in that
//! directory only (no TCP), run as the `postgres` user when the test runs as root (PostgreSQL
//! refuses root). Stopped (immediate mode) when dropped, so no server outlives a test.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running test cluster.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Socket port number (the name of the socket file: `.s.PGSQL.<port>`).
    pub port: u16,
}

/// The newest installed PostgreSQL's `bin` directory.
fn pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl PgCluster {
    /// Creates and starts a cluster. Panics (with how to install it) when PostgreSQL is absent.
    pub fn start() -> PgCluster {
        let bin = pg_bin().expect(
            "PostgreSQL is required for this test (Debian's postgresql package: \
             scripts/install-deps.sh installs it)",
        );
        let dir = tempfile::Builder::new()
            .prefix("cloister-pg")
            .tempdir()
            .unwrap();
        if is_root() {
            let pg = nix::unistd::User::from_name("postgres")
                .unwrap()
                .expect("the postgres user (made by the postgresql package)");
            nix::unistd::chown(dir.path(), Some(pg.uid), Some(pg.gid)).unwrap();
        }
        let cluster = PgCluster {
            dir,
            bin,
            port: 5432,
        };
        let data = cluster.data_dir();
        let out = cluster
            .command("initdb")
            .args(["-D", data.to_str().unwrap()])
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.start_server();
        cluster
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory of the socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A command of the cluster's binaries, run as the `postgres` user when we are root.
    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if is_root() {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    /// Starts the server (waiting until it accepts connections).
    pub fn start_server(&self) {
        let opts = format!(
            "-k {} -p {} -c listen_addresses='' -c max_connections=200 -c fsync=on",
            self.socket_dir().display(),
            self.port
        );
        let out = self
            .command("pg_ctl")
            .args(["-D", self.data_dir().to_str().unwrap()])
            .args(["-l", self.dir.path().join("log").to_str().unwrap()])
            .args(["-w", "-t", "60", "-o", &opts, "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start failed: {} {}",
            String::from_utf8_lossy(&out.stdout),
            self.log_tail()
        );
    }

    /// Stops the server at once (like a crash: recovery runs at the next start).
    pub fn stop_server(&self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", self.data_dir().to_str().unwrap()])
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }

    /// The end of the server log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// A connection string for database `db` (key-value form, Unix socket).
    pub fn url(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.socket_dir().display(),
            self.port
        )
    }

    /// Runs SQL with psql on database `db`; returns its output (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self
            .command("psql")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", self.socket_dir().to_str().unwrap()])
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Creates a database.
    pub fn create_db(&self, db: &str) {
        self.psql("postgres", &format!("CREATE DATABASE {db}"));
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_server();
    }
}

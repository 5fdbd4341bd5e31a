//! A throw-away PostgreSQL server for tests: `initdb` in a temporary directory, listening only
//! on 127.0.0.1 on a free port, one fresh database per test. The server stops and its directory
//! is removed when the test process exits (even when it is killed): a shell holding the server
//! waits for the process's pipe to close.
//!
//! PostgreSQL refuses to run as root; as root the server runs as the `postgres` user through
//! `setpriv`. Without PostgreSQL installed the tests fail, saying so: they never pass silently.

use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long the server may take to accept connections.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// Holds the server: stops it and removes its directory when `stdin` closes.
const KEEPER: &str = r#"
bin="$1"; data="$2"; port="$3"; dir="$4"; shift 4
"$@" "$bin/postgres" -D "$data" -p "$port" -c listen_addresses=127.0.0.1 \
    -c unix_socket_directories= -c fsync=off -c max_connections=200 \
    </dev/null >"$dir/postgres.log" 2>&1 &
pid=$!
read _closed
kill -TERM "$pid"
wait "$pid"
rm -rf "$dir"
"#;

/// The running test server.
pub struct TestPostgres {
    bin: PathBuf,
    port: u16,
    dir: PathBuf,
    next_db: AtomicU32,
    /// Closing it stops the server; kept for the life of the process.
    _keeper: Mutex<(Child, ChildStdin)>,
}

static SERVER: OnceLock<Result<TestPostgres, String>> = OnceLock::new();

/// The shared server, started on first use.
///
/// # Panics
/// When PostgreSQL is not installed or does not start: these tests must not pass without it.
pub fn server() -> &'static TestPostgres {
    match SERVER.get_or_init(start) {
        Ok(server) => server,
        Err(e) => panic!("{e}"),
    }
}

/// A URL to a new, empty database on the shared server.
pub fn fresh_database() -> String {
    let server = server();
    let name = format!("t{}_{}", std::process::id(), server.next_db.fetch_add(1, Ordering::Relaxed));
    let out = Command::new(server.bin.join("createdb"))
        .args(["-h", "127.0.0.1", "-p", &server.port.to_string(), "-U", "postgres", &name])
        .output()
        .expect("run createdb");
    assert!(out.status.success(), "createdb failed: {}", String::from_utf8_lossy(&out.stderr));
    server.url(&name)
}

impl TestPostgres {
    /// The URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL on database `db` with `psql`, failing the test on an error.
    pub fn exec(&self, db: &str, sql: &str) {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
            .output()
            .expect("run psql");
        assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Runs a query on database `db` with `psql` and returns its one value, as text.
    pub fn query_one(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-t", "-A", "-c", sql])
            .output()
            .expect("run psql");
        assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }
}

/// The directory holding `initdb` and `postgres`: the newest `/usr/lib/postgresql/N/bin`, or
/// the one of `initdb` on the `PATH`.
fn find_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|d| d.join("initdb").exists() && d.join("postgres").exists())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn id_of(flag: &str) -> Result<u32, String> {
    let out = Command::new("id").args([flag, "postgres"]).output().map_err(|e| e.to_string())?;
    String::from_utf8_lossy(&out.stdout).trim().parse().map_err(|_| "no `postgres` user".to_owned())
}

fn start() -> Result<TestPostgres, String> {
    let bin = find_bin().ok_or(
        "PostgreSQL is not installed: the storage tests run against a real PostgreSQL server. \
         Install the Debian package `postgresql` (`cargo xtask ci` does it).",
    )?;
    let dir = tempfile::Builder::new().prefix("callplus-pg-").tempdir().map_err(|e| e.to_string())?.keep();
    let data = dir.join("data");
    let run_as: Vec<&str> = if is_root() {
        vec!["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
    } else {
        vec![]
    };
    if is_root() {
        std::os::unix::fs::chown(&dir, Some(id_of("-u")?), Some(id_of("-g")?)).map_err(|e| e.to_string())?;
    }
    let mut initdb = Command::new(run_as.first().copied().unwrap_or("env"));
    initdb.args(run_as.iter().skip(1)).arg(bin.join("initdb"));
    let out = initdb
        .args(["-D", &data.to_string_lossy(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        .output()
        .map_err(|e| format!("cannot run initdb: {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let port = free_port()?;
    let mut keeper = Command::new("sh");
    keeper.args(["-c", KEEPER, "sh"]).arg(&bin).arg(&data).arg(port.to_string()).arg(&dir).args(&run_as);
    let mut child =
        keeper.stdin(Stdio::piped()).spawn().map_err(|e| format!("cannot start postgres: {e}"))?;
    let stdin = child.stdin.take().ok_or("no stdin pipe")?;
    let server =
        TestPostgres { bin, port, dir, next_db: AtomicU32::new(0), _keeper: Mutex::new((child, stdin)) };
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        let ready = Command::new(server.bin.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            return Ok(server);
        }
        if Instant::now() > deadline {
            return Err(format!("PostgreSQL did not start within {START_DEADLINE:?}:\n{}", server.log()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port free on 127.0.0.1 right now (the server binds it next).
fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

/// A PostgreSQL server of one test's own, which the test may stop and start again (on the same
/// port, with the same data) to play a database outage. Stopped and removed when dropped.
pub struct OwnedPostgres {
    bin: PathBuf,
    port: u16,
    dir: PathBuf,
    run_as: Vec<&'static str>,
}

impl OwnedPostgres {
    /// Creates the cluster in a temporary directory and starts it.
    ///
    /// # Panics
    /// When PostgreSQL is not installed or does not start.
    pub fn start() -> OwnedPostgres {
        Self::start_with(None)
    }

    /// Like [`start`](Self::start), with TLS on (this PEM certificate chain and key) and
    /// plaintext connections refused, so a connection that works is encrypted.
    pub fn start_with_tls(cert_pem: &str, key_pem: &str) -> OwnedPostgres {
        Self::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> OwnedPostgres {
        let bin = find_bin().expect(
            "PostgreSQL is not installed: this test needs a real PostgreSQL server. \
             Install the Debian package `postgresql` (`cargo xtask ci` does it).",
        );
        let dir = tempfile::Builder::new().prefix("callplus-pg-own-").tempdir().expect("tempdir").keep();
        let run_as: Vec<&'static str> = if is_root() {
            std::os::unix::fs::chown(&dir, Some(id_of("-u").unwrap()), Some(id_of("-g").unwrap())).unwrap();
            vec!["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
        } else {
            vec![]
        };
        let server = OwnedPostgres { bin, port: free_port().unwrap(), dir, run_as };
        let out = server
            .command("initdb")
            .args(["-D", &server.data(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        if let Some((cert, key)) = tls {
            let data = PathBuf::from(server.data());
            std::fs::write(data.join("server.crt"), cert).unwrap();
            std::fs::write(data.join("server.key"), key).unwrap();
            std::fs::write(
                data.join("pg_hba.conf"),
                "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
            )
            .unwrap();
            let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
            conf.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
            std::fs::write(data.join("postgresql.conf"), conf).unwrap();
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(data.join("server.key"), std::fs::Permissions::from_mode(0o600))
                .unwrap();
            if is_root() {
                for file in ["server.crt", "server.key", "pg_hba.conf", "postgresql.conf"] {
                    std::os::unix::fs::chown(
                        data.join(file),
                        Some(id_of("-u").unwrap()),
                        Some(id_of("-g").unwrap()),
                    )
                    .unwrap();
                }
            }
        }
        server.resume();
        server
    }

    /// The directory the server's files live in (removed with the server).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast shutdown: open connections are cut) and waits until it is down.
    pub fn stop(&self) {
        let out =
            self.command("pg_ctl").args(["-D", &self.data(), "-m", "fast", "-w", "stop"]).output().unwrap();
        assert!(out.status.success(), "pg_ctl stop failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Starts the server again on the same port and data, and waits until it accepts connections.
    pub fn resume(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c fsync=off",
            self.port
        );
        let log = self.dir.join("postgres.log");
        let out = self
            .command("pg_ctl")
            .args(["-D", &self.data(), "-l", &log.to_string_lossy(), "-o", &options, "-w", "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn data(&self) -> String {
        self.dir.join("data").to_string_lossy().into_owned()
    }

    fn command(&self, tool: &str) -> Command {
        let mut command = Command::new(self.run_as.first().copied().unwrap_or("env"));
        command.args(self.run_as.iter().skip(1)).arg(self.bin.join(tool));
        command
    }
}

impl Drop for OwnedPostgres {
    fn drop(&mut self) {
        let _ = self.command("pg_ctl").args(["-D", &self.data(), "-m", "immediate", "-w", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

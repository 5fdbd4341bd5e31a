//! A throw-away `redis-server` for one test: 127.0.0.1 on a free port, no persistence, in a
//! temporary directory; the test may stop it and start it again on the same port.
//!
//! Without `redis-server` installed the tests say so loudly and skip, unless
//! `CALLPLUS_REQUIRE_REDIS` is set (as `cargo xtask ci` does, after installing it): then they fail.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server may take to accept connections.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// A running (or stopped) test Redis.
pub struct OwnedRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("redis-server")).find(|p| p.exists())
}

impl OwnedRedis {
    /// Starts a server, or `None` (after a loud message) when `redis-server` is not installed
    /// and the run does not require it.
    ///
    /// # Panics
    /// When the server does not start, or is missing while `CALLPLUS_REQUIRE_REDIS` is set.
    pub fn start() -> Option<OwnedRedis> {
        if binary().is_none() {
            let message = "redis-server is not installed: the Redis tests need it \
                           (Debian package `redis-server`; `cargo xtask ci` installs it)";
            assert!(std::env::var_os("CALLPLUS_REQUIRE_REDIS").is_none(), "{message}");
            // Written to the process's stderr directly: the test harness captures `eprintln!`.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "\n!!!!! SKIPPED: {message} !!!!!\n");
            return None;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        let port = listener.local_addr().expect("port").port();
        drop(listener);
        let dir = tempfile::Builder::new().prefix("callplus-redis-").tempdir().expect("tempdir");
        let mut redis = OwnedRedis { port, dir, child: None };
        redis.resume();
        Some(redis)
    }

    /// The URL to connect to.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops the server (its data is gone: it keeps none) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and waits until it answers.
    pub fn resume(&mut self) {
        let child = Command::new(binary().expect("redis-server"))
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--daemonize", "no", "--dir"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read as _, Write as _};
                let mut reply = [0u8; 7];
                if stream.write_all(b"PING\r\n").is_ok()
                    && stream.read_exact(&mut reply).is_ok()
                    && &reply == b"+PONG\r\n"
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start within {START_DEADLINE:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for OwnedRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `redis-server` that accepts TLS only, with this certificate and key (PEM).
pub struct OwnedTlsRedis {
    pub port: u16,
    _dir: tempfile::TempDir,
    child: Child,
}

impl OwnedTlsRedis {
    /// Starts it, or `None` as [`OwnedRedis::start`] does without `redis-server`.
    pub fn start(cert_pem: &str, key_pem: &str) -> Option<OwnedTlsRedis> {
        let probe = OwnedRedis::start()?;
        drop(probe);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        let port = listener.local_addr().expect("port").port();
        drop(listener);
        let dir = tempfile::Builder::new().prefix("callplus-redis-tls-").tempdir().expect("tempdir");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, cert_pem).expect("write cert");
        std::fs::write(&key, key_pem).expect("write key");
        let child = Command::new(binary().expect("redis-server"))
            .args(["--bind", "127.0.0.1", "--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
            ])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let deadline = Instant::now() + START_DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server (TLS) did not start within {START_DEADLINE:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(OwnedTlsRedis { port, _dir: dir, child })
    }
}

impl Drop for OwnedTlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

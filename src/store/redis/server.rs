//! A real `redis-server` child process, for tests, benchmarks and the local
//! end-to-end suite.
//!
//! Owns: finding the binary, picking a free loopback port, a data directory,
//! and the process's life (stop, pause, resume, kill, restart on the same
//! data). Leaves to others: talking Redis (the `redis` crate).
//!
//! Invariant: a missing `redis-server` is an error naming the binary and how
//! to install it — callers fail loudly with it, they never skip. Dropping the
//! handle kills the process.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a test Redis could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "redis-server was not found on PATH ({0}); install it (Debian: apt-get install -y redis-server) — tests that need Redis do not skip"
    )]
    Missing(std::io::Error),
    #[error("redis-server: {0}")]
    Io(#[from] std::io::Error),
    #[error("redis-server on port {port} did not answer PING within {waited:?}")]
    NotReady { port: u16, waited: Duration },
}

/// Persistence of the test server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// No RDB, no AOF: fastest, for tests that never restart Redis.
    None,
    /// AOF with `appendfsync everysec`, herald's documented production setting.
    AofEverySec,
    /// AOF with `appendfsync always`: nothing acknowledged is lost on restart.
    AofAlways,
}

/// A running `redis-server` bound to 127.0.0.1.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    persistence: Persistence,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers.
    pub fn start(persistence: Persistence) -> Result<Self, ServerError> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            persistence,
        };
        server.spawn()?;
        Ok(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGSTOP: the server stops answering but keeps its connections.
    pub fn pause(&self) -> Result<(), ServerError> {
        self.signal("-STOP")
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) -> Result<(), ServerError> {
        self.signal("-CONT")
    }

    /// SIGKILL and wait; the data directory stays for [`RedisServer::restart`].
    pub fn kill(&mut self) -> Result<(), ServerError> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.kill()?;
        self.spawn()
    }

    fn signal(&self, sig: &str) -> Result<(), ServerError> {
        if let Some(pid) = self.pid() {
            Command::new("kill")
                .arg(sig)
                .arg(pid.to_string())
                .status()?;
        }
        Ok(())
    }

    fn spawn(&mut self) -> Result<(), ServerError> {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--bind")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--save")
            .arg("")
            .arg("--protected-mode")
            .arg("yes")
            .arg("--logfile")
            .arg(log_path(self.dir.path()));
        match self.persistence {
            Persistence::None => {
                cmd.arg("--appendonly").arg("no");
            }
            Persistence::AofEverySec => {
                cmd.args(["--appendonly", "yes", "--appendfsync", "everysec"]);
            }
            Persistence::AofAlways => {
                cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ServerError::Missing(e)
            } else {
                ServerError::Io(e)
            }
        })?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(10))
    }

    fn wait_ready(&self, limit: Duration) -> Result<(), ServerError> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if ping(self.port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(ServerError::NotReady {
            port: self.port,
            waited: limit,
        })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Resume first: a stopped process ignores nothing but SIGKILL, and a
        // paused server left behind would hold its port.
        let _ = self.resume();
        let _ = self.kill();
    }
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("redis.log")
}

fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// One inline `PING` over a plain socket, so readiness needs no client.
fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    matches!(stream.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_pauses_and_restarts_on_the_same_data() {
        let mut server = RedisServer::start(Persistence::AofAlways).expect("redis-server");
        assert!(ping(server.port()));
        server.pause().unwrap();
        assert!(!ping(server.port()));
        server.resume().unwrap();
        assert!(ping(server.port()));
        server.restart().unwrap();
        assert!(ping(server.port()));
    }
}

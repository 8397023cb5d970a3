//! Real binaries as child processes: `meshgov serve`, `meshgov-sidecar`.
//!
//! The binary's path comes from the test (`env!("CARGO_BIN_EXE_…")` exists
//! only in its own package), as a [`Command`] with its arguments and
//! environment; the harness spawns it, sends it signals, waits for its
//! exit, and kills it when the test is done with it.

use crate::{Context as _, Error, Result};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;

/// A running child process; SIGKILLed and reaped when dropped.
pub struct Process {
    child: Child,
    log: Option<PathBuf>,
}

impl Process {
    /// Spawns `cmd` with stdout discarded and stderr written to `log`.
    pub fn spawn(cmd: &mut Command, log: &Path) -> Result<Process> {
        let file = std::fs::File::create(log).context(format!("create `{}`", log.display()))?;
        let child = cmd
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .context(format!("spawn {cmd:?}"))?;
        Ok(Process {
            child,
            log: Some(log.to_path_buf()),
        })
    }

    /// Spawns `cmd` as it is configured (stdout, stderr); there is no log
    /// to read back.
    pub fn spawn_unlogged(cmd: &mut Command) -> Result<Process> {
        let child = cmd.spawn().context(format!("spawn {cmd:?}"))?;
        Ok(Process { child, log: None })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child, e.g. to take its piped stdout.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// What it has written to its log so far ("" without one).
    pub fn stderr(&self) -> String {
        self.log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(l).ok())
            .unwrap_or_default()
    }

    /// Sends `sig`.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        let pid = i32::try_from(self.child.id()).context("process id")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
            .context(format!("send {sig} to {pid}"))
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        self.child.try_wait().context("wait for the child")
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> Result<bool> {
        Ok(self.exited()?.is_none())
    }

    /// Waits at most `within` for it to exit; its exit code (`None` when a
    /// signal ended it). An error, with its log, if it is still running.
    pub fn wait_exit(&mut self, within: Duration) -> Result<Option<i32>> {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.exited()? {
                return Ok(st.code());
            }
            if t0.elapsed() >= within {
                return Err(Error::new(format!(
                    "still running after {within:?}: {}",
                    self.stderr()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback address that was free a moment ago (for a process to
/// listen on).
pub fn free_addr() -> Result<SocketAddr> {
    free_addrs::<1>().map(|[a]| a)
}

/// `N` distinct loopback addresses that were free a moment ago. All are
/// held until the last is found: two ports asked for one after the other
/// (each released at once) may be the same.
pub fn free_addrs<const N: usize>() -> Result<[SocketAddr; N]> {
    let held = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("find a free port"))
        .collect::<Result<Vec<_>>>()?;
    let addrs = held
        .iter()
        .map(|l| l.local_addr().context("find a free port"))
        .collect::<Result<Vec<_>>>()?;
    <[SocketAddr; N]>::try_from(addrs)
        .ok()
        .context("find a free port")
}

/// Polls `GET /readyz` on `addr` until it answers 200 (true) or `within`
/// has passed (false).
pub fn ready_within(addr: SocketAddr, within: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if let Ok(mut c) = TcpStream::connect(addr) {
            let _ = c.write_all(b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            let mut b = Vec::new();
            let _ = c.read_to_end(&mut b);
            if b.starts_with(b"HTTP/1.1 200") {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

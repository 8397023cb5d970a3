//! `meshgov-shutdown`: how meshgov's long-running processes stop.
//!
//! `meshgov serve` (the engine), `meshgov demo` and the `meshgov-sidecar`
//! binary all stop the same way: the first SIGTERM or SIGINT (Ctrl-C)
//! starts a drain (stop accepting, let what is in flight finish), and a
//! second one during the drain exits at once with [`EXIT_FORCED`].
//!
//! This crate holds that behaviour once, so the engine does not depend on
//! the sidecar for it (nor the sidecar on the engine).

use std::io::Write as _;

/// The exit code of a second shutdown signal (128 + SIGINT, by convention).
pub const EXIT_FORCED: u8 = 130;

/// SIGTERM and SIGINT (Ctrl-C), as one stream of shutdown requests.
/// Install it first, so that from then on a signal starts a drain rather
/// than killing the process.
pub struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers. Needs a Tokio runtime with I/O enabled.
    pub fn new() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// The next SIGTERM or SIGINT.
    pub async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }

    /// From now on, the next signal exits the process at once with
    /// [`EXIT_FORCED`], without waiting for a drain, after telling stderr
    /// that `program` got a second shutdown signal. What the process has
    /// made durable stays durable; work in flight is cut.
    pub fn force_on_next(mut self, program: &'static str) {
        tokio::spawn(async move {
            self.next().await;
            // Not `eprintln!`: it panics when stderr cannot be written.
            let _ = writeln!(
                std::io::stderr(),
                "{program}: second shutdown signal; exiting at once"
            );
            std::process::exit(i32::from(EXIT_FORCED));
        });
    }
}

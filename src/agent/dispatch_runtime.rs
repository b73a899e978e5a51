//! The dispatch loop's own runtime: the loop, its send tasks and the
//! connections they open to the APIs run on a worker thread of their own.
//!
//! On the agent's main runtime a send shared the workers with every HTTP
//! request coming in: a burst of 300 accepts on two cores held sends back
//! by up to 48 ms between their start and their arrival at the API, on
//! sends a second apart by different amounts, which is how a limiter that
//! paces hand-outs exactly still drew a 429 from a strict API (its guard
//! covers 10 ms). On a thread of its own the worst measured was 9.4 ms in
//! eight runs of the same test (docs/decisions.md). The operating system gives that thread its share
//! whatever the accept path does; within the thread, nothing but sends
//! and the loop compete.

use std::future::Future;

use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinHandle;

/// A one-worker runtime, shut down (without waiting) when dropped.
pub struct DispatchRuntime {
    runtime: Option<Runtime>,
}

impl DispatchRuntime {
    pub fn new() -> std::io::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("herald-dispatch")
            .enable_all()
            .build()?;
        Ok(DispatchRuntime {
            runtime: Some(runtime),
        })
    }

    /// Runs `task` on the dispatch thread; the handle is awaited from any
    /// runtime.
    pub fn spawn<F>(&self, task: F) -> Option<JoinHandle<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.as_ref().map(|r| r.spawn(task))
    }
}

impl Drop for DispatchRuntime {
    // Dropped inside the main runtime when the agent stops: a blocking
    // shutdown is not allowed there, and whatever still runs on the
    // dispatch thread (a connection's driver) has nothing left to do.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_tasks_on_its_own_thread_and_drops_inside_a_runtime() {
        let rt = DispatchRuntime::new().unwrap();
        let name = rt
            .spawn(async { std::thread::current().name().map(str::to_owned) })
            .unwrap()
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("herald-dispatch"));
        // A task still pending when the agent stops is dropped, not awaited.
        let _pending = rt.spawn(std::future::pending::<()>());
        drop(rt);
    }
}

//! Task introspection with tokio-console, when the `tracing` feature is built in: the engine's tasks carry
//! their names, and the console subscriber listens on its default address (127.0.0.1:6669). Without the
//! feature, tasks are spawned as usual and nothing listens.

use std::future::Future;

use tokio::task::JoinHandle;

#[cfg(all(feature = "tracing", not(tokio_unstable)))]
compile_error!(
    "the `tracing` feature needs tokio's unstable API: build with RUSTFLAGS=\"--cfg tokio_unstable\""
);

/// Starts the console subscriber once per process; later servers report to the same one.
pub fn init() {
    #[cfg(feature = "tracing")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(console_subscriber::init);
    }
}

/// `tokio::spawn`, with a name that tokio-console shows.
pub fn spawn<F>(name: &str, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    #[cfg(tokio_unstable)]
    {
        tokio::task::Builder::new()
            .name(name)
            .spawn(future)
            .expect("spawning on a running runtime")
    }
    #[cfg(not(tokio_unstable))]
    {
        let _ = name;
        tokio::spawn(future)
    }
}

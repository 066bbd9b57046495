//! The one shutdown signal: a watch channel that every task listens on.

use tokio::sync::watch;

/// Held by whoever may stop the server: Python's handle, and the supervisor that stops every task when one
/// fails. Dropping every copy also stops every task.
#[derive(Debug, Clone)]
pub struct Trigger(watch::Sender<bool>);

/// Held by each task; `wait` completes once shutdown was triggered.
#[derive(Debug, Clone)]
pub struct Signal(watch::Receiver<bool>);

pub fn channel() -> (Trigger, Signal) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Signal(rx))
}

impl Trigger {
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }
}

impl Signal {
    pub async fn wait(&mut self) {
        // An error means the trigger was dropped: that is a shutdown too.
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

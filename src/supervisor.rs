//! Joins the engine's tasks. A task that fails (panics, returns an error, or ends before shutdown was asked for)
//! must not leave the others serving half a server: the first failure triggers shutdown for all, every task is
//! joined, and the failure is handed back so that Python can raise it.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;

use tokio::task::{JoinError, JoinHandle};

use crate::error::Result;
use crate::shutdown;

/// Why the engine stopped without being asked to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskFailure {
    #[error("the {task} task panicked: {message}")]
    Panicked { task: &'static str, message: String },
    #[error("the {task} task failed: {message}")]
    Failed { task: &'static str, message: String },
    #[error("the {task} task ended unexpectedly")]
    Ended { task: &'static str },
}

impl TaskFailure {
    /// A panic or an error says more than a task that ended because another one was gone.
    fn is_root_cause(&self) -> bool {
        !matches!(self, TaskFailure::Ended { .. })
    }
}

/// Waits for every task. The first failure triggers `trigger`; the most telling failure is returned.
pub async fn join_all(
    tasks: Vec<(&'static str, JoinHandle<Result<()>>)>,
    trigger: &shutdown::Trigger,
) -> Option<TaskFailure> {
    let mut pending = tasks;
    let mut failure: Option<TaskFailure> = None;
    while !pending.is_empty() {
        let (index, outcome) = poll_fn(|cx| {
            for (i, (_, handle)) in pending.iter_mut().enumerate() {
                if let Poll::Ready(outcome) = Pin::new(handle).poll(cx) {
                    return Poll::Ready((i, outcome));
                }
            }
            Poll::Pending
        })
        .await;
        let (task, _) = pending.swap_remove(index);
        let Some(new) = classify(task, outcome, trigger.is_triggered()) else {
            continue;
        };
        log::error!("{new}; the server shuts down");
        trigger.trigger();
        if failure
            .as_ref()
            .is_none_or(|old| !old.is_root_cause() && new.is_root_cause())
        {
            failure = Some(new);
        }
    }
    failure
}

fn classify(
    task: &'static str,
    outcome: std::result::Result<Result<()>, JoinError>,
    shutting_down: bool,
) -> Option<TaskFailure> {
    match outcome {
        Ok(Ok(())) if shutting_down => None,
        Ok(Ok(())) => Some(TaskFailure::Ended { task }),
        Ok(Err(e)) => Some(TaskFailure::Failed {
            task,
            message: e.to_string(),
        }),
        Err(e) => Some(TaskFailure::Panicked {
            task,
            message: panic_message(e),
        }),
    }
}

fn panic_message(e: JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let payload = e.into_panic();
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A task that serves until shutdown, as the real ones do.
    fn serving(signal: &shutdown::Signal) -> impl Future<Output = Result<()>> {
        let mut signal = signal.clone();
        async move {
            signal.wait().await;
            Ok(())
        }
    }

    #[test]
    fn a_panicking_task_stops_the_others_and_its_message_is_returned() {
        runtime().block_on(async {
            let (trigger, signal) = shutdown::channel();
            let other = tokio::spawn(serving(&signal));
            let failing = tokio::spawn(async {
                tokio::task::yield_now().await;
                panic!("The destination buffer is too small");
            });
            let failure = join_all(vec![("network", other), ("wireguard", failing)], &trigger).await;
            assert_eq!(
                failure,
                Some(TaskFailure::Panicked {
                    task: "wireguard",
                    message: "The destination buffer is too small".into()
                })
            );
            assert!(trigger.is_triggered());
        });
    }

    #[test]
    fn an_error_outranks_the_tasks_that_ended_because_of_it() {
        runtime().block_on(async {
            let (trigger, signal) = shutdown::channel();
            let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
            // Ends, without error, once the failing task is gone: like the network task without its input.
            let dependent = tokio::spawn(async move {
                rx.recv().await;
                Ok(())
            });
            let failing = tokio::spawn(async move {
                drop(tx);
                Err(Error::Io(std::io::Error::other("socket gone")))
            });
            let failure = join_all(vec![("network", dependent), ("wireguard", failing)], &trigger).await;
            assert_eq!(
                failure,
                Some(TaskFailure::Failed {
                    task: "wireguard",
                    message: "socket gone".into()
                })
            );
            drop(signal);
        });
    }

    #[test]
    fn an_orderly_shutdown_is_no_failure() {
        runtime().block_on(async {
            let (trigger, signal) = shutdown::channel();
            let a = tokio::spawn(serving(&signal));
            let b = tokio::spawn(serving(&signal));
            trigger.trigger();
            assert_eq!(join_all(vec![("a", a), ("b", b)], &trigger).await, None);
        });
    }

    #[test]
    fn a_task_that_ends_on_its_own_is_a_failure() {
        runtime().block_on(async {
            let (trigger, signal) = shutdown::channel();
            let a = tokio::spawn(serving(&signal));
            let b = tokio::spawn(async { Ok(()) });
            let failure = join_all(vec![("a", a), ("b", b)], &trigger).await;
            assert_eq!(failure, Some(TaskFailure::Ended { task: "b" }));
        });
    }
}

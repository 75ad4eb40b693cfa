//! Process lifecycle: sd-notify readiness, status and watchdog, and termination signals.
//! Without `NOTIFY_SOCKET` (not under systemd) every notification is a no-op.

use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};

use super::driver::NodeHandle;

/// READY=1: state loaded, both listeners bound.
pub fn notify_ready() {
    if let Err(error) = sd_notify::notify(&[NotifyState::Ready]) {
        tracing::warn!(%error, "sd-notify READY failed");
    }
}

/// STOPPING=1: shutdown has begun.
pub fn notify_stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// Sends WATCHDOG=1 at half the interval systemd asked for, but only while the Raft
/// driver's event loop answers: a stalled loop stops the pings and systemd restarts us.
pub async fn watchdog(node: NodeHandle) {
    let Some(interval) = sd_notify::watchdog_enabled() else { return };
    let period = interval / 2;
    loop {
        tokio::time::sleep(period).await;
        match tokio::time::timeout(period, node.ping()).await {
            Ok(Ok(())) => {
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            }
            _ => tracing::warn!("event loop did not answer within {period:?}: watchdog not fed"),
        }
    }
}

/// STATUS= on every role change, e.g. "leader, term 5, commit 1234".
pub async fn report_status(node: NodeHandle) {
    let mut role = node.role.clone();
    loop {
        let (current, term, _) = *role.borrow_and_update();
        let commit = node.shared.status.lock().expect("status lock").commit;
        let text = format!("{}, term {term}, commit {commit}", current.as_str());
        let _ = sd_notify::notify(&[NotifyState::Status(&text)]);
        if role.changed().await.is_err() {
            return;
        }
    }
}

/// Waits for SIGTERM or SIGINT.
pub async fn wait_for_termination() {
    let mut terminate = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM"),
        _ = interrupt.recv() => tracing::info!("SIGINT"),
    }
}

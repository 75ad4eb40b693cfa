//! Process lifecycle: sd-notify readiness, status and watchdog, termination signals, and
//! SIGHUP, which reloads the TLS files and the client tokens.
//! Without `NOTIFY_SOCKET` (not under systemd) every notification is a no-op.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};

use super::auth::Auth;
use super::driver::{NodeError, NodeHandle};
use super::tls::Tls;
use crate::raft::Role;

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

/// Rereads the TLS files (`--tls-cert`, `--tls-key`, `--tls-ca`, `--client-ca`) and the
/// client tokens (`--auth-tokens`) on every SIGHUP (`systemctl reload`): each is put in
/// force for new connections and requests if it can be used; a bad new file is logged,
/// naming it and never quoting it, and what is in force is kept. TLS and tokens are
/// reloaded apart: a bad tokens file does not hold back a new certificate, nor the
/// reverse. Installed before the node is ready, so a SIGHUP never ends the process
/// (its default action).
pub fn reload_on_hangup(
    auth: Option<Arc<Auth>>,
    tls: Option<Arc<Tls>>,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(async move {
        while hangup.recv().await.is_some() {
            reload(auth.as_deref(), tls.as_deref());
        }
    })
}

/// One reload: what `reload_on_hangup` does on a SIGHUP.
fn reload(auth: Option<&Auth>, tls: Option<&Tls>) {
    if auth.is_none() && tls.is_none() {
        tracing::info!("SIGHUP: no --auth-tokens and no TLS, nothing to reload");
        return;
    }
    if let Some(tls) = tls {
        match tls.reload() {
            Ok(()) => tracing::info!(
                cert = %tls.files().cert.display(),
                "SIGHUP: TLS certificate, key and CAs reloaded; new connections use them"
            ),
            Err(error) => tracing::warn!(
                %error,
                "SIGHUP: a TLS file is refused; the certificate, key and CAs in force are kept"
            ),
        }
    }
    if let Some(auth) = auth {
        match auth.reload() {
            Ok(tokens) => {
                tracing::info!(file = %auth.path().display(), tokens, "SIGHUP: tokens reloaded")
            }
            Err(error) => {
                tracing::warn!(%error, "SIGHUP: the tokens file is refused; the tokens in force are kept")
            }
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

/// A leader that is stopping hands leadership to its most up-to-date follower first
/// (thesis §3.10), so a planned restart costs the cluster no election timeout. Waits
/// at most `timeout` (one election timeout): a stop is never held up for long.
pub async fn hand_over_leadership(node: &NodeHandle, timeout: Duration) {
    if node.role.borrow().0 != Role::Leader {
        return;
    }
    let started = Instant::now();
    match tokio::time::timeout(timeout, node.step_down()).await {
        Ok(Ok(leader)) => {
            let elapsed_ms = started.elapsed().as_millis() as u64;
            let leader = node.shared.name(leader);
            tracing::info!(%leader, elapsed_ms, "stopping: handed leadership over");
        }
        // A one-node cluster has no one to hand it to.
        Ok(Err(NodeError::Invalid(reason))) => tracing::debug!(%reason, "stopping as leader"),
        Ok(Err(error)) => tracing::warn!(?error, "stopping: could not hand leadership over"),
        Err(_) => tracing::warn!(?timeout, "stopping: leadership not handed over in time"),
    }
}

//! How a node with an empty data directory comes to be a member, before its Raft core
//! exists: started with `--peers`, it asks every peer whether the cluster already
//! exists and follows `driver::start::decide_start` (a majority's answers, never
//! silence); started with `--join`, it asks the leader to add it (`POST /raft/join`)
//! and takes the id and the configuration it is given. Meanwhile its port answers
//! probes (it is new and waiting: `no_cluster`) and refuses everything else with 503.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::api::join::{joined_from_json, probe_from_json, probe_to_json, CLUSTER_PATH, JOIN_PATH};
use super::cli::{node_id, Settings};
use super::driver::core::{DriverConfig, Joined};
use super::driver::start::{decide_start, ProbeAnswer, StartDecision};
use super::peer::transport::{PeerClient, SECRET_HEADER};
use super::peer::{NODE_ADDRESS_HEADER, VERSION_HEADER};
use super::{lifecycle, ServerError};

/// How long one probe or join request may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Between rounds of asking.
const ROUND_PAUSE: Duration = Duration::from_millis(300);
/// The longest pause between join attempts.
const MAX_JOIN_PAUSE: Duration = Duration::from_secs(5);
/// How often "still waiting" is logged.
const WAITING_LOG_EVERY: Duration = Duration::from_secs(5);

/// Runs `work` while the port answers as a node that is starting; ends early (with an
/// error) on SIGTERM or SIGINT. Returns the listener for the real server.
pub(crate) async fn while_starting<T>(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<super::tls::Tls>>,
    address: &str,
    work: impl Future<Output = Result<T, ServerError>>,
) -> (tokio::net::TcpListener, Result<T, ServerError>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn(answer_while_starting(listener, tls, Arc::new(address.to_owned()), stop_rx));
    let outcome = tokio::select! {
        outcome = work => outcome,
        () = lifecycle::wait_for_termination() => Err(ServerError::MustNotStart(
            "stopped while waiting to join or bootstrap".into(),
        )),
    };
    let _ = stop_tx.send(true);
    let listener = server.await.expect("the starting server does not panic");
    (listener, outcome)
}

async fn answer_while_starting(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<super::tls::Tls>>,
    address: Arc<String>,
    mut stop: watch::Receiver<bool>,
) -> tokio::net::TcpListener {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let mut stop = stop.clone();
        let address = address.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            // The same port, so the same TLS: a peer's probe arrives over it.
            let accepted = tokio::select! {
                accepted = super::tls::accept(tls.as_deref(), stream, remote) => accepted,
                _ = stop.changed() => None,
            };
            let Some((stream, _identity)) = accepted else { return };
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let answer = starting_answer(request.uri().path(), &address);
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stop.changed() => {}
            }
            // A connection serves one request (no keep-alive) and closes after its
            // answer, so it is left to finish within the grace: a request under way, or
            // one whose bytes are still arriving, gets its answer. (hyper's graceful
            // shutdown would close a connection whose request it had not read yet, and
            // closing a socket with unread bytes sends the client a reset: seen as
            // "Connection reset by peer" in tests/membership.rs under load.)
            let _ = tokio::time::timeout(HANDOVER_GRACE, connection).await;
        });
        while connections.try_join_next().is_some() {}
    }
    // Connections still in the accept queue wait there for the real server.
    let _ = tokio::time::timeout(HANDOVER_GRACE, async { while connections.join_next().await.is_some() {} })
        .await;
    connections.abort_all();
    listener
}

/// How long the starting server lets its connections finish before the real server
/// takes the listener.
const HANDOVER_GRACE: Duration = Duration::from_secs(1);

fn starting_answer(path: &str, address: &str) -> Response<Full<Bytes>> {
    let error = "starting: this node is waiting to join or bootstrap its cluster";
    let (status, body) = match path {
        CLUSTER_PATH => (StatusCode::OK, probe_to_json(ProbeAnswer::NoCluster)),
        "/status" | "/v1/status" | "/health" => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"state": "starting", "address": address, "error": error, "code": "starting"}),
        ),
        _ => (StatusCode::SERVICE_UNAVAILABLE, json!({"error": error, "code": "starting"})),
    };
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A `--peers` node with an empty data directory: asks every peer until a majority's
/// answers let it start. Returns the cluster id it proposes if it leads first.
pub(crate) async fn bootstrap(
    settings: &Settings,
    client: &PeerClient,
    secret: Option<Arc<Vec<u8>>>,
) -> Result<u64, ServerError> {
    let me = node_id(&settings.advertise);
    let peers: Vec<String> = settings.members.iter().filter(|a| **a != settings.advertise).cloned().collect();
    let config = DriverConfig::default();
    let mut answers: HashMap<String, ProbeAnswer> = HashMap::new();
    let mut last_log = Instant::now();
    let mut first = true;
    loop {
        let mut asks = tokio::task::JoinSet::new();
        for peer in &peers {
            let (client, secret, peer) = (client.clone(), secret.clone(), peer.clone());
            let advertise = settings.advertise.clone();
            asks.spawn(async move {
                let answer = ask_probe(&client, secret.as_deref(), &advertise, &peer, me).await;
                (peer, answer)
            });
        }
        while let Some(Ok((peer, answer))) = asks.join_next().await {
            match answer {
                Ok(answer) => {
                    answers.insert(peer, answer);
                }
                Err(error) => tracing::debug!(%peer, %error, "no probe answer"),
            }
        }
        let list: Vec<ProbeAnswer> = answers.values().copied().collect();
        match decide_start(&config, settings.members.len(), &list) {
            StartDecision::Start => {
                if !peers.is_empty() {
                    tracing::info!(answered = answers.len(), "a majority of --peers answered: starting");
                }
                return Ok(super::random_id());
            }
            StartDecision::Refuse { reason, .. } => return Err(ServerError::MustNotStart(reason)),
            StartDecision::Wait { answered, needed } => {
                if first || last_log.elapsed() >= WAITING_LOG_EVERY {
                    tracing::info!(answered, needed, peers = ?peers,
                        "empty data directory: waiting for a majority of --peers (every other member, once the cluster exists) to answer before starting");
                    last_log = Instant::now();
                    first = false;
                }
                tokio::time::sleep(ROUND_PAUSE).await;
            }
        }
    }
}

async fn ask_probe(
    client: &PeerClient,
    secret: Option<&Vec<u8>>,
    address: &str,
    peer: &str,
    me: u64,
) -> Result<ProbeAnswer, String> {
    let uri = format!("http://{peer}{CLUSTER_PATH}?asker={me:016x}");
    let (status, body) = ask(client, secret, address, Method::GET, &uri, None).await?;
    if status != StatusCode::OK {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    let value: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    probe_from_json(&value).ok_or_else(|| format!("unreadable probe answer: {value}"))
}

/// A `--join` node with an empty data directory: asks the members in turn (and the
/// leader they name) until the leader adds it. Returns what it joined as.
pub(crate) async fn join(
    settings: &Settings,
    client: &PeerClient,
    secret: Option<Arc<Vec<u8>>>,
) -> Result<Joined, ServerError> {
    let body = json!({"address": settings.advertise, "learner": settings.learner}).to_string();
    let mut pause = ROUND_PAUSE;
    let mut last_log: Option<Instant> = None;
    loop {
        let mut targets: Vec<String> = settings.join.clone();
        let mut tried = 0;
        while tried < targets.len() && tried < 16 {
            let target = targets[tried].clone();
            tried += 1;
            let uri = format!("http://{target}{JOIN_PATH}");
            let answer =
                ask(client, secret.as_deref(), &settings.advertise, Method::POST, &uri, Some(body.clone()))
                    .await;
            let (status, text) = match answer {
                Ok(answer) => answer,
                Err(error) => {
                    tracing::debug!(%target, %error, "join: no answer");
                    continue;
                }
            };
            let value: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
            let error = value.get("error").and_then(Value::as_str).unwrap_or("").to_owned();
            match status {
                StatusCode::OK => {
                    let joined = joined_from_json(&value).map_err(|reason| {
                        ServerError::MustNotStart(format!("{target} answered the join with {reason}"))
                    })?;
                    tracing::info!(via = %target, id = %format!("{:016x}", joined.id),
                        cluster_id = %format!("{:016x}", joined.cluster_id), learner = settings.learner,
                        "joined the cluster as a learner; catching up");
                    return Ok(joined);
                }
                StatusCode::MISDIRECTED_REQUEST => {
                    if let Some(leader) = value.get("leader").and_then(Value::as_str) {
                        if !targets[tried..].iter().any(|t| t == leader) {
                            targets.insert(tried, leader.to_owned());
                        }
                    }
                }
                StatusCode::CONFLICT | StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => {
                    return Err(ServerError::MustNotStart(format!("{target} refused the join: {error}")));
                }
                _ => tracing::debug!(%target, %status, %error, "join: not now"),
            }
        }
        if last_log.is_none_or(|at| at.elapsed() >= WAITING_LOG_EVERY) {
            tracing::info!(join = ?settings.join, "empty data directory: waiting for the cluster's leader to add this node");
            last_log = Some(Instant::now());
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_JOIN_PAUSE);
    }
}

/// One bounded request from the node at `address`; the answer's status and body.
async fn ask(
    client: &PeerClient,
    secret: Option<&Vec<u8>>,
    address: &str,
    method: Method,
    uri: &str,
    body: Option<String>,
) -> Result<(StatusCode, Bytes), String> {
    // The version this node runs, so the leader counts it (`driver::version`): a
    // member that is about to start must not be taken for an older release.
    let version = crate::server::driver::version::THIS_VERSION.to_string();
    let mut request = Request::builder().method(method).uri(uri).header(VERSION_HEADER, version);
    // Over TLS the asked node checks that this node's certificate names it.
    if let Ok(address) = HeaderValue::from_str(address) {
        request = request.header(NODE_ADDRESS_HEADER, address);
    }
    if let Some(secret) = secret {
        request = request.header(SECRET_HEADER, HeaderValue::from_bytes(secret).map_err(|e| e.to_string())?);
    }
    if body.is_some() {
        request = request.header(CONTENT_TYPE, "application/json");
    }
    let request =
        request.body(Full::new(body.map(Bytes::from).unwrap_or_default())).map_err(|e| e.to_string())?;
    let answer = tokio::time::timeout(ASK_TIMEOUT, async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok::<_, String>((status, body))
    })
    .await;
    answer.unwrap_or_else(|_| Err(format!("no answer within {ASK_TIMEOUT:?}")))
}

/// Returns once a majority of the other members this node knows answer, authenticated,
/// that the cluster removed it: the node missed its own removal (it was cut off when
/// it committed) and must stop. A hint (a peer refusing our messages as removed) starts
/// a round of asking; one peer's word is never enough.
pub(crate) async fn confirm_removal(
    mut hints: tokio::sync::mpsc::Receiver<String>,
    shared: Arc<super::driver::Shared>,
    me: u64,
    client: PeerClient,
    secret: Option<Arc<Vec<u8>>>,
    address: String,
) {
    while let Some(first) = hints.recv().await {
        let others: Vec<String> = shared
            .members
            .read()
            .expect("members lock")
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(_, address)| address.clone())
            .collect();
        let mut asks = tokio::task::JoinSet::new();
        for peer in others.clone() {
            let (client, secret, address) = (client.clone(), secret.clone(), address.clone());
            asks.spawn(async move { ask_probe(&client, secret.as_deref(), &address, &peer, me).await });
        }
        let mut removed = 0;
        while let Some(answer) = asks.join_next().await {
            if let Ok(Ok(ProbeAnswer::Removed { .. })) = answer {
                removed += 1;
            }
        }
        let needed = others.len() / 2 + 1;
        if removed >= needed {
            tracing::error!(
                removed,
                asked = others.len(),
                "a majority of the members answer that this node was removed"
            );
            return;
        }
        tracing::warn!(peer = %first, removed, needed, "a peer refuses this node as removed; a majority does not confirm it");
        tokio::time::sleep(Duration::from_secs(1)).await;
        while hints.try_recv().is_ok() {}
    }
    std::future::pending::<()>().await
}

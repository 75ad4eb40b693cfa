//! The `mmapd` daemon: the Raft core and the store driven by tokio, serving the
//! HTTP API and peer RPC on one TCP port and admin commands on a Unix socket.
//!
//! Layout, one folder a part:
//! - `api`: the public HTTP API and the routes peers call, decoding requests into
//!   commands; `api::error` is the one place errors become HTTP statuses;
//! - `peer`: the peer transport, both directions, and write forwarding;
//! - `admin`: the Unix socket of `mmapd-admin`; `backup` its streamed `GET /backup`;
//! - `driver`: the IO-free driver core, its tokio shell and the disk thread;
//! - `auth`: client bearer tokens (`--auth-tokens`);
//! - `tls`: TLS on the port (`--tls-cert`): the PEM files, the rustls configuration,
//!   and accepting a connection (plain HTTP on a TLS port is answered 400);
//! - `cli` (flags, the original's included), `metrics`, `lifecycle` (sd-notify,
//!   signals, the watchdog), `log_limit` (warnings limited per remote address).
//!
//! Dependencies run one way: `api` and `admin` use `peer` and `driver`; `peer` uses
//! `driver`; `driver` uses none of them (it sends through the `driver::Outbox` trait).

pub mod admin;
pub mod api;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod driver;
pub mod etcd;
mod first_bytes;
mod joining;
mod lifecycle;
mod log_limit;
pub mod metrics;
pub mod peer;
pub mod tls;
pub mod watch_hub;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use thiserror::Error;
use tokio::sync::{watch, Semaphore};

use crate::kv::StateMachine;
use crate::raft::{ConfState, Config, InitialState, NodeId, Raft, Snapshot, SnapshotMeta};
use crate::store::{detect_legacy_json, Identity, Origin, Store, StoreError, StoreOptions};

use cli::{node_id, Settings};
use driver::core::{DriverConfig, DriverCore};
use driver::shell::{DriverParts, Shared, SharedVersions};
use driver::version::{MemberVersions, Version, OLDEST_VERSION, THIS_VERSION};

/// The most client connections served at once, whatever the descriptor limit allows:
/// each costs memory (hyper's buffers, a task). More wait in the accept queue.
const MAX_CONNECTIONS: usize = 8192;
/// Fewer client connections than this and the node refuses to start: raise the limit.
const MIN_CONNECTIONS: u64 = 32;

// The descriptor budget. Client connections get what the descriptor limit leaves after
// the descriptors open at start (standard streams, the runtime, the listeners, the
// store's open segments and files) and these reserves, so that a connection flood makes
// clients wait in the accept queue but never leaves the node without a descriptor for
// its own work.
/// The store's growth until the next snapshot compacts the log: a new segment file every
/// 64 MiB of log (128 segments: 8 GiB), the snapshot's temporary file, directory
/// descriptors for fsync; plus sd-notify's socket and reading `/proc`.
const STORE_RESERVE_DESCRIPTORS: u64 = 160;
/// Per peer: the outgoing peer stream and the pooled connection that carries snapshots,
/// with room for one of each being replaced.
const PER_PEER_DESCRIPTORS: u64 = 4;
/// Connections the kernel queues for `accept` (capped by net.core.somaxconn).
const LISTEN_BACKLOG: u32 = 1024;
/// Admin socket connections served at once; more wait in the socket's backlog.
const MAX_ADMIN_CONNECTIONS: usize = 16;
/// The most gRPC calls one HTTP/2 connection runs at once (etcd's clients multiplex
/// every call on one connection; Go's gRPC server allows 100 by default, etcd more).
const MAX_GRPC_STREAMS_PER_CONNECTION: u32 = 1024;
/// A connection that sends not a byte within this is closed (then hyper's HTTP/1.1
/// header timeout and HTTP/2 keepalive take over).
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The exit status of a node that must not run under its id: a committed configuration
/// removed it, or its data directory is empty and the cluster knows its id. The unit
/// does not restart it (`RestartPreventExitStatus=`): the operator must act.
pub const EXIT_REMOVED: u8 = 10;

/// Why the daemon could not start or run.
#[derive(Debug, Error)]
pub enum ServerError {
    /// Bad flags or configuration.
    #[error(transparent)]
    Cli(#[from] cli::CliError),
    /// The data directory cannot be used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The persisted state is inconsistent.
    #[error("persisted Raft state in {dir} is inconsistent: {error}")]
    State {
        /// The data directory.
        dir: String,
        /// What is wrong.
        error: crate::raft::InitError,
    },
    /// The snapshot payload does not decode.
    #[error("snapshot in {dir} does not decode: {error}")]
    Snapshot {
        /// The data directory.
        dir: String,
        /// What is wrong.
        error: crate::kv::DecodeError,
    },
    /// The Raft driver stopped unexpectedly (a bug: its panic is in the log).
    #[error("{0}")]
    Driver(String),
    /// A node with an empty data directory must not start as this id (it was a member
    /// that held the log, was removed, or is not listed): the operator must act.
    #[error("refusing to start: {0}")]
    MustNotStart(String),
    /// A committed configuration removed this node: it must not come back.
    #[error(
        "{}; remove its data directory, or start it anew with --join under a new id",
        driver::shell::REMOVED
    )]
    Removed,
    /// The descriptor limit leaves too few client connections.
    #[error(
        "the descriptor limit (RLIMIT_NOFILE) is {limit}, {open} are open and {reserved} are kept \
         for the store, peers and the admin socket: that leaves {clients} client connections, fewer \
         than {MIN_CONNECTIONS}; raise it (ulimit -n, or LimitNOFILE= in the unit)"
    )]
    Descriptors {
        /// The soft limit after raising it.
        limit: u64,
        /// Descriptors open at start.
        open: u64,
        /// The reserve.
        reserved: u64,
        /// What is left for clients.
        clients: u64,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {what}: {error}")]
    Bind {
        /// The address or path.
        what: String,
        /// The OS error.
        error: std::io::Error,
    },
}

/// A node's durable state, opened and checked, ready to serve.
pub struct Opened {
    /// The soft descriptor limit, raised to the hard limit if it could be.
    descriptor_limit: u64,
    settings: Settings,
    store: Store,
    kv: StateMachine,
    snapshot: Option<Snapshot>,
    /// How the Raft core is made: at once for a node with data, after asking the
    /// cluster for a node with an empty data directory.
    start: Start,
}

/// What a node knows at start about who it is.
enum Start {
    /// The node has data: its Raft core, the members known at start (id and advertised
    /// address) and what it records as the cluster's bootstrap if it leads before the
    /// record exists.
    Ready {
        raft: Box<Raft>,
        members: HashMap<NodeId, String>,
        bootstrap: Option<(u64, Vec<(NodeId, String)>)>,
        /// The least version a member may run (`DriverConfig::version_floor`).
        version_floor: Version,
    },
    /// An empty data directory started with `--peers` (or alone): asks the peers first
    /// (`driver::start`).
    Bootstrap { initial: InitialState },
    /// An empty data directory started with `--join`.
    Join { initial: InitialState },
}

/// Opens the data directory and restores the node. Blocking: call before serving.
pub fn open(settings: Settings) -> Result<Opened, ServerError> {
    // First: the store opens one descriptor per log segment.
    let descriptor_limit = raise_descriptor_limit();
    for file in [&settings.db_file, &settings.log_file].into_iter().flatten() {
        if file.is_file() && detect_legacy_json(file)? {
            return Err(StoreError::LegacyFormat { path: file.clone() }.into());
        }
    }
    let (store, recovered) = Store::open(&settings.data_dir, StoreOptions::default())?;
    for warning in &recovered.warnings {
        tracing::warn!("{warning}");
    }
    if let Some(marker) = store.data_dir().removed()? {
        tracing::error!(%marker, "{}", driver::shell::REMOVED);
        return Err(ServerError::Removed);
    }
    let dir = settings.data_dir.display().to_string();
    let identity = store.data_dir().identity()?;
    let origin = store.data_dir().origin()?;
    let empty = recovered.snapshot.is_none()
        && recovered.entries.is_empty()
        && recovered.hard_state == crate::raft::HardState::default();
    let (snapshot_meta, kv, snapshot) = match recovered.snapshot {
        Some((meta, data)) => {
            let kv = StateMachine::load_snapshot_shared(&data)
                .map_err(|error| ServerError::Snapshot { dir: dir.clone(), error })?;
            let snapshot = Snapshot { meta: meta.clone(), data };
            (meta, kv, Some(snapshot))
        }
        None => (SnapshotMeta::default(), StateMachine::new(), None),
    };
    let initial = InitialState {
        hard_state: recovered.hard_state,
        snapshot: snapshot_meta,
        entries: recovered.entries,
    };
    let start = match (identity, origin) {
        (None, _) if empty && !settings.join.is_empty() => Start::Join { initial },
        (None, _) if empty => Start::Bootstrap { initial },
        (Some(identity), Some(origin)) => {
            if !settings.join.is_empty() && !origin.joined {
                tracing::warn!("--join is ignored: this node has data (it was bootstrapped with --peers)");
            }
            let members: HashMap<NodeId, String> = origin.members.iter().cloned().collect();
            let bootstrap = (!origin.joined).then(|| (identity.cluster_id, origin.members.clone()));
            let raft = restore_raft(&settings, identity.node_id, origin.base, initial, &members)?;
            // An origin is written by this release or a later one: so was every
            // member's, in a cluster it created or joined.
            Start::Ready { raft: Box::new(raft), members, bootstrap, version_floor: THIS_VERSION }
        }
        // A data directory from before origins were written: its members are --peers,
        // as they always were, and its cluster id the hash of them.
        (identity, _) => {
            // Written by a release before versions were reported: its peers may still
            // run one (a rolling upgrade), until each reports its version.
            let (raft, members, bootstrap) = open_legacy(&settings, &store, identity, initial)?;
            Start::Ready { raft: Box::new(raft), members, bootstrap, version_floor: OLDEST_VERSION }
        }
    };
    if let Start::Ready { raft, .. } = &start {
        warn_if_recorded_elsewhere(&settings, raft.id(), &kv);
    }
    Ok(Opened { descriptor_limit, settings, store, kv, snapshot, start })
}

/// A node that advertises another address than the cluster records for it (started
/// with other flags than before, or from a directory `mmapd-admin restore` wrote for
/// another address) is told how to fix it: peers and joining nodes use the record.
fn warn_if_recorded_elsewhere(settings: &Settings, id: NodeId, kv: &StateMachine) {
    if let Some(member) = kv.cluster().members().get(&id) {
        if member.address != settings.advertise {
            tracing::warn!(
                recorded = %member.address,
                advertise = %settings.advertise,
                "this node advertises another address than the cluster records for it; peers and \
                 joining nodes use the recorded one: start it with --advertise {}, or record the new \
                 one with `mmapd-admin member update {id:016x} {}`",
                member.address,
                settings.advertise,
            );
        }
    }
}

/// The Raft core of a node with data: its base configuration is the snapshot's if it
/// has one, else `base` (the origin's). A snapshot whose members differ from --peers is
/// obeyed, with one warning: --peers and config.json only bootstrap.
fn restore_raft(
    settings: &Settings,
    id: NodeId,
    base: ConfState,
    initial: InitialState,
    members: &HashMap<NodeId, String>,
) -> Result<Raft, ServerError> {
    let peers: Vec<NodeId> = settings.members.iter().map(|a| node_id(a)).collect();
    let peers_conf = ConfState::with_voters(peers);
    let conf = if initial.snapshot.index > 0 { initial.snapshot.conf.clone() } else { base };
    if settings.join.is_empty() && settings.members.len() > 1 && conf != peers_conf {
        let name = |ids: &[NodeId]| {
            ids.iter()
                .map(|id| members.get(id).cloned().unwrap_or_else(|| format!("{id:016x}")))
                .collect::<Vec<_>>()
        };
        tracing::warn!(
            data_dir_voters = ?name(&conf.voters),
            data_dir_learners = ?name(&conf.learners),
            peers = ?settings.members,
            "the members in the data directory differ from --peers; the data directory's are used \
             (--peers only bootstraps a new cluster)"
        );
    }
    build_raft(settings, id, InitialState { snapshot: SnapshotMeta { conf, ..initial.snapshot }, ..initial })
}

/// A data directory without an origin file (written by an earlier version): node ids
/// and the cluster id are hashes of --peers, and without a snapshot a changed --peers
/// is refused, since the directory does not say what it was bootstrapped with.
#[allow(clippy::type_complexity)]
fn open_legacy(
    settings: &Settings,
    store: &Store,
    identity: Option<Identity>,
    initial: InitialState,
) -> Result<(Raft, HashMap<NodeId, String>, Option<(u64, Vec<(NodeId, String)>)>), ServerError> {
    let id = node_id(&settings.advertise);
    let members: HashMap<NodeId, String> = settings.members.iter().map(|a| (node_id(a), a.clone())).collect();
    let bootstrap_identity = Identity { cluster_id: cluster_id(&settings.members), node_id: id };
    let has_snapshot = initial.snapshot.index > 0;
    match identity {
        // --peers changed since this directory was bootstrapped. With a snapshot, the
        // members it holds are used (with a warning); without one they are not known
        // apart from --peers, so the node refuses rather than obey the new list.
        Some(existing) if existing.node_id == id && existing != bootstrap_identity && has_snapshot => {}
        _ => store.data_dir().write_identity(bootstrap_identity)?,
    }
    let base = ConfState::with_voters(members.keys().copied().collect());
    let raft = restore_raft(settings, id, base, initial, &members)?;
    let mut list: Vec<(NodeId, String)> = members.iter().map(|(k, v)| (*k, v.clone())).collect();
    list.sort();
    Ok((raft, members, Some((bootstrap_identity.cluster_id, list))))
}

/// The Raft core with the daemon's timing settings.
fn build_raft(settings: &Settings, id: NodeId, initial: InitialState) -> Result<Raft, ServerError> {
    let mut config = Config::new(id);
    config.election_ticks = settings.election_ticks;
    config.heartbeat_ticks = settings.heartbeat_ticks;
    config.seed = id ^ std::process::id() as u64 ^ nanos_now();
    let alone = initial.snapshot.conf.voters == [id] && initial.snapshot.conf.learners.is_empty();
    let dir = settings.data_dir.display().to_string();
    let mut raft = Raft::new(config, initial).map_err(|error| ServerError::State { dir, error })?;
    if alone && raft.voters() == [id] {
        // A one-node cluster needs no election timeout to find out it is alone.
        raft.campaign();
    }
    Ok(raft)
}

/// A random id, never 0: a cluster's id, a joining node's, or a lease's.
pub(crate) fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        // RandomState is seeded from the OS's randomness.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(nanos_now());
        hasher.write_u32(std::process::id());
        let id = hasher.finish();
        if id != 0 {
            return id;
        }
    }
}

/// Raises the soft descriptor limit to the hard limit, as most servers do (the soft
/// limit is often 1024 for compatibility with `select`, which mmapd does not use), and
/// returns the soft limit in force.
fn raise_descriptor_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(errno) => {
            tracing::warn!(%errno, "cannot read the descriptor limit; assuming 1024");
            return 1024;
        }
    };
    if soft >= hard {
        return soft;
    }
    // Fails for an unlimited hard limit above the kernel's nr_open, and under a seccomp
    // filter without @resources (the unit sets both limits, so it never needs to raise).
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => hard,
        Err(errno) => {
            tracing::warn!(%errno, soft, hard, "cannot raise the descriptor limit to the hard limit");
            soft
        }
    }
}

/// Descriptors open now (`/proc/self/fd`); 64 if that cannot be read.
fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(64, |entries| entries.count() as u64)
}

/// How many client connections the descriptor limit allows, after the reserves.
fn client_connection_limit(descriptor_limit: u64, peers: usize) -> Result<usize, ServerError> {
    let open = open_descriptors();
    let forwards = if peers == 0 {
        0
    } else {
        (api::MAX_FORWARDS_IN_FLIGHT + api::forward::MAX_BATCHES_IN_FLIGHT) as u64
    };
    let reserved = STORE_RESERVE_DESCRIPTORS
        + PER_PEER_DESCRIPTORS * peers as u64
        + forwards
        + MAX_ADMIN_CONNECTIONS as u64;
    let clients = descriptor_limit.saturating_sub(open).saturating_sub(reserved);
    if clients < MIN_CONNECTIONS {
        return Err(ServerError::Descriptors { limit: descriptor_limit, open, reserved, clients });
    }
    let connections = clients.min(MAX_CONNECTIONS as u64) as usize;
    tracing::info!(
        descriptor_limit,
        open_descriptors = open,
        reserved_descriptors = reserved,
        client_connections = connections,
        "connection limit derived from the descriptor limit"
    );
    Ok(connections)
}

/// Serves until SIGTERM or SIGINT; then stops accepting, finishes, msyncs and returns.
pub async fn serve(opened: Opened) -> Result<(), ServerError> {
    let Opened { descriptor_limit, settings, store, kv, snapshot, start } = opened;
    let listener = bind_tcp(settings.listen)
        .map_err(|error| ServerError::Bind { what: settings.listen.to_string(), error })?;
    let reload = lifecycle::reload_on_hangup(settings.auth.clone(), settings.tls.clone())
        .map_err(|error| ServerError::Driver(format!("cannot install the SIGHUP handler: {error}")))?;
    let reload = tokio::spawn(reload);
    let secret = settings.cluster_secret.clone().map(Arc::new);
    let connector = peer::connect::PeerConnector::new(settings.tls.clone());
    let client = peer::transport::client(connector.clone());
    // A node with an empty data directory asks the cluster first, answering probes
    // meanwhile; then it is a node with data.
    let (raft, members, bootstrap, listener, version_floor) = match start {
        Start::Ready { raft, members, bootstrap, version_floor } => {
            (*raft, members, bootstrap, listener, version_floor)
        }
        Start::Bootstrap { initial } => {
            let (listener, outcome) = joining::while_starting(
                listener,
                settings.tls.clone(),
                &settings.advertise,
                joining::bootstrap(&settings, &client, secret.clone()),
            )
            .await;
            let cluster_candidate = outcome?;
            let id = node_id(&settings.advertise);
            let list: Vec<(NodeId, String)> =
                settings.members.iter().map(|a| (node_id(a), a.clone())).collect();
            let base = ConfState::with_voters(list.iter().map(|(id, _)| *id).collect());
            store.data_dir().write_origin(&Origin {
                joined: false,
                base: base.clone(),
                members: list.clone(),
            })?;
            store.data_dir().write_identity(Identity { cluster_id: cluster_candidate, node_id: id })?;
            let initial =
                InitialState { snapshot: SnapshotMeta { conf: base, ..initial.snapshot }, ..initial };
            let raft = build_raft(&settings, id, initial)?;
            (raft, list.iter().cloned().collect(), Some((cluster_candidate, list)), listener, THIS_VERSION)
        }
        Start::Join { initial } => {
            let (listener, outcome) = joining::while_starting(
                listener,
                settings.tls.clone(),
                &settings.advertise,
                joining::join(&settings, &client, secret.clone()),
            )
            .await;
            let joined = outcome?;
            let origin = Origin { joined: true, base: joined.base.clone(), members: joined.members.clone() };
            store.data_dir().write_origin(&origin)?;
            store
                .data_dir()
                .write_identity(Identity { cluster_id: joined.cluster_id, node_id: joined.id })?;
            let initial =
                InitialState { snapshot: SnapshotMeta { conf: joined.base, ..initial.snapshot }, ..initial };
            let mut members: HashMap<NodeId, String> = joined.members.into_iter().collect();
            members.insert(joined.id, settings.advertise.clone());
            (build_raft(&settings, joined.id, initial)?, members, None, listener, THIS_VERSION)
        }
    };
    let id = raft.id();
    let admin_listener = admin::bind(&settings.admin_socket)
        .await
        .map_err(|error| ServerError::Bind { what: settings.admin_socket.display().to_string(), error })?;
    // Counted now that the listeners, the runtime and the store are open.
    let peer_count = members.keys().filter(|&&member| member != id).count();
    let max_connections = client_connection_limit(descriptor_limit, peer_count)?;

    let kv = Arc::new(RwLock::new(kv));
    let cluster_id = Arc::new(AtomicU64::new(kv.read().expect("kv lock").cluster().id()));
    let shared = Arc::new(Shared {
        kv: kv.clone(),
        status: Mutex::new(raft.status()),
        members: RwLock::new(members.clone()),
        cluster_id: cluster_id.clone(),
        disk_full: Mutex::new(None),
        metrics: Default::default(),
        versions: Mutex::new(SharedVersions::new(MemberVersions::new(id, version_floor))),
        hashes: Default::default(),
        watch_hub: Default::default(),
    });
    let mapped_bytes = Arc::new(AtomicU64::new(store.mapped_bytes()));
    let data_dir = store.dir().to_path_buf();
    let (done_tx, done_rx) = tokio::sync::mpsc::channel(driver::disk::DISK_QUEUE + 1);
    let (disk_jobs, disk_thread) = driver::disk::spawn(store, done_tx, mapped_bytes.clone())
        .map_err(|error| ServerError::Driver(format!("cannot start the disk thread: {error}")))?;
    let peers: HashMap<NodeId, String> =
        members.iter().filter(|(peer, _)| **peer != id).map(|(k, v)| (*k, v.clone())).collect();
    // Twice the election timeout: a peer that cannot take a batch in that time is
    // treated as unreachable, and its connection is replaced.
    let peer_timeout = (settings.tick * settings.election_ticks * 2).max(Duration::from_millis(200));
    let credentials = peer::Credentials {
        secret: secret.clone(),
        node_id: id,
        address: settings.advertise.clone(),
        cluster_id,
    };
    let (removed_hint, removed_hints) = tokio::sync::mpsc::channel(1);
    let versions: peer::transport::PeerVersions = {
        let shared = shared.clone();
        Arc::new(move |peer| shared.version_of(peer))
    };
    let outbox = peer::transport::start(
        &peers,
        client.clone(),
        connector,
        credentials,
        peer_timeout,
        removed_hint,
        versions,
        settings.snapshot_chunk_bytes,
    );
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let driver_config = DriverConfig {
        snapshot_entries: settings.snapshot_entries,
        snapshot_bytes: settings.snapshot_bytes,
        history_entries: settings.history_entries,
        history_bytes: settings.history_bytes,
        step_down_timeout_ticks: u64::from(settings.election_ticks) * 2,
        read_context_start: nanos_now(),
        bootstrap,
        version_floor,
        ..DriverConfig::default()
    };
    let core = DriverCore::new(raft, kv, snapshot, driver_config);
    let (node, driver) = driver::shell::spawn(DriverParts {
        core,
        tick: settings.tick,
        disk_jobs,
        disk_done: done_rx,
        outbox: Box::new(outbox.clone()),
        shared,
        shutdown: shutdown_rx.clone(),
        data_dir: data_dir.clone(),
    });
    let api = Arc::new(api::Api {
        node: node.clone(),
        address: settings.advertise.clone(),
        client: client.clone(),
        secret,
        request_timeout: settings.request_timeout,
        body_timeout: settings.body_timeout,
        max_key_bytes: settings.max_key_bytes,
        max_value_bytes: settings.max_value_bytes,
        mapped_bytes,
        quota_bytes: settings.quota_bytes,
        forwarder: api::forward::Forwarder::start(api::forward::Link::new(
            client.clone(),
            outbox.clone(),
            node.clone(),
            settings.request_timeout,
        )),
        outbox,
        auth: settings.auth.clone(),
        tls: settings.tls.clone(),
        watch_progress: settings.watch_progress,
        watch_queue_rounds: settings.watch_queue_rounds,
        min_lease_ttl_s: api::leases::min_ttl_s(settings.tick * settings.election_ticks),
        incoming: peer::snapshot::Receiver::new(data_dir),
    });

    let http_task = tokio::spawn(accept_http(
        listener,
        settings.tls.clone(),
        api.clone(),
        max_connections,
        shutdown_rx.clone(),
    ));
    let admin_task = tokio::spawn(accept_admin(admin_listener, api.clone(), shutdown_rx.clone()));
    tracing::info!(address = %settings.advertise, listen = %settings.listen, node_id = %format!("{id:016x}"), data_dir = %settings.data_dir.display(),
        admin_socket = %settings.admin_socket.display(), members = members.len(), "mmapd ready");
    lifecycle::notify_ready();
    let watchdog = tokio::spawn(lifecycle::watchdog(node.clone()));
    let status = tokio::spawn(lifecycle::report_status(node.clone()));

    let removal = joining::confirm_removal(
        removed_hints,
        node.shared.clone(),
        id,
        api.client.clone(),
        api.secret.clone(),
        settings.advertise.clone(),
    );
    let mut driver = driver;
    // The driver only ends on shutdown: ending earlier means a broken invariant
    // panicked it. Exit non-zero (systemd restarts us) rather than hang unserved.
    let ended: Option<Result<(), String>> = tokio::select! {
        () = lifecycle::wait_for_termination() => None,
        () = removal => Some(Err(driver::shell::REMOVED.to_owned())),
        result = &mut driver => Some(match result {
            Ok(Ok(())) => Err("the Raft driver stopped".to_owned()),
            Ok(Err(error)) if error == driver::shell::REMOVED => Err(error),
            Ok(Err(error)) => Err(format!("the Raft driver stopped: {error}")),
            Err(error) => Err(format!("the Raft driver failed: {error}")),
        }),
    };
    let driver_failed = match ended {
        Some(Err(error)) if error == driver::shell::REMOVED => {
            lifecycle::notify_stopping();
            let cluster = api.node.shared.cluster_id.load(std::sync::atomic::Ordering::Relaxed);
            let marker =
                format!("node {id:016x} at {} was removed from cluster {cluster:016x}", settings.advertise);
            if let Err(error) = crate::store::mark_removed(&settings.data_dir, &marker) {
                tracing::error!(%error, "cannot leave the removal marker");
            }
            return Err(ServerError::Removed);
        }
        Some(Err(reason)) => Some(reason),
        Some(Ok(())) | None => None,
    };
    if let Some(reason) = driver_failed {
        tracing::error!("{reason}; exiting");
        lifecycle::notify_stopping();
        return Err(ServerError::Driver(reason));
    }
    lifecycle::notify_stopping();
    if peer_count > 0 {
        lifecycle::hand_over_leadership(&node, settings.tick * settings.election_ticks).await;
    }
    tracing::info!("stopping: no new requests; finishing those in flight");
    let _ = shutdown_tx.send(true);
    let _ = http_task.await;
    let _ = admin_task.await;
    watchdog.abort();
    status.abort();
    reload.abort();
    let _ = driver.await;
    drop(node);
    drop(api);
    // The disk thread msyncs everything before it ends.
    let _ = tokio::task::spawn_blocking(move || disk_thread.join()).await;
    let _ = std::fs::remove_file(&settings.admin_socket);
    tracing::info!("stopped");
    Ok(())
}

/// Binds the TCP port with a listen backlog of `LISTEN_BACKLOG`: connections past the
/// connection limit wait there, instead of in SYN retries once a backlog of 128 (the
/// standard library's) is full.
fn bind_tcp(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn accept_http(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<tls::Tls>>,
    api: Arc<api::Api>,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("semaphore never closed"),
            _ = shutdown.changed() => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let api = api.clone();
        let mut shutdown = shutdown.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            // The handshake runs in the connection's task, holding its permit: a slow
            // or stalled handshake never holds up the accept loop.
            let accepted = tokio::select! {
                accepted = tls::accept(tls.as_deref(), stream, remote) => accepted,
                _ = shutdown.changed() => None,
            };
            let Some((stream, identity)) = accepted else { return };
            let client =
                api::Connection { remote, permit: Arc::new(permit), sender: Default::default(), identity };
            // hyper's header timeout starts only once the protocol is known: a connection
            // that sends nothing is closed after FIRST_REQUEST_TIMEOUT (`first_bytes`).
            let (stream, spoke) = first_bytes::FirstBytes::new(stream);
            let service = service_fn(move |request| api::serve_port(api.clone(), client.clone(), request));
            // HTTP/1.1 for the HTTP API and the peers, HTTP/2 (with prior knowledge, or
            // ALPN `h2` over TLS) for etcd's gRPC clients, on the one port.
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(MAX_GRPC_STREAMS_PER_CONNECTION)
                .keep_alive_interval(Some(Duration::from_secs(30)));
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let silent = async {
                tokio::time::sleep(FIRST_REQUEST_TIMEOUT).await;
                if spoke.load(std::sync::atomic::Ordering::Relaxed) {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = silent => {}
                _ = shutdown.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), connection).await;
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

async fn accept_admin(
    listener: tokio::net::UnixListener,
    api: Arc<api::Api>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("semaphore never closed"),
            _ = shutdown.changed() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let api = api.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| admin::serve(api.clone(), request));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            let _ = connection.await;
            drop(permit);
        });
    }
}

/// The cluster's id: a hash of its sorted member list, the same on every member.
fn cluster_id(members: &[String]) -> u64 {
    let mut sorted = members.to_vec();
    sorted.sort_by_key(|m| cli::member_order(m));
    let joined = sorted.join(",");
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in joined.bytes() {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn nanos_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Host names in the member list must not change the cluster id of a cluster of IP
    /// addresses: they are hashed in `SocketAddr` order (port 3001 before 10000), as
    /// they always were.
    #[test]
    fn cluster_ids_of_ip_address_members_are_unchanged() {
        let fnv = |text: &str| {
            text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
                (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3)
            })
        };
        let members = vec!["127.0.0.1:10000".to_owned(), "127.0.0.1:3001".to_owned()];
        assert_eq!(cluster_id(&members), fnv("127.0.0.1:3001,127.0.0.1:10000"));
        let named = vec!["b.example:1".to_owned(), "10.0.0.1:1".to_owned(), "a.example:1".to_owned()];
        assert_eq!(cluster_id(&named), fnv("10.0.0.1:1,a.example:1,b.example:1"));
    }
}

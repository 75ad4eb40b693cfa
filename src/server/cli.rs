//! The `mmapd` command line: clap flags, each also read from `MMAPD_<FLAG>`, plus the
//! original Go program's single-dash flags (`-port 3001 -db db.json -log log.json
//! -config config.json`), which keep working as written.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use thiserror::Error;

/// mmapd: a distributed key-value datastore (Raft consensus over memory-mapped files).
#[derive(Parser, Debug, Clone)]
#[command(name = "mmapd", version, about, long_about = None)]
pub struct Args {
    /// TCP port for the HTTP API and peer RPC.
    #[arg(long, env = "MMAPD_PORT", default_value_t = 3001)]
    pub port: u16,

    /// Address (or host name) to bind; also the address advertised to peers and
    /// clients unless --advertise says otherwise. 0.0.0.0 or :: bind every interface.
    #[arg(long, env = "MMAPD_IP", default_value = "127.0.0.1")]
    pub ip: String,

    /// The address (HOST:PORT) this node tells peers and clients, when it binds another
    /// (e.g. --ip 0.0.0.0). It is this node's name in the member list: the one the
    /// other nodes list in --peers. Default: this node's entry in --peers, else IP:PORT.
    #[arg(long, env = "MMAPD_ADVERTISE")]
    pub advertise: Option<String>,

    /// The cluster's members as host:port,... (an entry equal to this node is ignored,
    /// so one list serves every node). Host names are resolved at each connection.
    /// Empty: a one-node cluster.
    #[arg(long, env = "MMAPD_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,

    /// Join an existing cluster through any of these members (HOST:PORT,...): a node
    /// with an empty data directory asks the leader to add it as a learner (it gets a
    /// fresh id), catches up, and is promoted once caught up unless --learner is given.
    /// Once the node has data this is ignored: restarting with the same flags resumes.
    /// It wins over --peers (which the package sets for every instance): the members
    /// come from the cluster.
    #[arg(long, env = "MMAPD_JOIN", value_delimiter = ',')]
    pub join: Vec<String>,

    /// With --join: stay a learner (receives the log, serves stale reads, never votes)
    /// instead of being promoted to voter once caught up.
    #[arg(long, env = "MMAPD_LEARNER")]
    pub learner: bool,

    /// The original's member list: a JSON array of "host:port" strings. Default:
    /// config.json in the working directory, if it exists.
    #[arg(long, env = "MMAPD_CONFIG")]
    pub config: Option<PathBuf>,

    /// Directory holding this node's files. Default: ./mmapd-<port>.
    #[arg(long, env = "MMAPD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// The original's database file name: where the key-value snapshot is kept.
    /// A file in the original's JSON format is refused (see mmapd-admin import).
    #[arg(long, env = "MMAPD_DB")]
    pub db: Option<PathBuf>,

    /// The original's log file name: where the Raft log is kept (segments are named
    /// after it). A file in the original's JSON format is refused.
    #[arg(long, env = "MMAPD_LOG")]
    pub log: Option<PathBuf>,

    /// Unix socket for admin commands (mmapd-admin). Default: <data-dir>/admin.sock.
    #[arg(long, env = "MMAPD_ADMIN_SOCKET")]
    pub admin_socket: Option<PathBuf>,

    /// File holding the cluster secret that every peer request must carry. Without
    /// one, anyone who can reach the port can talk to the cluster as a peer.
    #[arg(long, env = "MMAPD_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,

    /// File of client bearer tokens, one `TOKEN read|write [PREFIX]` a line: with it,
    /// every key route needs `Authorization: Bearer TOKEN`. Reread on SIGHUP. Must not
    /// be readable by others.
    #[arg(long, env = "MMAPD_AUTH_TOKENS")]
    pub auth_tokens: Option<PathBuf>,

    /// This node's certificate chain (PEM, its own certificate first): with --tls-key,
    /// the port serves HTTPS, and plain HTTP on it is answered 400. The certificate must
    /// name (subjectAltName) the host of this node's advertised address.
    #[arg(long, env = "MMAPD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1). Never logged.
    #[arg(long, env = "MMAPD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// The CA (PEM) every member's certificate chains to: peers authenticate each
    /// other with mutual TLS, and a peer's certificate must name the address of the
    /// member it speaks for. Needed with TLS and more than one member.
    #[arg(long, env = "MMAPD_TLS_CA", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,

    /// The CA (PEM) clients' certificates must chain to: with it, a client without
    /// one is refused (403) on every route but /health. Use another CA than --tls-ca.
    #[arg(long, env = "MMAPD_CLIENT_CA", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,

    /// With --tls-cert: take plain HTTP too, and reach peers that do not speak TLS yet
    /// in plain. For turning TLS on in a running cluster: a rolling restart with it,
    /// then one without. Plain peers are authenticated by the cluster secret only.
    #[arg(long, env = "MMAPD_TLS_ACCEPT_PLAIN", requires = "tls_cert")]
    pub tls_accept_plain: bool,

    /// Run with peers off loopback and no cluster secret: anyone who reaches the port
    /// can then act as a peer. Only for a network you trust.
    #[arg(long, env = "MMAPD_INSECURE_PEERS")]
    pub insecure_peers: bool,

    /// Length of one Raft tick, in milliseconds.
    #[arg(long, env = "MMAPD_TICK_MS", default_value_t = 10)]
    pub tick_ms: u64,

    /// Minimum election timeout, in milliseconds (followers wait a random time in [T, 2T)).
    #[arg(long, env = "MMAPD_ELECTION_TIMEOUT_MS", default_value_t = 500)]
    pub election_timeout_ms: u64,

    /// Interval between leader heartbeats, in milliseconds.
    #[arg(long, env = "MMAPD_HEARTBEAT_INTERVAL_MS", default_value_t = 50)]
    pub heartbeat_interval_ms: u64,

    /// How long a request waits for a leader, a quorum or a commit before 503.
    #[arg(long, env = "MMAPD_REQUEST_TIMEOUT_MS", default_value_t = 5000)]
    pub request_timeout_ms: u64,

    /// How long a client may take to send a request body once its headers are in; 408 after.
    #[arg(long, env = "MMAPD_BODY_TIMEOUT_MS", default_value_t = 30_000)]
    pub body_timeout_ms: u64,

    /// Largest key accepted, in bytes after percent-decoding.
    #[arg(long, env = "MMAPD_MAX_KEY_BYTES", default_value_t = 4096)]
    pub max_key_bytes: usize,

    /// Largest value accepted, in bytes.
    #[arg(long, env = "MMAPD_MAX_VALUE_BYTES", default_value_t = 1 << 20)]
    pub max_value_bytes: usize,

    /// Take a snapshot and compact the log after this many applied entries.
    #[arg(long, env = "MMAPD_SNAPSHOT_ENTRIES", default_value_t = 100_000)]
    pub snapshot_entries: u64,

    /// Take a snapshot and compact the log after this many bytes of applied entries,
    /// whatever their count: bounds the log kept in memory.
    #[arg(long, env = "MMAPD_SNAPSHOT_BYTES", default_value_t = 64 << 20)]
    pub snapshot_bytes: u64,

    /// A snapshot goes to a follower in chunks of at most this many bytes (4096 to
    /// 67108864), each its own peer request: a transfer cut short resumes from the
    /// last chunk the follower holds.
    #[arg(long, env = "MMAPD_SNAPSHOT_CHUNK_BYTES", default_value_t = crate::server::peer::snapshot::DEFAULT_CHUNK_BYTES)]
    pub snapshot_chunk_bytes: usize,

    /// The leader compacts the change history (what watches replay) through the log
    /// when it holds more than this many events, back to three quarters of it.
    #[arg(long, env = "MMAPD_HISTORY_ENTRIES", default_value_t = 10_000)]
    pub history_entries: u64,

    /// ... or more than this many bytes of keys and values (and 128 per event).
    #[arg(long, env = "MMAPD_HISTORY_BYTES", default_value_t = 64 << 20)]
    pub history_bytes: u64,

    /// A watch with nothing to say for this long writes a progress line.
    #[arg(long, env = "MMAPD_WATCH_PROGRESS_MS", default_value_t = 5000)]
    pub watch_progress_ms: u64,

    /// Rounds of applied changes to its keys a watcher may fall behind by before it is
    /// ended as slow (a `cancelled` line with the revision to resume from).
    #[arg(long, env = "MMAPD_WATCH_QUEUE_ROUNDS", default_value_t = 1024)]
    pub watch_queue_rounds: usize,
    /// Most bytes of key-value data (keys, values and 96 bytes per key); a write that
    /// would pass it gets 507 `quota`, deletes still work. Default: a quarter of
    /// physical memory (2 GiB if unknown).
    #[arg(long, env = "MMAPD_QUOTA_BYTES")]
    pub quota_bytes: Option<u64>,
}

/// The quota when physical memory cannot be read: etcd's default.
const FALLBACK_QUOTA_BYTES: u64 = 2 << 30;

/// A bad command line or configuration file.
#[derive(Debug, Error)]
pub enum CliError {
    /// The -config file could not be read or parsed.
    #[error("config file {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A member address does not resolve.
    #[error("peer address {address:?}: {reason}")]
    Peer {
        /// The address given.
        address: String,
        /// What went wrong.
        reason: String,
    },
    /// The timings do not fit together.
    #[error("timings: {0}")]
    Timing(String),
    /// The address to bind, or to advertise, cannot be worked out.
    #[error("{0}")]
    Address(String),
    /// Peers off loopback without a cluster secret.
    #[error(
        "members {0} are not on loopback and no cluster secret is set: anyone who reaches the port \
         could act as a peer (one forged AppendEntries makes a follower serve a value no client \
         wrote). Set --cluster-secret-file (e.g. `openssl rand -hex 32` into a file, the same on \
         every node), or mutual TLS (--tls-cert, --tls-key, --tls-ca), or give --insecure-peers on a \
         network you trust"
    )]
    InsecurePeers(String),
    /// The tokens file is unreadable, readable by others, or malformed.
    #[error("--auth-tokens {0}")]
    AuthTokens(String),
    /// A TLS file cannot be used, or the TLS flags do not fit together.
    #[error(transparent)]
    Tls(#[from] crate::server::tls::TlsError),
    /// The TLS flags do not fit the rest of the configuration.
    #[error("{0}")]
    TlsSetup(String),
    /// The cluster secret file is unreadable or empty.
    #[error("cluster secret file {path}: {reason}")]
    Secret {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// Rewrites the original's Go-style flags (`-port 3001`, `-port=3001`) into clap's
/// `--port 3001`. Only names of our long flags are rewritten; anything else passes.
pub fn normalize_legacy_flags(args: impl IntoIterator<Item = String>) -> Vec<String> {
    const LONG: &[&str] = &[
        "port",
        "ip",
        "advertise",
        "join",
        "learner",
        "peers",
        "config",
        "data-dir",
        "db",
        "log",
        "admin-socket",
        "cluster-secret-file",
        "auth-tokens",
        "tls-cert",
        "tls-key",
        "tls-ca",
        "client-ca",
        "tls-accept-plain",
        "insecure-peers",
        "tick-ms",
        "election-timeout-ms",
        "heartbeat-interval-ms",
        "request-timeout-ms",
        "max-key-bytes",
        "max-value-bytes",
        "snapshot-entries",
        "history-entries",
        "history-bytes",
        "watch-progress-ms",
        "watch-queue-rounds",
        "quota-bytes",
        "help",
        "version",
    ];
    args.into_iter()
        .map(|arg| {
            if let Some(rest) = arg.strip_prefix('-') {
                if !rest.starts_with('-') {
                    let name = rest.split('=').next().unwrap_or("");
                    if LONG.contains(&name) {
                        return format!("-{arg}");
                    }
                }
            }
            arg
        })
        .collect()
}

/// The settings the node runs with, resolved from `Args`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to bind.
    pub listen: SocketAddr,
    /// This node's advertised address (`member_address` form): its name in `members`.
    pub advertise: String,
    /// Every member's advertised address (`member_address` form), this node included,
    /// in `member_order`.
    pub members: Vec<String>,
    /// Members to ask to join through (`member_address` form); empty: no join.
    pub join: Vec<String>,
    /// Join as a learner that stays one.
    pub learner: bool,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Snapshot file override (the original's -db).
    pub db_file: Option<PathBuf>,
    /// Log file override (the original's -log).
    pub log_file: Option<PathBuf>,
    /// Admin socket path.
    pub admin_socket: PathBuf,
    /// Cluster secret, if configured.
    pub cluster_secret: Option<Vec<u8>>,
    /// TLS on the port, if configured (`--tls-cert`), loaded and checked.
    pub tls: Option<std::sync::Arc<crate::server::tls::Tls>>,
    /// Client tokens, if configured (`--auth-tokens`), loaded and checked.
    pub auth: Option<std::sync::Arc<crate::server::auth::Auth>>,
    /// Length of a tick.
    pub tick: Duration,
    /// Election timeout in ticks.
    pub election_ticks: u32,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: u32,
    /// Request timeout.
    pub request_timeout: Duration,
    /// Request body timeout.
    pub body_timeout: Duration,
    /// Key size limit.
    pub max_key_bytes: usize,
    /// Value size limit.
    pub max_value_bytes: usize,
    /// Entries between snapshots.
    pub snapshot_entries: u64,
    /// Applied entry bytes between snapshots.
    pub snapshot_bytes: u64,
    /// Largest snapshot chunk sent to a follower.
    pub snapshot_chunk_bytes: usize,
    /// History events above which the leader compacts.
    pub history_entries: u64,
    /// History bytes above which the leader compacts.
    pub history_bytes: u64,
    /// Idle time after which a watch writes a progress line.
    pub watch_progress: Duration,
    /// A watcher's queue, in rounds.
    pub watch_queue_rounds: usize,
    /// The key-value data quota, as `StateMachine::approximate_bytes` counts it.
    pub quota_bytes: u64,
}

impl Args {
    /// Resolves defaults, the -config file and peer addresses.
    pub fn resolve(&self, working_dir: &Path) -> Result<Settings, CliError> {
        let listen = bind_address(&self.ip, self.port)?;
        let mut peer_names = self.peers.iter().filter(|p| !p.trim().is_empty()).cloned().collect::<Vec<_>>();
        let mut join = Vec::new();
        for name in self.join.iter().filter(|p| !p.trim().is_empty()) {
            let address = member_address(name)?;
            if !join.contains(&address) {
                join.push(address);
            }
        }
        if join.is_empty() && self.learner {
            return Err(CliError::Address("--learner needs --join".into()));
        }
        if !join.is_empty() && !peer_names.is_empty() {
            // Under systemd MMAPD_PEERS comes from /etc/default/mmapd for every instance,
            // and MMAPD_JOIN from one instance's own file: the join is what was meant.
            tracing::info!(join = ?join, peers = ?peer_names, "--join is given: --peers is ignored (the members come from the cluster)");
            peer_names.clear();
        }
        if !join.is_empty() && self.advertise.is_none() && listen.ip().is_unspecified() {
            return Err(CliError::Address(format!(
                "--join with --ip {} needs --advertise HOST:PORT: the cluster must be told an address \
                 it can reach this node at",
                self.ip
            )));
        }
        // A joining node's members come from the cluster, never from a config file.
        let config = match &self.config {
            Some(path) => Some(path.clone()),
            None if !join.is_empty() => None,
            None => Some(working_dir.join("config.json")).filter(|p| p.exists()),
        };
        if let Some(path) = config {
            peer_names.extend(read_config_file(&path)?);
        }
        let mut peers = Vec::new();
        for name in peer_names {
            let address = member_address(&name)?;
            if !peers.contains(&address) {
                peers.push(address);
            }
        }
        let (advertise, members) = self.members(listen, peers)?;
        if self.tick_ms == 0 || self.heartbeat_interval_ms < self.tick_ms {
            return Err(CliError::Timing("need 0 < tick-ms <= heartbeat-interval-ms".into()));
        }
        let heartbeat_ticks = (self.heartbeat_interval_ms / self.tick_ms) as u32;
        let election_ticks = (self.election_timeout_ms / self.tick_ms) as u32;
        if election_ticks <= heartbeat_ticks * 2 {
            return Err(CliError::Timing(
                "election-timeout-ms must be more than twice heartbeat-interval-ms".into(),
            ));
        }
        let data_dir =
            self.data_dir.clone().unwrap_or_else(|| working_dir.join(format!("mmapd-{}", self.port)));
        let admin_socket = self.admin_socket.clone().unwrap_or_else(|| data_dir.join("admin.sock"));
        let credentials_dir = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        let cluster_secret = match &self.cluster_secret_file {
            None => None,
            Some(path) => read_secret(path, credentials_dir.as_deref())?,
        };
        let clustered = members.len() > 1 || !join.is_empty();
        // Mutual TLS authenticates peers as the secret does, unless plain peers are
        // taken too (--tls-accept-plain): they are authenticated by nothing else.
        let peers_authenticated =
            cluster_secret.is_some() || (self.tls_ca.is_some() && !self.tls_accept_plain);
        if clustered && !peers_authenticated && !self.insecure_peers {
            let exposed: Vec<&str> =
                members.iter().chain(&join).map(String::as_str).filter(|a| !is_loopback(a)).collect();
            if !exposed.is_empty() {
                return Err(CliError::InsecurePeers(exposed.join(",")));
            }
        }
        let auth = match &self.auth_tokens {
            None => None,
            Some(path) => Some(std::sync::Arc::new(
                crate::server::auth::Auth::load(path).map_err(CliError::AuthTokens)?,
            )),
        };
        let tls = self.tls(clustered, &advertise)?;
        Ok(Settings {
            tls,
            listen,
            advertise,
            members,
            join,
            learner: self.learner,
            data_dir,
            db_file: self.db.clone(),
            log_file: self.log.clone(),
            admin_socket,
            cluster_secret,
            auth,
            tick: Duration::from_millis(self.tick_ms),
            election_ticks,
            heartbeat_ticks,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            body_timeout: Duration::from_millis(self.body_timeout_ms.max(1)),
            max_key_bytes: self.max_key_bytes,
            max_value_bytes: self.max_value_bytes,
            snapshot_entries: self.snapshot_entries.max(1),
            snapshot_bytes: self.snapshot_bytes.max(1),
            snapshot_chunk_bytes: self.snapshot_chunk_bytes.clamp(
                crate::server::peer::snapshot::MIN_CHUNK_BYTES,
                crate::server::peer::snapshot::MAX_CHUNK_BYTES,
            ),
            history_entries: self.history_entries.max(1),
            history_bytes: self.history_bytes.max(1),
            watch_progress: Duration::from_millis(self.watch_progress_ms.max(1)),
            watch_queue_rounds: self.watch_queue_rounds.clamp(1, 1 << 20),
            quota_bytes: self.quota_bytes.unwrap_or_else(default_quota_bytes),
        })
    }
}

impl Args {
    /// Loads the TLS files, if given. A node with peers needs `--tls-ca`, and its own
    /// certificate must name its advertised address (its peers check it).
    fn tls(
        &self,
        clustered: bool,
        advertise: &str,
    ) -> Result<Option<std::sync::Arc<crate::server::tls::Tls>>, CliError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else { return Ok(None) };
        if clustered && self.tls_ca.is_none() {
            return Err(CliError::TlsSetup(
                "with --tls-cert and peers, give --tls-ca: the CA every member's certificate chains to \
                 (peers authenticate each other with mutual TLS)"
                    .into(),
            ));
        }
        let files = crate::server::tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: self.tls_ca.clone(),
            client_ca: self.client_ca.clone(),
            accept_plain: self.tls_accept_plain,
        };
        let tls = crate::server::tls::Tls::load(files, clustered.then_some(advertise))?;
        Ok(Some(std::sync::Arc::new(tls)))
    }
}

fn read_config_file(path: &Path) -> Result<Vec<String>, CliError> {
    let error = |reason: String| CliError::Config { path: path.to_owned(), reason };
    let text = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    serde_json::from_slice::<Vec<String>>(&text)
        .map_err(|e| error(format!("expected a JSON array of \"host:port\" strings: {e}")))
}

/// `--ip` as an IP address (`::1` or `[::1]`), if it is one.
fn ip_literal(ip: &str) -> Option<IpAddr> {
    let ip = ip.trim();
    ip.strip_prefix('[').and_then(|i| i.strip_suffix(']')).unwrap_or(ip).parse().ok()
}

/// The address to bind: `--ip` (an IP address, or a host name resolved now) and `--port`.
fn bind_address(ip: &str, port: u16) -> Result<SocketAddr, CliError> {
    if let Some(ip) = ip_literal(ip) {
        return Ok(SocketAddr::new(ip, port));
    }
    let ip = ip.trim();
    let error = |reason: String| CliError::Address(format!("--ip {ip}: {reason}"));
    let mut addresses = (ip, port).to_socket_addrs().map_err(|e| error(e.to_string()))?;
    addresses.next().ok_or_else(|| error("resolves to no address".into()))
}

/// A member's address in the one spelling its node id is derived from: an IP address
/// and port as `SocketAddr` prints it (so `127.0.0.1:3001` keeps the id it always had),
/// or a host name in lower case and a port. Host names are not resolved here.
pub fn member_address(text: &str) -> Result<String, CliError> {
    let text = text.trim();
    let error = |reason: &str| CliError::Peer { address: text.to_owned(), reason: reason.to_owned() };
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address.to_string());
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(|| error("expected HOST:PORT"))?;
    let port: u16 = port.parse().map_err(|_| error("the port is not a number from 0 to 65535"))?;
    let is_name = |host: &str| {
        !host.is_empty()
            && host.len() <= 253
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
            && !host.starts_with(['-', '.'])
    };
    if !is_name(host) {
        return Err(error("the host is neither an IP address nor a host name"));
    }
    Ok(format!("{}:{port}", host.to_ascii_lowercase()))
}

/// Whether a `member_address` is on loopback: an IP in 127.0.0.0/8 or ::1, or the name
/// `localhost`. Other names count as off loopback (they are resolved only when used).
pub fn is_loopback(address: &str) -> bool {
    match address.parse::<SocketAddr>() {
        Ok(address) => address.ip().is_loopback(),
        Err(_) => address.rsplit_once(':').is_some_and(|(host, _)| host == "localhost"),
    }
}

/// The order members are listed and hashed in: IP addresses first, in `SocketAddr`
/// order (as before host names were accepted, so cluster ids do not change), then
/// host names.
pub fn member_order(address: &str) -> (bool, Option<SocketAddr>, String) {
    match address.parse::<SocketAddr>() {
        Ok(ip) => (false, Some(ip), String::new()),
        Err(_) => (true, None, address.to_owned()),
    }
}

/// Resolves a `member_address` now, for start-up checks only (connections resolve
/// again each time): empty when it does not resolve.
fn resolve_now(address: &str) -> Vec<SocketAddr> {
    address.to_socket_addrs().map(Iterator::collect).unwrap_or_default()
}

/// True when `ip` is an address of this machine (a socket can be bound to it).
fn is_local(ip: IpAddr) -> bool {
    UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

impl Args {
    /// This node's advertised address and the member list, from `--advertise`, the
    /// bind address and `peers` (already in `member_address` form).
    ///
    /// Every node must name a member the same way (its id is a hash of the name), so
    /// this node's own entry in `peers` is its name: found by spelling, or as the one
    /// entry with the advertised port that resolves to the bind address (to an address
    /// of this machine when binding every interface). Without `--advertise`, a node
    /// bound to 0.0.0.0 or :: whose entry cannot be found this way refuses to start:
    /// a name no peer can reach would make a phantom member.
    fn members(&self, listen: SocketAddr, peers: Vec<String>) -> Result<(String, Vec<String>), CliError> {
        let advertise = match &self.advertise {
            Some(text) => Some(member_address(text)?),
            None if listen.ip().is_unspecified() => None,
            // An IP address as `SocketAddr` prints it (`[::1]:3001`); a host name as given.
            None if ip_literal(&self.ip).is_some() => Some(listen.to_string()),
            None => Some(member_address(&format!("{}:{}", self.ip.trim(), self.port))?),
        };
        let port = advertise
            .as_deref()
            .and_then(|a| a.rsplit_once(':'))
            .map_or(self.port.to_string(), |(_, p)| p.to_owned());
        let same_port = |peer: &&String| peer.rsplit_once(':').is_some_and(|(_, p)| p == port);
        let advertise = match advertise {
            Some(advertise) if peers.contains(&advertise) => advertise,
            Some(advertise) => {
                // The node's own entry may be spelled differently (a host name for its IP).
                let targets: Vec<SocketAddr> =
                    if self.advertise.is_some() { resolve_now(&advertise) } else { vec![listen] };
                let spelled: Vec<&String> = peers
                    .iter()
                    .filter(same_port)
                    .filter(|peer| resolve_now(peer).iter().any(|a| targets.contains(a)))
                    .collect();
                match spelled.as_slice() {
                    [] => advertise,
                    [one] if self.advertise.is_none() => (*one).clone(),
                    _ => {
                        let names = spelled.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
                        return Err(CliError::Address(format!(
                            "--peers names this node as {names} but it advertises {advertise}: every \
                             node must list a member under the same name (node ids are derived from \
                             it); use that name in --advertise, or in --peers"
                        )));
                    }
                }
            }
            None if peers.is_empty() => {
                // A one-node cluster: no peer needs to reach it, and its id stays the
                // one it always had.
                let advertise = listen.to_string();
                tracing::warn!(%advertise, "bound to every interface without --advertise: a one-node \
                    cluster that advertises {advertise}; pass --advertise HOST:PORT before adding members");
                advertise
            }
            None => {
                let local: Vec<&String> = peers
                    .iter()
                    .filter(same_port)
                    .filter(|peer| resolve_now(peer).iter().any(|a| is_local(a.ip())))
                    .collect();
                match local.as_slice() {
                    [one] => {
                        tracing::info!(advertise = %one, "bound to every interface: advertising this \
                            node's entry in --peers");
                        (*one).clone()
                    }
                    [] => {
                        return Err(CliError::Address(format!(
                            "--ip {} binds every interface, and no --peers entry with port {port} is an \
                             address of this machine: pass --advertise HOST:PORT, the address the \
                             other nodes list for this node",
                            self.ip.trim()
                        )))
                    }
                    several => {
                        let names = several.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
                        return Err(CliError::Address(format!(
                            "--ip {} binds every interface, and several --peers entries are addresses \
                             of this machine ({names}): pass --advertise HOST:PORT to say which is \
                             this node",
                            self.ip.trim()
                        )));
                    }
                }
            }
        };
        let mut members = peers;
        if !members.contains(&advertise) {
            members.push(advertise.clone());
        }
        members.sort_by_key(|m| member_order(m));
        Ok((advertise, members))
    }
}

/// A quarter of physical memory. The map lives in memory, and a snapshot is a second,
/// serialized copy while it is written, held and sent; the log holds recent values a
/// third time. A quarter leaves room for those and for the rest of the machine.
fn default_quota_bytes() -> u64 {
    use nix::unistd::{sysconf, SysconfVar};
    let pages = sysconf(SysconfVar::_PHYS_PAGES).ok().flatten();
    let page_bytes = sysconf(SysconfVar::PAGE_SIZE).ok().flatten();
    match (pages, page_bytes) {
        (Some(pages), Some(page_bytes)) if pages > 0 && page_bytes > 0 => {
            (pages as u64).saturating_mul(page_bytes as u64) / 4
        }
        _ => FALLBACK_QUOTA_BYTES,
    }
}

/// Reads the cluster secret. An empty file is an error, except a systemd credential
/// (a file in `credentials_dir`, i.e. `$CREDENTIALS_DIRECTORY`): the unit's
/// `SetCredential=` fallback is blank when no secret file exists, and means "no secret".
fn read_secret(path: &Path, credentials_dir: Option<&Path>) -> Result<Option<Vec<u8>>, CliError> {
    let error = |reason: String| CliError::Secret { path: path.to_owned(), reason };
    let bytes = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let secret = bytes.trim_ascii().to_vec();
    if !secret.is_empty() {
        // Peers send it as a header: bytes a header cannot carry would make every peer
        // request fail, and the cluster would never elect a leader.
        if let Some(offset) = secret.iter().position(|&b| !(b == b'\t' || (0x20..=0x7e).contains(&b))) {
            return Err(error(format!(
                "byte {offset} is {:#04x}: the secret is sent as an HTTP header value and may hold \
                 only printable ASCII (e.g. `openssl rand -hex 32`)",
                secret[offset]
            )));
        }
        return Ok(Some(secret));
    }
    if credentials_dir.is_some_and(|dir| path.starts_with(dir)) {
        tracing::warn!(
            path = %path.display(),
            "the cluster-secret credential is blank: running without a cluster secret"
        );
        return Ok(None);
    }
    Err(error("is empty".into()))
}

/// A node's id: a stable hash of its advertised address (`member_address` form), never 0.
pub fn node_id(address: &str) -> u64 {
    // FNV-1a, 64 bits: stable across builds and platforms.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in address.bytes() {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Args {
        let argv =
            normalize_legacy_flags(std::iter::once("mmapd").chain(args.iter().copied()).map(String::from));
        Args::try_parse_from(argv).unwrap()
    }

    #[test]
    fn original_single_dash_flags_keep_working() {
        let args = parse(&["-port", "3002", "-db", "db3002.json", "-log=log3002.json"]);
        assert_eq!(args.port, 3002);
        assert_eq!(args.db, Some(PathBuf::from("db3002.json")));
        assert_eq!(args.log, Some(PathBuf::from("log3002.json")));
    }

    #[test]
    fn defaults_make_a_one_node_cluster_on_3001() {
        let dir = tempfile::tempdir().unwrap();
        let settings = parse(&[]).resolve(dir.path()).unwrap();
        assert_eq!(settings.listen.port(), 3001);
        assert_eq!(settings.advertise, "127.0.0.1:3001");
        assert_eq!(settings.members, vec![settings.advertise.clone()]);
        assert_eq!(settings.data_dir, dir.path().join("mmapd-3001"));
        assert_eq!(settings.admin_socket, dir.path().join("mmapd-3001/admin.sock"));
    }

    #[test]
    fn config_json_in_working_dir_lists_members_and_self_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"["127.0.0.1:3001","127.0.0.1:3002","127.0.0.1:3003"]"#,
        )
        .unwrap();
        let settings = parse(&["-port", "3002"]).resolve(dir.path()).unwrap();
        assert_eq!(settings.members.len(), 3);
    }

    /// Under systemd every instance gets MMAPD_PEERS from /etc/default/mmapd; one that
    /// also has MMAPD_JOIN (in its own file) joins, and --peers does not count.
    #[test]
    fn join_wins_over_peers_and_a_config_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), r#"["127.0.0.1:3001","127.0.0.1:3002"]"#).unwrap();
        let args = ["--port", "3004", "--peers", "127.0.0.1:3001,127.0.0.1:3002", "--join", "127.0.0.1:3001"];
        let settings = parse(&args).resolve(dir.path()).unwrap();
        assert_eq!(settings.join, vec!["127.0.0.1:3001".to_owned()]);
        assert_eq!(settings.members, vec!["127.0.0.1:3004".to_owned()]);
        assert!(parse(&["--learner"]).resolve(dir.path()).is_err(), "--learner without --join");
    }

    #[test]
    fn malformed_config_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{nope").unwrap();
        let error = parse(&[]).resolve(dir.path()).unwrap_err();
        assert!(error.to_string().contains("config.json"), "{error}");
    }

    #[test]
    fn peers_list_dedups_self() {
        let dir = tempfile::tempdir().unwrap();
        let settings =
            parse(&["--peers", "127.0.0.1:3001,127.0.0.1:3002,127.0.0.1:3003"]).resolve(dir.path()).unwrap();
        assert_eq!(settings.members.len(), 3);
    }

    #[test]
    fn blank_secret_file_is_refused_but_blank_systemd_credential_means_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = dir.path().join("credentials");
        std::fs::create_dir(&credentials).unwrap();
        std::fs::write(dir.path().join("secret"), "\n").unwrap();
        std::fs::write(credentials.join("cluster-secret"), "\n").unwrap();
        assert!(read_secret(&dir.path().join("secret"), Some(&credentials)).is_err());
        assert!(read_secret(&dir.path().join("secret"), None).is_err());
        assert_eq!(read_secret(&credentials.join("cluster-secret"), Some(&credentials)).unwrap(), None);
        std::fs::write(credentials.join("cluster-secret"), "s3cret\n").unwrap();
        assert_eq!(
            read_secret(&credentials.join("cluster-secret"), Some(&credentials)).unwrap(),
            Some(b"s3cret".to_vec())
        );
        assert!(read_secret(&credentials.join("absent"), Some(&credentials)).is_err());
    }

    #[test]
    fn a_secret_that_is_not_a_header_value_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        for bad in
            [&b"s3cr\x00et"[..], b"line one\nline two", b"\x7f", "sécret".as_bytes(), &[0xa7, 0x11, 0xfe]]
        {
            std::fs::write(&path, bad).unwrap();
            let error = read_secret(&path, None).unwrap_err().to_string();
            assert!(error.contains(path.to_str().unwrap()) && error.contains("header"), "{bad:?}: {error}");
        }
        std::fs::write(&path, "0123456789abcdef ok\tok\n").unwrap();
        assert_eq!(read_secret(&path, None).unwrap(), Some(b"0123456789abcdef ok\tok".to_vec()));
    }

    #[test]
    fn quota_defaults_to_a_quarter_of_memory_and_the_flag_overrides_it() {
        let dir = tempfile::tempdir().unwrap();
        let default = parse(&[]).resolve(dir.path()).unwrap().quota_bytes;
        assert!(default >= 1 << 20, "{default}");
        assert_eq!(parse(&["--quota-bytes", "4096"]).resolve(dir.path()).unwrap().quota_bytes, 4096);
    }

    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(node_id("127.0.0.1:3001"), node_id("127.0.0.1:3001"));
        assert_ne!(node_id("127.0.0.1:3001"), node_id("127.0.0.1:3002"));
        assert_ne!(node_id("127.0.0.1:3001"), 0);
        // The id an IP address always had: FNV-1a of its `SocketAddr` spelling.
        assert_eq!(node_id("127.0.0.1:3001"), 0x10f1_1e0a_a333_ceec);
    }

    #[test]
    fn member_addresses_keep_ip_spelling_and_accept_host_names() {
        assert_eq!(member_address(" 127.0.0.1:3001 ").unwrap(), "127.0.0.1:3001");
        assert_eq!(member_address("[0:0::1]:3001").unwrap(), "[::1]:3001");
        assert_eq!(member_address("Node-1.Example.com:3001").unwrap(), "node-1.example.com:3001");
        for bad in ["node1", "node1:", ":3001", "node1:99999", "no de:3001", "a\"b:1", "-x:1"] {
            assert!(member_address(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// Without a secret, a forged AppendEntries from anyone who reaches the port makes a
    /// follower serve a value no client wrote: peers off loopback need a secret, or the
    /// operator's explicit --insecure-peers.
    #[test]
    fn peers_off_loopback_without_a_secret_are_refused_unless_insecure_peers_is_given() {
        let dir = tempfile::tempdir().unwrap();
        for peers in ["127.0.0.1:3001,10.0.0.2:3001", "127.0.0.1:3001,db2.example:3001"] {
            let error = parse(&["--peers", peers]).resolve(dir.path()).unwrap_err();
            let text = error.to_string();
            assert!(text.contains("--cluster-secret-file") && text.contains("--insecure-peers"), "{text}");
            assert!(!text.contains("127.0.0.1:3001"), "a loopback member is named: {text}");
            parse(&["--peers", peers, "--insecure-peers"]).resolve(dir.path()).unwrap();
        }
        let error = parse(&["--port", "3005", "--join", "10.0.0.2:3001"]).resolve(dir.path()).unwrap_err();
        assert!(matches!(error, CliError::InsecurePeers(_)), "{error}");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "0123456789abcdef").unwrap();
        let secret = secret.to_str().unwrap();
        parse(&["--peers", "127.0.0.1:3001,10.0.0.2:3001", "--cluster-secret-file", secret])
            .resolve(dir.path())
            .unwrap();
        // Loopback peers, or none, need nothing.
        parse(&["--peers", "127.0.0.1:3001,127.0.0.1:3002,localhost:3003"]).resolve(dir.path()).unwrap();
        parse(&["--ip", "0.0.0.0", "--advertise", "10.0.0.9:3001"]).resolve(dir.path()).unwrap();
    }

    /// Mutual TLS authenticates peers as a secret does, except while plain peers are
    /// taken too (`--tls-accept-plain`): then members off loopback need the secret.
    #[test]
    fn mutual_tls_stands_for_the_secret_except_with_tls_accept_plain() {
        let dir = tempfile::tempdir().unwrap();
        let tls = ["--tls-cert", "/nonexistent/node.pem", "--tls-key", "/nonexistent/node.key"];
        let peers = ["--peers", "127.0.0.1:3001,10.0.0.2:3001"];
        let with_ca: Vec<&str> =
            peers.iter().chain(&tls).copied().chain(["--tls-ca", "/nonexistent/ca.pem"]).collect();
        // Past the peer check: the (missing) certificate is what stops it.
        let error = parse(&with_ca).resolve(dir.path()).unwrap_err();
        assert!(matches!(error, CliError::Tls(_)), "{error}");
        let mut plain_too = with_ca.clone();
        plain_too.push("--tls-accept-plain");
        let error = parse(&plain_too).resolve(dir.path()).unwrap_err();
        assert!(matches!(error, CliError::InsecurePeers(_)), "{error}");
    }

    #[test]
    fn host_names_in_peers_are_kept_as_names_and_not_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let settings =
            parse(&["--insecure-peers", "--peers", "127.0.0.1:3001,db2.invalid:3002,db3.invalid:3003"])
                .resolve(dir.path())
                .unwrap();
        assert_eq!(settings.members, vec!["127.0.0.1:3001", "db2.invalid:3002", "db3.invalid:3003"]);
    }

    #[test]
    fn advertise_names_this_node_when_it_binds_every_interface() {
        let dir = tempfile::tempdir().unwrap();
        let settings = parse(&[
            "--insecure-peers",
            "--ip",
            "0.0.0.0",
            "--advertise",
            "10.1.2.3:3001",
            "--peers",
            "10.1.2.3:3001,10.1.2.4:3001,10.1.2.5:3001",
        ])
        .resolve(dir.path())
        .unwrap();
        assert_eq!(settings.listen, "0.0.0.0:3001".parse().unwrap());
        assert_eq!(settings.advertise, "10.1.2.3:3001");
        assert_eq!(settings.members, vec!["10.1.2.3:3001", "10.1.2.4:3001", "10.1.2.5:3001"]);
        let from_env_name = parse(&["-advertise=10.1.2.3:3001"]);
        assert_eq!(from_env_name.advertise.as_deref(), Some("10.1.2.3:3001"));
    }

    #[test]
    fn binding_every_interface_finds_this_node_in_peers_by_a_local_address() {
        let dir = tempfile::tempdir().unwrap();
        let settings = parse(&[
            "--insecure-peers",
            "--ip",
            "0.0.0.0",
            "--peers",
            "127.0.0.1:3001,198.51.100.1:3001,198.51.100.2:3001",
        ])
        .resolve(dir.path())
        .unwrap();
        assert_eq!(settings.advertise, "127.0.0.1:3001");
        assert_eq!(settings.members.len(), 3, "no phantom 0.0.0.0 member: {:?}", settings.members);
    }

    #[test]
    fn binding_every_interface_without_a_findable_entry_refuses_and_names_advertise() {
        let dir = tempfile::tempdir().unwrap();
        let error = parse(&["--ip", "0.0.0.0", "--peers", "198.51.100.1:3001,198.51.100.2:3001"])
            .resolve(dir.path())
            .unwrap_err();
        assert!(error.to_string().contains("--advertise"), "{error}");
        let error = parse(&["--ip", "0.0.0.0", "--peers", "127.0.0.1:3001,127.0.0.2:3001"])
            .resolve(dir.path())
            .unwrap_err();
        assert!(
            error.to_string().contains("several") && error.to_string().contains("--advertise"),
            "{error}"
        );
    }

    #[test]
    fn an_ipv6_bind_address_is_advertised_as_socket_addr_prints_it() {
        let dir = tempfile::tempdir().unwrap();
        let settings =
            parse(&["--ip", "::1", "--peers", "[::1]:3001,[::1]:3002"]).resolve(dir.path()).unwrap();
        assert_eq!(settings.advertise, "[::1]:3001");
        assert_eq!(settings.members, vec!["[::1]:3001", "[::1]:3002"]);
    }

    #[test]
    fn a_one_node_cluster_on_every_interface_keeps_its_old_name() {
        let dir = tempfile::tempdir().unwrap();
        let settings = parse(&["--ip", "0.0.0.0"]).resolve(dir.path()).unwrap();
        assert_eq!(settings.members, vec!["0.0.0.0:3001"]);
    }

    #[test]
    fn this_nodes_entry_under_a_host_name_is_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let settings = parse(&["--peers", "localhost:3001,localhost:3002"]).resolve(dir.path()).unwrap();
        assert_eq!(settings.advertise, "localhost:3001");
        assert_eq!(settings.members, vec!["localhost:3001", "localhost:3002"]);
        let error = parse(&["--advertise", "127.0.0.1:3001", "--peers", "localhost:3001,localhost:3002"])
            .resolve(dir.path())
            .unwrap_err();
        assert!(error.to_string().contains("same name"), "{error}");
    }
}

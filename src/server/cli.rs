//! The `mmapd` command line: clap flags, each also read from `MMAPD_<FLAG>`, plus the
//! original Go program's single-dash flags (`-port 3001 -db db.json -log log.json
//! -config config.json`), which keep working as written.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
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

    /// Address to bind and to advertise to peers.
    #[arg(long, env = "MMAPD_IP", default_value = "127.0.0.1")]
    pub ip: IpAddr,

    /// The cluster's members as host:port,... (an entry equal to this node is ignored,
    /// so one list serves every node). Empty: a one-node cluster.
    #[arg(long, env = "MMAPD_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,

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
        "peers",
        "config",
        "data-dir",
        "db",
        "log",
        "admin-socket",
        "cluster-secret-file",
        "tick-ms",
        "election-timeout-ms",
        "heartbeat-interval-ms",
        "request-timeout-ms",
        "max-key-bytes",
        "max-value-bytes",
        "snapshot-entries",
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
    /// Address to bind (and advertise).
    pub listen: SocketAddr,
    /// Every member's advertised address, this node included, sorted.
    pub members: Vec<SocketAddr>,
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
    /// The key-value data quota, as `StateMachine::approximate_bytes` counts it.
    pub quota_bytes: u64,
}

impl Args {
    /// Resolves defaults, the -config file and peer addresses.
    pub fn resolve(&self, working_dir: &Path) -> Result<Settings, CliError> {
        let listen = SocketAddr::new(self.ip, self.port);
        let mut peer_names = self.peers.iter().filter(|p| !p.trim().is_empty()).cloned().collect::<Vec<_>>();
        let config = match &self.config {
            Some(path) => Some(path.clone()),
            None => Some(working_dir.join("config.json")).filter(|p| p.exists()),
        };
        if let Some(path) = config {
            peer_names.extend(read_config_file(&path)?);
        }
        let mut members = vec![listen];
        for name in peer_names {
            let address = resolve_peer(&name)?;
            if !members.contains(&address) {
                members.push(address);
            }
        }
        members.sort();
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
        Ok(Settings {
            listen,
            members,
            data_dir,
            db_file: self.db.clone(),
            log_file: self.log.clone(),
            admin_socket,
            cluster_secret,
            tick: Duration::from_millis(self.tick_ms),
            election_ticks,
            heartbeat_ticks,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            body_timeout: Duration::from_millis(self.body_timeout_ms.max(1)),
            max_key_bytes: self.max_key_bytes,
            max_value_bytes: self.max_value_bytes,
            snapshot_entries: self.snapshot_entries.max(1),
            snapshot_bytes: self.snapshot_bytes.max(1),
            quota_bytes: self.quota_bytes.unwrap_or_else(default_quota_bytes),
        })
    }
}

fn read_config_file(path: &Path) -> Result<Vec<String>, CliError> {
    let error = |reason: String| CliError::Config { path: path.to_owned(), reason };
    let text = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    serde_json::from_slice::<Vec<String>>(&text)
        .map_err(|e| error(format!("expected a JSON array of \"host:port\" strings: {e}")))
}

fn resolve_peer(name: &str) -> Result<SocketAddr, CliError> {
    let name = name.trim();
    let error = |reason: String| CliError::Peer { address: name.to_owned(), reason };
    let mut addresses = name.to_socket_addrs().map_err(|e| error(e.to_string()))?;
    addresses.next().ok_or_else(|| error("resolves to no address".into()))
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

/// A node's id: a stable hash of its advertised address, never 0.
pub fn node_id(address: &SocketAddr) -> u64 {
    // FNV-1a, 64 bits: stable across builds and platforms.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in address.to_string().bytes() {
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
        assert_eq!(settings.members, vec![settings.listen]);
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
        let a: SocketAddr = "127.0.0.1:3001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:3002".parse().unwrap();
        assert_eq!(node_id(&a), node_id(&a));
        assert_ne!(node_id(&a), node_id(&b));
        assert_ne!(node_id(&a), 0);
    }
}

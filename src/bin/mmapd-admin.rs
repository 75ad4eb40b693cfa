//! `mmapd-admin`: local administration of an mmapd node over its Unix socket, and the
//! offline tools of backup and recovery. See `mmapd-admin --help` and man mmapd-admin(8).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use hyperlocal::{UnixConnector, Uri};

/// Administer a local mmapd node through its admin socket.
#[derive(Parser, Debug)]
#[command(name = "mmapd-admin", version, about)]
struct Args {
    /// Path of the admin socket.
    #[arg(long, env = "MMAPD_ADMIN_SOCKET", conflicts_with = "port")]
    socket: Option<PathBuf>,
    /// The node's port: means /run/mmapd/PORT/admin.sock (the systemd layout).
    #[arg(long)]
    port: Option<u16>,
    /// Give up after this many seconds without a complete answer (exit status 1). An
    /// import of a large file takes longer than the default: raise it.
    #[arg(long, env = "MMAPD_ADMIN_TIMEOUT", default_value_t = 60)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show the node's role, term, indexes and peers.
    Status {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Force an msync of every mapped file.
    Msync,
    /// Hand leadership to the most up-to-date follower (on the leader).
    StepDown,
    /// Take a snapshot now and compact the log.
    Snapshot,
    /// Load the original mmapd's db.json (a JSON object of strings) through Raft.
    Import {
        /// The db.json file.
        file: PathBuf,
    },
    /// Write a backup of the key-value state and leases at one revision (linearizable:
    /// it holds every write acknowledged before the command started), from any member,
    /// while writes go on; or, with --verify, check a backup file without restoring it.
    Backup {
        /// The backup file (- for standard output, or input with --verify). Written as
        /// FILE.part, synced, then renamed to FILE once checked whole.
        file: PathBuf,
        /// Check FILE instead (offline: no node is asked); print its summary, or the
        /// byte offset of the damage.
        #[arg(long)]
        verify: bool,
    },
    /// Offline (no mmapd running): write a fresh data directory for a new one-node
    /// cluster holding a backup's data, under a new cluster id; start it with
    /// `mmapd --data-dir DIR`, grow it with `mmapd --join`.
    Restore {
        /// The backup file (written by `backup`).
        file: PathBuf,
        /// The data directory to write: missing or empty.
        #[arg(long)]
        data_dir: PathBuf,
        /// The address the new node is recorded at, HOST:PORT: start it so that it
        /// advertises this (mmapd's --advertise, else --ip:--port).
        #[arg(long, default_value = mmapd::recovery::DEFAULT_ADDRESS)]
        advertise: String,
    },
    /// Offline, read only: show what a stopped node's data directory holds: identity,
    /// term, commit index, log and snapshot indexes, configuration and member addresses.
    Inspect {
        /// The data directory (of a stopped node: a running one's is refused).
        #[arg(long)]
        data_dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Offline, one shot, the last resort when a quorum is lost for good: make a
    /// survivor's data directory a one-node cluster under a new cluster id, keeping what
    /// it had committed; start it normally, grow it with `mmapd --join`.
    ForceNewCluster {
        /// The survivor's data directory (the node stopped; choose the most up-to-date
        /// survivor with `inspect`).
        #[arg(long)]
        data_dir: PathBuf,
        /// Record the node at this HOST:PORT instead of the address the cluster recorded
        /// for it.
        #[arg(long)]
        advertise: Option<String>,
    },
    /// Check that every member holds the same key-value state: each hashes its state
    /// at one revision as it applies it (a corruption check, as etcd's HashKV). Exit
    /// status 0: every member agrees; 3: some member disagrees with the others (its
    /// data differs: replace it); 4: the members that answered agree, but some did not
    /// answer; 1: the check could not run.
    Check {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// List, add, promote, remove or update the cluster's members (changes are made by
    /// the leader; a follower forwards them).
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
}

#[derive(Subcommand, Debug)]
enum MemberCommand {
    /// List the members: id, address, role, and the leader's view of each one's match
    /// index and last contact.
    List {
        /// Print the raw JSON (the same as GET /v1/members).
        #[arg(long)]
        json: bool,
    },
    /// Add a learner at HOST:PORT under a fresh id; print the id and the line that
    /// starts the node. It is promoted to voter once caught up, unless --learner.
    Add {
        /// Where the new node will listen (its --advertise address).
        address: String,
        /// Keep it a learner: never promote it automatically.
        #[arg(long)]
        learner: bool,
    },
    /// Make a learner a voter (refused until it has caught up).
    Promote {
        /// The member: its id (16 hex digits) or its address (HOST:PORT).
        member: String,
    },
    /// Remove a member for good (its id is never used again).
    Remove {
        /// The member: its id (16 hex digits) or its address (HOST:PORT).
        member: String,
    },
    /// Record that a member now listens at another address.
    Update {
        /// The member's id (16 hex digits).
        id: String,
        /// Its new address (HOST:PORT).
        address: String,
    },
}

fn main() -> ExitCode {
    // What the tool writes is a node's whole data (a backup, a restored or forced data
    // directory): private to its user, as the daemon's own files are.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let args = Args::parse();
    let socket = socket_path(&args);
    let timeout = Duration::from_secs(args.timeout);
    if let Command::Check { json } = &args.command {
        return check(&socket, *json, timeout);
    }
    let answer = match &args.command {
        Command::Backup { file, verify: true } => verify_backup(file),
        Command::Restore { file, data_dir, advertise } => restore(file, data_dir, advertise),
        Command::ForceNewCluster { data_dir, advertise } => force_new_cluster(data_dir, advertise.as_deref()),
        Command::Inspect { data_dir, json } => mmapd::recovery::inspect(data_dir)
            .map(|inspection| if *json { inspection.to_json().to_string() } else { inspection.to_string() })
            .map_err(|e| e.to_string()),
        command => {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                if let Command::Backup { file, .. } = command {
                    // The whole transfer may take longer than --timeout: it bounds each wait.
                    return backup(&socket, file, timeout).await;
                }
                match tokio::time::timeout(timeout, run(&socket, command)).await {
                    Ok(answer) => answer,
                    Err(_) => Err(no_answer(&socket, timeout)),
                }
            })
        }
    };
    match answer {
        // A backup written to standard output leaves it to the data.
        Ok(output) if matches!(&args.command, Command::Backup { file, .. } if file == Path::new("-")) => {
            eprintln!("{output}");
            ExitCode::SUCCESS
        }
        Ok(output) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("mmapd-admin: {message}");
            ExitCode::from(1)
        }
    }
}

/// `check`: asks the node to run the check, prints every member's hash; the exit
/// status says whether they agree (see the subcommand's help).
fn check(socket: &Path, json: bool, timeout: Duration) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let asked = runtime.block_on(async {
        tokio::time::timeout(timeout, request(socket, Method::POST, "/check", Bytes::new())).await
    });
    let value = match asked {
        Ok(Ok(value)) => value,
        Ok(Err(message)) => {
            eprintln!("mmapd-admin: check: {message}");
            return ExitCode::from(1);
        }
        Err(_) => {
            eprintln!("mmapd-admin: {}", no_answer(socket, timeout));
            return ExitCode::from(1);
        }
    };
    println!("{}", if json { value.to_string() } else { check_report(&value) });
    if !value["disagreeing"].as_array().is_none_or(Vec::is_empty) {
        ExitCode::from(3)
    } else if value["consistent"] == true {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(4)
    }
}

/// The text of a check's answer: a line a member, then the verdict.
fn check_report(value: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let members = value["members"].as_array().cloned().unwrap_or_default();
    let revision = text(&value["revision"]);
    let plural = |n: usize| if n == 1 { "member" } else { "members" };
    let mut out = format!("check: revision {revision}, {} {}\n", members.len(), plural(members.len()));
    for member in &members {
        let (id, address) = (text(&member["id"]), text(&member["address"]));
        match member.get("error") {
            Some(error) => out.push_str(&format!("  {id} {address}  no hash: {}\n", text(error))),
            None => out.push_str(&format!(
                "  {id} {address}  crc32c {}  {} keys  {}{}\n",
                text(&member["crc32c"]),
                text(&member["keys"]),
                mmapd::kv::human_bytes(member["bytes"].as_u64().unwrap_or(0)),
                if member["agrees"] == false { "  DISAGREES" } else { "" },
            )),
        }
    }
    let disagreeing: Vec<String> = value["disagreeing"].as_array().into_iter().flatten().map(text).collect();
    let unanswered = value["unanswered"].as_u64().unwrap_or(0);
    if !disagreeing.is_empty() {
        out.push_str(&format!(
            "check: {} of {} members DISAGREE with the others at revision {revision}: {} (its data \
             differs: replace the member from a healthy one)",
            disagreeing.len(),
            members.len(),
            disagreeing.join(", ")
        ));
    } else if unanswered > 0 {
        out.push_str(&format!(
            "check: the members that answered agree, but {unanswered} of {} did not answer: run it again",
            members.len()
        ));
    } else {
        let crc = members.first().map(|m| text(&m["crc32c"])).unwrap_or_default();
        out.push_str(&format!(
            "check: all {} {} agree at revision {revision} (crc32c {crc})",
            members.len(),
            plural(members.len())
        ));
    }
    out
}

fn no_answer(socket: &Path, timeout: Duration) -> String {
    format!(
        "no answer from {} within {} s (the node may be stuck or busy; see --timeout)",
        socket.display(),
        timeout.as_secs()
    )
}

/// `backup --verify FILE`: the summary line, or one line naming the damage's offset.
fn verify_backup(file: &Path) -> Result<String, String> {
    let summary = if file == Path::new("-") {
        mmapd::kv::verify_backup(&mut std::io::stdin().lock())
    } else {
        let mut input =
            std::fs::File::open(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        mmapd::kv::verify_backup(&mut input)
    };
    let summary = summary.map_err(|error| format!("{}: {error}", file.display()))?;
    Ok(format!("backup: {summary}"))
}

/// `restore FILE --data-dir DIR`: what was made, and how to start it.
fn restore(file: &Path, data_dir: &Path, advertise: &str) -> Result<String, String> {
    let restored = mmapd::recovery::restore(file, data_dir, advertise).map_err(|e| e.to_string())?;
    let (host, port) = restored.address.rsplit_once(':').unwrap_or((&restored.address, ""));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(format!(
        "restored backup: {}\ninto {}: a new one-node cluster {:016x}, node {:016x} at {}\nstart it with:\n  mmapd --ip {host} --port {port} --data-dir {}\nthen grow it with `mmapd --join {}` on each new node",
        restored.backup,
        data_dir.display(),
        restored.cluster_id,
        restored.node_id,
        restored.address,
        data_dir.display(),
        restored.address,
    ))
}

/// `force-new-cluster --data-dir DIR`: what was kept, what was discarded, what it is now.
fn force_new_cluster(data_dir: &Path, advertise: Option<&str>) -> Result<String, String> {
    let forced = mmapd::recovery::force_new_cluster(data_dir, advertise).map_err(|e| e.to_string())?;
    let before = &forced.before;
    let old_cluster = before.identity.map_or(0, |identity| identity.cluster_id);
    let old_members: Vec<String> = before
        .conf
        .voters
        .iter()
        .chain(&before.conf.learners)
        .filter(|&&id| id != forced.node_id)
        .map(|id| format!("{id:016x}"))
        .collect();
    let discarded = match forced.discarded() {
        0 => "discarded: nothing (the log held no entry after it)".to_owned(),
        n => format!(
            "discarded: {n} entries after it (indexes {}..={}), never known committed here",
            forced.kept_index + 1,
            before.last_index
        ),
    };
    let (host, port) = forced.address.rsplit_once(':').unwrap_or((&forced.address, ""));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(format!(
        "forced a new cluster in {}\n\
         kept: the state this node had committed, up to index {}\n\
         {discarded}\n\
         left: cluster {old_cluster:016x}; its other members ({}) are removed and refused\n\
         now: a one-node cluster {:016x}, node {:016x} at {}\n\
         start it as before (e.g. mmapd --ip {host} --port {port} --data-dir {}), then grow it\n\
         with `mmapd --join {}` on new nodes with empty data directories",
        data_dir.display(),
        forced.kept_index,
        if old_members.is_empty() { "none".to_owned() } else { old_members.join(", ") },
        forced.cluster_id,
        forced.node_id,
        forced.address,
        data_dir.display(),
        forced.address,
    ))
}

/// Where a backup goes: standard output, or `FILE.part` renamed to FILE once whole.
enum BackupOutput {
    Stdout(std::io::Stdout),
    File { part: PathBuf, file: std::fs::File },
}

impl BackupOutput {
    fn create(target: &Path) -> Result<BackupOutput, String> {
        if target == Path::new("-") {
            return Ok(BackupOutput::Stdout(std::io::stdout()));
        }
        let mut part = target.as_os_str().to_owned();
        part.push(".part");
        let part = PathBuf::from(part);
        let file =
            std::fs::File::create(&part).map_err(|e| format!("cannot create {}: {e}", part.display()))?;
        Ok(BackupOutput::File { part, file })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        match self {
            BackupOutput::Stdout(out) => {
                out.write_all(bytes).map_err(|e| format!("writing to standard output: {e}"))
            }
            BackupOutput::File { part, file } => {
                file.write_all(bytes).map_err(|e| format!("writing {}: {e}", part.display()))
            }
        }
    }

    /// Makes the checked backup durable under its name.
    fn commit(self, target: &Path) -> Result<(), String> {
        match self {
            BackupOutput::Stdout(mut out) => {
                out.flush().map_err(|e| format!("writing to standard output: {e}"))
            }
            BackupOutput::File { part, file } => {
                file.sync_all().map_err(|e| format!("syncing {}: {e}", part.display()))?;
                drop(file);
                std::fs::rename(&part, target)
                    .map_err(|e| format!("renaming {} to {}: {e}", part.display(), target.display()))?;
                let dir = match target.parent() {
                    Some(dir) if !dir.as_os_str().is_empty() => dir,
                    _ => Path::new("."),
                };
                std::fs::File::open(dir)
                    .and_then(|dir| dir.sync_all())
                    .map_err(|e| format!("syncing {}: {e}", dir.display()))
            }
        }
    }

    /// Removes what a failed backup left.
    fn abandon(self) {
        if let BackupOutput::File { part, file } = self {
            drop(file);
            let _ = std::fs::remove_file(part);
        }
    }
}

/// `backup FILE`: streams `GET /backup` into FILE, checking it as it arrives (the same
/// decoder as `--verify`), so a backup that is cut short or damaged is never left as FILE.
async fn backup(socket: &Path, target: &Path, timeout: Duration) -> Result<String, String> {
    check_socket(socket)?;
    let client: Client<UnixConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(UnixConnector);
    let uri: hyper::Uri = Uri::new(socket, "/backup").into();
    let request = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(timeout, client.request(request))
        .await
        .map_err(|_| no_answer(socket, timeout))?
        .map_err(|error| connect_error(socket, &error))?;
    let status = response.status();
    if !status.is_success() {
        let body = tokio::time::timeout(timeout, response.into_body().collect())
            .await
            .map_err(|_| no_answer(socket, timeout))?
            .map_err(|e| e.to_string())?
            .to_bytes();
        return Err(error_message(status, &body));
    }
    let mut output = BackupOutput::create(target)?;
    let result = receive_backup(socket, response.into_body(), &mut output, timeout).await;
    match result {
        Ok(summary) => {
            output.commit(target)?;
            Ok(format!("backup: {summary}"))
        }
        Err(message) => {
            output.abandon();
            Err(message)
        }
    }
}

async fn receive_backup(
    socket: &Path,
    mut body: hyper::body::Incoming,
    output: &mut BackupOutput,
    timeout: Duration,
) -> Result<mmapd::kv::BackupSummary, String> {
    let mut decoder = mmapd::kv::BackupDecoder::new();
    loop {
        let frame = tokio::time::timeout(timeout, body.frame()).await.map_err(|_| {
            format!(
                "the node at {} sent nothing for {} s (see --timeout)",
                socket.display(),
                timeout.as_secs()
            )
        })?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| format!("the backup stream broke: {e}"))?;
        let Ok(data) = frame.into_data() else { continue };
        decoder
            .feed(&data, &mut |_| {})
            .map_err(|error| format!("the node sent a damaged backup, {error}"))?;
        output.write(&data)?;
    }
    decoder.finish().map_err(|error| format!("the backup stream ended early, {error}"))
}

fn check_socket(socket: &Path) -> Result<(), String> {
    match std::fs::metadata(socket) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("no admin socket at {} (is mmapd running? try --socket or --port)", socket.display()))
        }
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(format!("permission denied on {} (are you root or in the mmapd group?)", socket.display()))
        }
        _ => Ok(()),
    }
}

fn connect_error(socket: &Path, error: &hyper_util::client::legacy::Error) -> String {
    let text = format!("{error:?}");
    if text.contains("PermissionDenied") {
        format!("permission denied on {} (are you root or in the mmapd group?)", socket.display())
    } else if text.contains("ConnectionRefused") {
        format!("nothing listens on {} (is mmapd running?)", socket.display())
    } else {
        format!("cannot reach {}: {error}", socket.display())
    }
}

/// The one-line message of an error answer (`{"error": ...}`).
fn error_message(status: hyper::StatusCode, body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => value["error"].as_str().unwrap_or("request failed").to_owned(),
        Err(_) => format!("unexpected answer ({status}): {}", String::from_utf8_lossy(body)),
    }
}

fn socket_path(args: &Args) -> PathBuf {
    if let Some(socket) = &args.socket {
        return socket.clone();
    }
    if let Some(port) = args.port {
        return PathBuf::from(format!("/run/mmapd/{port}/admin.sock"));
    }
    let systemd = PathBuf::from("/run/mmapd/3001/admin.sock");
    if systemd.exists() {
        systemd
    } else {
        PathBuf::from("mmapd-3001/admin.sock")
    }
}

async fn run(socket: &Path, command: &Command) -> Result<String, String> {
    let (method, path, body) = match command {
        Command::Status { .. } => (Method::GET, "/status", Bytes::new()),
        Command::Msync => (Method::POST, "/msync", Bytes::new()),
        Command::StepDown => (Method::POST, "/step-down", Bytes::new()),
        Command::Snapshot => (Method::POST, "/snapshot", Bytes::new()),
        Command::Import { file } => {
            let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            (Method::POST, "/import", Bytes::from(bytes))
        }
        // Streamed or offline: `main` runs them.
        Command::Backup { .. }
        | Command::Restore { .. }
        | Command::Inspect { .. }
        | Command::ForceNewCluster { .. }
        | Command::Check { .. } => return Err(format!("{command:?} is not a request to a node")),
        Command::Member { command: MemberCommand::List { .. } } => (Method::GET, "/members", Bytes::new()),
        Command::Member { command } => (Method::POST, "/members", member_body(command)),
    };
    let value = request(socket, method, path, body).await?;
    Ok(render(command, &value))
}

async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<serde_json::Value, String> {
    check_socket(socket)?;
    let client: Client<UnixConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(UnixConnector);
    let uri: hyper::Uri = Uri::new(socket, path).into();
    let request =
        Request::builder().method(method).uri(uri).body(Full::new(body)).map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|error| connect_error(socket, &error))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|_| format!("unexpected answer ({status}): {}", String::from_utf8_lossy(&body)))?;
    if !status.is_success() {
        return Err(value["error"].as_str().unwrap_or("request failed").to_owned());
    }
    Ok(value)
}

/// The change body of `POST /members` (see mmapd(8)); the node checks it.
fn member_body(command: &MemberCommand) -> Bytes {
    let body = match command {
        MemberCommand::List { .. } => serde_json::Value::Null,
        MemberCommand::Add { address, learner } => {
            serde_json::json!({ "op": "add", "address": address, "learner": learner })
        }
        MemberCommand::Promote { member } => serde_json::json!({ "op": "promote", "member": member }),
        MemberCommand::Remove { member } => serde_json::json!({ "op": "remove", "member": member }),
        MemberCommand::Update { id, address } => {
            serde_json::json!({ "op": "update", "id": id, "address": address })
        }
    };
    Bytes::from(body.to_string())
}

/// The text of `member` answers.
fn render_member(command: &MemberCommand, value: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    let (id, address) = (text(&value["id"]), text(&value["address"]));
    match command {
        MemberCommand::List { json: true } => value.to_string(),
        MemberCommand::List { json: false } => member_table(value),
        MemberCommand::Add { learner, .. } => {
            let (host, port) = address.rsplit_once(':').unwrap_or((&address, ""));
            let voters: Vec<String> = value["voters"].as_array().into_iter().flatten().map(text).collect();
            // mmapd refuses members off loopback without a secret (or --insecure-peers).
            let off_loopback = voters.iter().chain([&address]).any(|a| !mmapd::server::cli::is_loopback(a));
            format!(
                "added learner {id} at {address}{}\nstart it with:\n  mmapd --ip {host} --port {port} --advertise {address} --join {}{}{}",
                if *learner { "" } else { " (promoted to voter once caught up)" },
                voters.join(","),
                if *learner { " --learner" } else { "" },
                if off_loopback { " --cluster-secret-file FILE\n(FILE: the cluster secret every member has)" } else { "" },
            )
        }
        MemberCommand::Promote { .. } => format!("promoted {id} ({address}) to voter"),
        MemberCommand::Remove { .. } => format!("removed {id} ({address}); its id is never used again"),
        MemberCommand::Update { .. } => format!("member {id} is now at {address}"),
    }
}

/// `member list` as a table: one member a line, the leader marked.
fn member_table(value: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    let leader = &value["leader"];
    let mut rows = vec![[
        "ID".to_owned(),
        "ADDRESS".into(),
        "ROLE".into(),
        "MATCH".into(),
        "LAST CONTACT".into(),
        String::new(),
    ]];
    for member in value["members"].as_array().into_iter().flatten() {
        let contact = match member["last_contact_ms"].as_u64() {
            Some(ms) => format!("{ms} ms ago"),
            None => "-".into(),
        };
        let is_leader = !leader.is_null() && member["id"] == *leader;
        rows.push([
            text(&member["id"]),
            text(&member["address"]),
            text(&member["role"]),
            text(&member["match_index"]),
            contact,
            if is_leader { "leader".into() } else { String::new() },
        ]);
    }
    let widths: Vec<usize> = (0..6).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    let mut out = format!("cluster {}", text(&value["cluster_id"]));
    if leader.is_null() {
        out.push_str(", no leader known");
    }
    for row in &rows {
        let line: Vec<String> =
            row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        out.push('\n');
        out.push_str(line.join("  ").trim_end());
    }
    out
}

fn render(command: &Command, value: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "none".into(),
        other => other.to_string(),
    };
    match command {
        Command::Status { json: true } => value.to_string(),
        Command::Status { json: false } => {
            let mut out = format!(
                "node {} ({})\nstate: {}\nterm: {}\nleader: {}\ncommit index: {}\nlast applied: {}\nlog: {}..{}",
                text(&value["address"]),
                text(&value["node_id"]),
                text(&value["state"]),
                text(&value["term"]),
                text(&value["leader"]),
                text(&value["commit_index"]),
                text(&value["last_applied"]),
                text(&value["first_index"]),
                text(&value["last_index"]),
            );
            for peer in value["peers"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "\npeer {}: match {}, next {}, {}{}",
                    text(&peer["address"]),
                    text(&peer["match_index"]),
                    text(&peer["next_index"]),
                    text(&peer["state"]),
                    if peer["recently_active"] == true { "" } else { ", not recently active" },
                ));
            }
            out
        }
        Command::Msync => format!(
            "msynced {} bytes in {} calls, {:.3} ms",
            text(&value["bytes"]),
            text(&value["msyncs"]),
            value["seconds"].as_f64().unwrap_or(0.0) * 1000.0
        ),
        Command::StepDown => format!("leadership handed to {}", text(&value["new_leader"])),
        Command::Snapshot => {
            format!("snapshot at index {} (term {})", text(&value["index"]), text(&value["term"]))
        }
        Command::Import { .. } => {
            format!("imported {} keys at version {}", text(&value["imported"]), text(&value["version"]))
        }
        Command::Member { command } => render_member(command, value),
        Command::Check { json: false } => check_report(value),
        Command::Check { json: true }
        | Command::Backup { .. }
        | Command::Restore { .. }
        | Command::Inspect { .. }
        | Command::ForceNewCluster { .. } => value.to_string(),
    }
}

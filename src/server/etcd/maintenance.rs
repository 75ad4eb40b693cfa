//! etcd's Maintenance service: Status, Alarm, Snapshot (mmapd's backup), MoveLeader
//! and HashKV; Defragment answers at once (the mapped store has nothing to
//! defragment). Hash (of etcd's whole bolt file) answers `Unimplemented`, naming
//! mmapd's own command for the job.

use tonic::{Request, Response, Status};

use super::kv::{range_at, KeyRange};
use super::proto::etcdserverpb::{
    maintenance_server::Maintenance, AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest,
    DefragmentResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use super::{to_i64, Front};
use crate::server::api::error::ApiError;
use crate::server::auth::{Access, Need};

/// The etcd version mmapd answers as: the API it serves is etcd 3.4's.
pub const ETCD_VERSION: &str = "3.4.0";

#[tonic::async_trait]
impl Maintenance for Front {
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        self.check(&request, &[Need::AnyToken])?;
        let shared = &self.api.node.shared;
        let full = shared.disk_full.lock().expect("disk_full lock").is_some();
        let member = shared.status.lock().expect("status lock").id;
        let alarms = if full {
            vec![AlarmMember { member_id: member, alarm: AlarmType::Nospace as i32 }]
        } else {
            Vec::new()
        };
        Ok(Response::new(AlarmResponse { header: self.header(self.revision()), alarms }))
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        self.check(&request, &[Need::AnyToken])?;
        let shared = &self.api.node.shared;
        let status = shared.status.lock().expect("status lock").clone();
        let db_size = to_i64(self.api.mapped_bytes.load(std::sync::atomic::Ordering::Relaxed));
        let in_use = to_i64(shared.kv.read().expect("kv lock").approximate_bytes());
        let errors = shared.disk_full.lock().expect("disk_full lock").iter().cloned().collect();
        let learner = status.peers.iter().any(|peer| peer.id == status.id && peer.learner);
        Ok(Response::new(StatusResponse {
            header: self.header(self.revision()),
            version: ETCD_VERSION.to_owned(),
            db_size,
            leader: status.leader.unwrap_or(0),
            raft_index: status.commit,
            raft_term: status.term,
            raft_applied_index: status.applied,
            errors,
            db_size_in_use: in_use,
            is_learner: learner,
        }))
    }

    async fn defragment(
        &self,
        request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.check(&request, &[Need::AnyToken])?;
        Ok(Response::new(DefragmentResponse { header: self.header(self.revision()) }))
    }

    async fn hash(&self, _request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(Status::unimplemented(
            "Hash is not served: `mmapd-admin check` compares the members' state hashes",
        ))
    }

    /// The hash of the key-value state at `revision` (0: this node's current one), as
    /// `mmapd-admin check` computes it (`kv::hash`: keys, values and mod revisions):
    /// equal on every member at one revision. Answered from this node's state, as
    /// etcd's is; a past revision is rebuilt from the history.
    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        self.check(&request, &[Need::Prefix(b"", Access::Read)])?;
        let asked = request.get_ref().revision;
        let state = self.api.node.shared.kv.read().expect("kv lock").clone();
        // One pass over every key: off the runtime's threads.
        let hashed = tokio::task::spawn_blocking(move || {
            let hash = if asked <= 0 {
                // Now: `mmapd-admin check`'s hash of the state itself, no copy of its keys.
                crate::kv::hash_state(&state)
            } else {
                let pairs = range_at(&state, &KeyRange::of(b"\0", b"\0"), asked)?;
                let triples =
                    pairs.iter().map(|pair| (&pair.key[..], &pair.value.data[..], pair.value.mod_revision));
                crate::kv::hash_pairs(triples, asked.unsigned_abs())
            };
            Ok::<_, Status>((hash, state.history().compact_revision(), state.revision()))
        })
        .await
        .map_err(|_| Status::internal("the hash task failed"))?;
        let (hash, compacted, current) = hashed?;
        Ok(Response::new(HashKvResponse {
            header: self.header(current),
            hash: hash.crc32c,
            compact_revision: to_i64(compacted),
            hash_revision: to_i64(hash.revision),
        }))
    }

    type SnapshotStream = std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<SnapshotResponse, Status>> + Send + 'static>,
    >;

    /// mmapd's backup (`mmapd-admin backup`'s format, restored with `mmapd-admin
    /// restore`), streamed in its ~1 MiB chunks, in etcd's envelope (`kv::backup`'s
    /// `EnvelopeHasher`); not etcd's bolt file. The size is not known ahead:
    /// `remaining_bytes` is 1 until the last message, which has 0.
    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        // Every key: a token that may read them all.
        self.check(&request, &[Need::Prefix(b"", Access::Read)])?;
        let (revision, chunks) =
            crate::server::backup::start(&self.api).await.map_err(|e| e.grpc_status())?;
        let header = self.header(revision);
        // Look one chunk ahead, to mark the last; after the backup, etcd's envelope
        // (padding and SHA-256: what etcdctl's `snapshot save` checks).
        struct Sending {
            chunks: tokio::sync::mpsc::Receiver<bytes::Bytes>,
            held: Option<bytes::Bytes>,
            hasher: Option<crate::kv::EnvelopeHasher>,
        }
        let start = Sending { chunks, held: None, hasher: Some(Default::default()) };
        let stream = futures_util::stream::unfold(start, move |mut sending| async move {
            let current = match sending.held.take() {
                Some(chunk) => chunk,
                None => sending.chunks.recv().await?,
            };
            let hasher = sending.hasher.as_mut()?;
            hasher.update(&current);
            let mut blob = current.to_vec();
            sending.held = sending.chunks.recv().await;
            if sending.held.is_none() {
                blob.extend_from_slice(&sending.hasher.take()?.finish());
            }
            let message = SnapshotResponse {
                header,
                remaining_bytes: u64::from(sending.held.is_some()),
                blob,
                version: ETCD_VERSION.to_owned(),
            };
            Some((Ok(message), sending))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        // Cluster-wide, as compaction is: a token that may write every key.
        self.check(&request, &[Need::Prefix(b"", Access::Write)])?;
        let to = request.get_ref().target_id;
        self.api.node.move_leader(to).await.map_err(|e| ApiError::from_transfer(e).grpc_status())?;
        Ok(Response::new(MoveLeaderResponse { header: self.header(self.revision()) }))
    }
}

//! etcd's Maintenance service: Status and Alarm; Defragment answers at once (the
//! mapped store has nothing to defragment). Hash, HashKV, Snapshot and MoveLeader
//! answer `Unimplemented`, naming mmapd's own command for the job.

use tonic::{Request, Response, Status};

use super::proto::etcdserverpb::{
    maintenance_server::Maintenance, AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest,
    DefragmentResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use super::{to_i64, Front};
use crate::server::auth::Need;

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

    async fn hash_kv(&self, _request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        Err(Status::unimplemented(
            "HashKV is not served yet: `mmapd-admin check` compares the members' state hashes",
        ))
    }

    type SnapshotStream = std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<SnapshotResponse, Status>> + Send + 'static>,
    >;

    async fn snapshot(
        &self,
        _request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(Status::unimplemented("Snapshot is not served yet: take a backup with `mmapd-admin backup`"))
    }

    async fn move_leader(
        &self,
        _request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(Status::unimplemented(
            "MoveLeader is not served yet: `mmapd-admin step-down` on the leader hands leadership on",
        ))
    }
}

//! etcd's JSON gateway: `POST /v3/kv/range`, `/v3/kv/put`, `/v3/watch`,
//! `/v3/lease/grant`, … (and the same under `/v3beta/`), as etcd 3.4 serves them on its
//! client port for curl and Patroni. Every call is the gRPC front's own: the JSON body
//! becomes the request message (proto3 JSON mapping with etcd's field names: bytes in
//! base64, 64-bit integers as strings or numbers), goes through `etcd::serve` exactly as
//! a gRPC call does (same checks, same handler), and the answer comes back as JSON.
//!
//! - A unary call answers `200` with the response message, or an error status with
//!   `{"error": …, "message": …, "code": <gRPC code>}` (grpc-gateway's form).
//! - A streaming call (`/v3/watch`, `/v3/lease/keepalive`, `/v3/maintenance/snapshot`)
//!   answers `200` and one line per message, `{"result": …}`; an error ends the stream
//!   with `{"error": {"grpc_code": …, "http_code": …, "message": …, "http_status": …}}`.
//!   The request body holds one or more JSON request messages. A watch stays open after
//!   the body ends, until the client goes away (etcd's gateway half-closes and etcd
//!   keeps watching); a keepalive answers its requests and ends.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::proto::etcdserverpb as pb;
use crate::server::api::{Api, Connection};

/// The gateway's path prefixes: etcd 3.4 serves both.
const PREFIXES: [&str; 2] = ["/v3/", "/v3beta/"];
/// How long the request body may take to arrive.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether `request` is for the gateway.
pub fn is_gateway<B>(request: &Request<B>) -> bool {
    let path = request.uri().path();
    PREFIXES.iter().any(|prefix| path.starts_with(prefix))
}

/// How a call's messages flow.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// One request, one response.
    Unary,
    /// One request, a stream of responses (Snapshot).
    ServerStream,
    /// Requests from the body, then the request stream ends (LeaseKeepAlive).
    Bidi,
    /// Requests from the body, then the request stream stays open until the client
    /// goes away (Watch).
    BidiOpen,
}

/// Serves one gateway request; never fails at the HTTP level.
pub async fn serve(
    api: Arc<Api>,
    connection: Connection,
    request: Request<Incoming>,
) -> Result<Response<tonic::body::Body>, Infallible> {
    let path = request.uri().path().to_owned();
    let route = PREFIXES.iter().find_map(|prefix| path.strip_prefix(prefix)).unwrap_or("").to_owned();
    if request.method() != Method::POST {
        api.node.shared.metrics.http_requests.inc();
        let status =
            tonic::Status::unimplemented(format!("the gateway takes POST, not {}", request.method()));
        return Ok(error_response(StatusCode::METHOD_NOT_ALLOWED, &status));
    }
    let call = Call { api, connection, request };
    Ok(match route.as_str() {
        "kv/range" => call.run::<pb::RangeRequest, pb::RangeResponse>("/etcdserverpb.KV/Range", Shape::Unary),
        "kv/put" => call.run::<pb::PutRequest, pb::PutResponse>("/etcdserverpb.KV/Put", Shape::Unary),
        "kv/deleterange" => call.run::<pb::DeleteRangeRequest, pb::DeleteRangeResponse>(
            "/etcdserverpb.KV/DeleteRange",
            Shape::Unary,
        ),
        "kv/txn" => call.run::<pb::TxnRequest, pb::TxnResponse>("/etcdserverpb.KV/Txn", Shape::Unary),
        "kv/compaction" => call
            .run::<pb::CompactionRequest, pb::CompactionResponse>("/etcdserverpb.KV/Compact", Shape::Unary),
        "watch" => {
            call.run::<pb::WatchRequest, pb::WatchResponse>("/etcdserverpb.Watch/Watch", Shape::BidiOpen)
        }
        "lease/grant" => call.run::<pb::LeaseGrantRequest, pb::LeaseGrantResponse>(
            "/etcdserverpb.Lease/LeaseGrant",
            Shape::Unary,
        ),
        "lease/revoke" | "kv/lease/revoke" => call.run::<pb::LeaseRevokeRequest, pb::LeaseRevokeResponse>(
            "/etcdserverpb.Lease/LeaseRevoke",
            Shape::Unary,
        ),
        "lease/keepalive" => call.run::<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>(
            "/etcdserverpb.Lease/LeaseKeepAlive",
            Shape::Bidi,
        ),
        "lease/timetolive" | "kv/lease/timetolive" => call
            .run::<pb::LeaseTimeToLiveRequest, pb::LeaseTimeToLiveResponse>(
                "/etcdserverpb.Lease/LeaseTimeToLive",
                Shape::Unary,
            ),
        "lease/leases" | "kv/lease/leases" => call.run::<pb::LeaseLeasesRequest, pb::LeaseLeasesResponse>(
            "/etcdserverpb.Lease/LeaseLeases",
            Shape::Unary,
        ),
        "cluster/member/add" => call.run::<pb::MemberAddRequest, pb::MemberAddResponse>(
            "/etcdserverpb.Cluster/MemberAdd",
            Shape::Unary,
        ),
        "cluster/member/remove" => call.run::<pb::MemberRemoveRequest, pb::MemberRemoveResponse>(
            "/etcdserverpb.Cluster/MemberRemove",
            Shape::Unary,
        ),
        "cluster/member/update" => call.run::<pb::MemberUpdateRequest, pb::MemberUpdateResponse>(
            "/etcdserverpb.Cluster/MemberUpdate",
            Shape::Unary,
        ),
        "cluster/member/list" => call.run::<pb::MemberListRequest, pb::MemberListResponse>(
            "/etcdserverpb.Cluster/MemberList",
            Shape::Unary,
        ),
        "cluster/member/promote" => call.run::<pb::MemberPromoteRequest, pb::MemberPromoteResponse>(
            "/etcdserverpb.Cluster/MemberPromote",
            Shape::Unary,
        ),
        "maintenance/alarm" => {
            call.run::<pb::AlarmRequest, pb::AlarmResponse>("/etcdserverpb.Maintenance/Alarm", Shape::Unary)
        }
        "maintenance/status" => call
            .run::<pb::StatusRequest, pb::StatusResponse>("/etcdserverpb.Maintenance/Status", Shape::Unary),
        "maintenance/defragment" => call.run::<pb::DefragmentRequest, pb::DefragmentResponse>(
            "/etcdserverpb.Maintenance/Defragment",
            Shape::Unary,
        ),
        // etcd's proto gives Hash and HashKV this one path; its gateway serves HashKV.
        "maintenance/hash" => call
            .run::<pb::HashKvRequest, pb::HashKvResponse>("/etcdserverpb.Maintenance/HashKV", Shape::Unary),
        "maintenance/snapshot" => call.run::<pb::SnapshotRequest, pb::SnapshotResponse>(
            "/etcdserverpb.Maintenance/Snapshot",
            Shape::ServerStream,
        ),
        "maintenance/transfer-leadership" => call.run::<pb::MoveLeaderRequest, pb::MoveLeaderResponse>(
            "/etcdserverpb.Maintenance/MoveLeader",
            Shape::Unary,
        ),
        _ if route.starts_with("auth/") => {
            call.api.node.shared.metrics.http_requests.inc();
            return Ok(error_response(StatusCode::NOT_IMPLEMENTED, &super::auth_unimplemented()));
        }
        _ => {
            call.api.node.shared.metrics.http_requests.inc();
            let status = tonic::Status::not_found(format!("no gateway route {path}"));
            return Ok(error_response(StatusCode::NOT_FOUND, &status));
        }
    }
    .await)
}

/// One gateway request on its way through the gRPC front.
struct Call {
    api: Arc<Api>,
    connection: Connection,
    request: Request<Incoming>,
}

impl Call {
    /// Boxed: each route's future is of its own message types.
    fn run<Req, Resp>(
        self,
        grpc_path: &'static str,
        shape: Shape,
    ) -> futures_util::future::BoxFuture<'static, Response<tonic::body::Body>>
    where
        Req: prost::Message + DeserializeOwned + Default + 'static,
        Resp: prost::Message + Serialize + Default + 'static,
    {
        Box::pin(self.call::<Req, Resp>(grpc_path, shape))
    }

    async fn call<Req, Resp>(self, grpc_path: &'static str, shape: Shape) -> Response<tonic::body::Body>
    where
        Req: prost::Message + DeserializeOwned + Default + 'static,
        Resp: prost::Message + Serialize + Default + 'static,
    {
        let limit = super::max_message_bytes(&self.api).saturating_mul(2);
        let (parts, body) = self.request.into_parts();
        let body = match read_body(body, limit).await {
            Ok(body) => body,
            Err(status) => return error_response(http_status(status.code()), &status),
        };
        let messages = match decode_requests::<Req>(&body, shape) {
            Ok(messages) => messages,
            Err(status) => return error_response(StatusCode::BAD_REQUEST, &status),
        };
        let mut framed = BytesMut::new();
        for message in &messages {
            let encoded = message.encode_to_vec();
            framed.extend_from_slice(&[0]);
            framed.extend_from_slice(&u32::try_from(encoded.len()).unwrap_or(u32::MAX).to_be_bytes());
            framed.extend_from_slice(&encoded);
        }
        let frames = futures_util::stream::iter([Ok::<_, Infallible>(Frame::data(framed.freeze()))]);
        let request_body = if shape == Shape::BidiOpen {
            // Never ends by itself: the watch lives until the client goes away (this
            // response, and with it the call, is dropped).
            tonic::body::Body::new(StreamBody::new(frames.chain(futures_util::stream::pending())))
        } else {
            tonic::body::Body::new(StreamBody::new(frames))
        };
        let mut grpc = Request::builder()
            .method(Method::POST)
            .uri(grpc_path)
            .version(hyper::Version::HTTP_2)
            .header(CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            .body(request_body)
            .expect("a static request");
        if let Some(token) = parts.headers.get(AUTHORIZATION) {
            grpc.headers_mut().insert(AUTHORIZATION, token.clone());
        }
        let Ok(response) = super::serve(self.api, self.connection, grpc).await;
        let (head, body) = response.into_parts();
        if let Some(status) = tonic::Status::from_header_map(&head.headers) {
            if status.code() != tonic::Code::Ok {
                return error_response(http_status(status.code()), &status);
            }
        }
        match shape {
            Shape::Unary => unary_answer::<Resp>(body).await,
            _ => stream_answer::<Resp>(body),
        }
    }
}

/// The request body, whole (bounded in size and time).
async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, tonic::Status> {
    let collect = http_body_util::Limited::new(body, limit).collect();
    match tokio::time::timeout(BODY_TIMEOUT, collect).await {
        Err(_) => Err(tonic::Status::deadline_exceeded("the request body did not arrive in time")),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            Err(tonic::Status::resource_exhausted(format!("the request body is over {limit} bytes")))
        }
        Ok(Err(error)) => Err(tonic::Status::invalid_argument(format!("reading the body: {error}"))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// The request messages of a body: one for a unary or server-streaming call (an empty
/// body is the empty message), one or more for a bidirectional one.
fn decode_requests<Req: DeserializeOwned + Default>(
    body: &[u8],
    shape: Shape,
) -> Result<Vec<Req>, tonic::Status> {
    let bad = |error: serde_json::Error| tonic::Status::invalid_argument(format!("the JSON body: {error}"));
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(vec![Req::default()]);
    }
    match shape {
        Shape::Unary | Shape::ServerStream => Ok(vec![serde_json::from_slice(body).map_err(bad)?]),
        Shape::Bidi | Shape::BidiOpen => {
            let messages: Vec<Req> = serde_json::Deserializer::from_slice(body)
                .into_iter()
                .collect::<Result<_, _>>()
                .map_err(bad)?;
            // Bounded by the body's size; a stream of more is not a gateway's job.
            if messages.len() > 1024 {
                return Err(tonic::Status::invalid_argument(
                    "at most 1024 request messages per gateway call",
                ));
            }
            Ok(messages)
        }
    }
}

/// The gRPC length-prefixed messages of a response body, as its bytes arrive.
#[derive(Default)]
struct Deframer {
    buffer: BytesMut,
}

impl Deframer {
    fn push(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    /// The next whole message, if one has arrived.
    fn next(&mut self) -> Result<Option<Bytes>, tonic::Status> {
        if self.buffer.len() < 5 {
            return Ok(None);
        }
        if self.buffer[0] != 0 {
            return Err(tonic::Status::internal("a compressed gRPC message (the front never compresses)"));
        }
        let length =
            u32::from_be_bytes([self.buffer[1], self.buffer[2], self.buffer[3], self.buffer[4]]) as usize;
        if self.buffer.len() < 5 + length {
            return Ok(None);
        }
        self.buffer.advance(5);
        Ok(Some(self.buffer.split_to(length).freeze()))
    }
}

async fn unary_answer<Resp: prost::Message + Serialize + Default>(
    body: tonic::body::Body,
) -> Response<tonic::body::Body> {
    let collected = match body.collect().await {
        Ok(collected) => collected,
        Err(status) => return error_response(http_status(status.code()), &status),
    };
    if let Some(status) = collected.trailers().and_then(tonic::Status::from_header_map) {
        if status.code() != tonic::Code::Ok {
            return error_response(http_status(status.code()), &status);
        }
    }
    let mut deframer = Deframer::default();
    deframer.push(&collected.to_bytes());
    let message = match deframer.next() {
        Ok(Some(bytes)) => Resp::decode(bytes),
        Ok(None) => Ok(Resp::default()),
        Err(status) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, &status),
    };
    match message {
        Ok(message) => json_response(StatusCode::OK, serde_json::to_vec(&message).unwrap_or_default()),
        Err(error) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &tonic::Status::internal(format!("decoding the front's answer: {error}")),
        ),
    }
}

/// A streaming answer: a line per message, `{"result": …}`, and an `{"error": …}` line
/// if the call ends with one.
fn stream_answer<Resp: prost::Message + Serialize + Default + 'static>(
    body: tonic::body::Body,
) -> Response<tonic::body::Body> {
    let lines = futures_util::stream::unfold(Some((body, Deframer::default())), |state| async move {
        let (mut body, mut deframer) = state?;
        loop {
            match deframer.next() {
                Ok(Some(bytes)) => {
                    let line = match Resp::decode(bytes) {
                        Ok(message) => result_line(&message),
                        Err(error) => error_line(&tonic::Status::internal(format!(
                            "decoding the front's answer: {error}"
                        ))),
                    };
                    return Some((Ok::<_, Infallible>(Frame::data(line)), Some((body, deframer))));
                }
                Ok(None) => {}
                Err(status) => return Some((Ok(Frame::data(error_line(&status))), None)),
            }
            match body.frame().await {
                None => return None,
                Some(Err(status)) => return Some((Ok(Frame::data(error_line(&status))), None)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => deframer.push(&data),
                    Err(frame) => {
                        let status = frame.trailers_ref().and_then(tonic::Status::from_header_map);
                        return match status {
                            Some(status) if status.code() != tonic::Code::Ok => {
                                Some((Ok(Frame::data(error_line(&status))), None))
                            }
                            _ => None,
                        };
                    }
                },
            }
        }
    });
    let mut response = Response::new(tonic::body::Body::new(StreamBody::new(lines)));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn result_line<M: Serialize>(message: &M) -> Bytes {
    let mut line = serde_json::to_vec(&serde_json::json!({ "result": message })).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn error_line(status: &tonic::Status) -> Bytes {
    let http = http_status(status.code());
    let body = serde_json::json!({ "error": {
        "grpc_code": status.code() as i32,
        "http_code": http.as_u16(),
        "message": status.message(),
        "http_status": http.canonical_reason().unwrap_or(""),
    }});
    let mut line = serde_json::to_vec(&body).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn error_response(http: StatusCode, status: &tonic::Status) -> Response<tonic::body::Body> {
    let body = serde_json::json!({
        "error": status.message(),
        "message": status.message(),
        "code": status.code() as i32,
    });
    json_response(http, serde_json::to_vec(&body).unwrap_or_default())
}

fn json_response(http: StatusCode, body: Vec<u8>) -> Response<tonic::body::Body> {
    let mut response = Response::new(tonic::body::Body::new(Full::new(Bytes::from(body))));
    *response.status_mut() = http;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// grpc-gateway's (v1, etcd 3.4's) HTTP status for a gRPC code.
fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code;
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_use_etcd_field_names_base64_bytes_and_string_int64s() {
        let request: pb::RangeRequest =
            serde_json::from_str(r#"{"key": "Zm9v", "range_end": "Zm9w", "limit": "5", "revision": 3}"#)
                .unwrap();
        assert_eq!(
            (&request.key[..], &request.range_end[..], request.limit, request.revision),
            (&b"foo"[..], &b"fop"[..], 5, 3)
        );
        let header = pb::ResponseHeader { cluster_id: 7, member_id: 9, revision: 12, raft_term: 2 };
        let json = serde_json::to_value(header).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"cluster_id": "7", "member_id": "9", "revision": "12", "raft_term": "2"})
        );
        let grant: pb::LeaseGrantRequest = serde_json::from_str(r#"{"TTL": 60, "ID": "0"}"#).unwrap();
        assert_eq!(grant.ttl, 60);
    }

    #[test]
    fn an_empty_body_is_the_empty_message_and_a_bidi_body_holds_several() {
        let one: Vec<pb::StatusRequest> = decode_requests(b" \n", Shape::Unary).unwrap();
        assert_eq!(one.len(), 1);
        let several: Vec<pb::LeaseKeepAliveRequest> =
            decode_requests(br#"{"ID": "1"} {"ID": "2"}"#, Shape::Bidi).unwrap();
        assert_eq!(several.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 2]);
        assert!(decode_requests::<pb::RangeRequest>(b"{\"key\": 5}", Shape::Unary).is_err());
        assert!(decode_requests::<pb::RangeRequest>(b"not json", Shape::Unary).is_err());
    }

    #[test]
    fn messages_are_taken_from_frames_split_anywhere() {
        let mut framed = Vec::new();
        for message in [&b"hello"[..], b"", b"world!"] {
            framed.push(0);
            framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
            framed.extend_from_slice(message);
        }
        for split in 0..framed.len() {
            let mut deframer = Deframer::default();
            let mut got = Vec::new();
            for part in [&framed[..split], &framed[split..]] {
                deframer.push(part);
                while let Some(message) = deframer.next().unwrap() {
                    got.push(message);
                }
            }
            assert_eq!(
                got,
                vec![Bytes::from_static(b"hello"), Bytes::new(), Bytes::from_static(b"world!")],
                "split at {split}"
            );
        }
        let mut compressed = Deframer::default();
        compressed.push(&[1, 0, 0, 0, 0]);
        assert!(compressed.next().is_err());
    }
}

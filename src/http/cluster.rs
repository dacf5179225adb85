//! The cluster's HTTP side (SPEC §10): the `/cluster` management routes,
//! the `/raft` RPC routes other members call, and the helpers the
//! key–value handlers use on a member: writes proposed through the
//! leader (`307` elsewhere), reads behind a read index unless
//! `?consistency=stale`, and the `DodoDB-Revision` header.
//!
//! It only routes: every decision is `raft::Cluster`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::Response;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::{AppState, json};
use crate::db::{PutOptions, Txn, TxnResult, WriteResult, now_ms};
use crate::raft::network::{SnapshotChunk, TARGET_HEADER};
use crate::raft::{Cluster, ClusterError, Command, Member, ReadIndex, Reply};
use crate::store::Precondition;

/// The header every read on a cluster member carries: the revision the
/// answer reflects.
pub(super) static REVISION_HEADER: HeaderName = HeaderName::from_static("dododb-revision");

/// The cluster, or the answer of a server that runs alone.
fn member(state: &AppState) -> Result<&Arc<Cluster>, ApiError> {
    state.cluster.as_ref().ok_or_else(|| {
        ApiError::NotFound(
            "this server runs alone; start it with --node-id to make it a cluster member".into(),
        )
    })
}

/// A cluster failure as an answer; `uri` is what a redirect points to on
/// the leader.
pub(super) fn cluster_error(e: ClusterError, uri: &Uri) -> ApiError {
    match e {
        ClusterError::NotLeader { leader_url } => {
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            ApiError::NotLeader(format!("{}{path}", leader_url.trim_end_matches('/')))
        }
        ClusterError::NoLeader => ApiError::Unavailable("the cluster has no leader yet".into()),
        ClusterError::Invalid(m) => ApiError::InvalidRequest(m),
        ClusterError::Unavailable(m) => ApiError::Unavailable(m),
        ClusterError::Db(e) => e.into(),
    }
}

/// Proposes a write and maps its reply's failures to the SPEC's errors.
pub(super) async fn propose(
    cluster: &Cluster,
    command: Command,
    uri: &Uri,
) -> Result<Reply, ApiError> {
    match cluster.write(command).await {
        Ok(Reply::NotFound) => Err(ApiError::NotFound("key not found".into())),
        Ok(Reply::PreconditionFailed { current }) => {
            Err(crate::db::DbError::PreconditionFailed { current }.into())
        }
        Ok(reply) => Ok(reply),
        Err(e) => Err(cluster_error(e, uri)),
    }
}

/// Whether a read asked for `?consistency=stale`.
///
/// # Errors
///
/// Any other value than `stale` or `linearizable`.
fn is_stale(uri: &Uri) -> Result<bool, ApiError> {
    let Some(query) = uri.query() else {
        return Ok(false);
    };
    for pair in query.split('&') {
        if let Some(value) = pair.strip_prefix("consistency=") {
            return match value {
                "stale" => Ok(true),
                "linearizable" => Ok(false),
                other => Err(ApiError::InvalidRequest(format!(
                    "consistency must be linearizable or stale; got {other:?}"
                ))),
            };
        }
    }
    Ok(false)
}

/// Checks a read's `consistency` on a server that runs alone, where every
/// read is both linearizable and stale.
///
/// # Errors
///
/// `invalid_request` for a value other than `linearizable` or `stale`.
pub(super) fn check_consistency(uri: &Uri) -> Result<(), ApiError> {
    is_stale(uri).map(drop)
}

/// Before a read on a cluster member: waits for the read index unless the
/// read is stale. On a server that runs alone it only checks
/// `consistency` ([`check_consistency`]).
///
/// # Errors
///
/// `invalid_request` for a `consistency` other than `linearizable` or
/// `stale` (on any server); what the cluster answers otherwise.
pub(super) async fn before_read(state: &AppState, uri: &Uri) -> Result<(), ApiError> {
    let stale = is_stale(uri)?;
    let Some(cluster) = &state.cluster else {
        return Ok(());
    };
    if !stale {
        cluster
            .read_barrier()
            .await
            .map_err(|e| cluster_error(e, uri))?;
    }
    Ok(())
}

/// Adds `DodoDB-Revision` to a read's answer on a cluster member.
pub(super) fn mark_revision(state: &AppState, response: &mut Response) {
    if state.cluster.is_some() {
        response.headers_mut().insert(
            REVISION_HEADER.clone(),
            HeaderValue::from(state.db.revision()),
        );
    }
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidRequest(format!("bad request body: {e}")))
}

fn check_url(url: &str) -> Result<(), ApiError> {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() > "https://".len()
        && reqwest::Url::parse(url).is_ok();
    if ok {
        Ok(())
    } else {
        Err(ApiError::InvalidRequest(format!(
            "a member's url must be an absolute http(s) URL; got {url:?}"
        )))
    }
}

fn check_member(id: u64, member: &Member) -> Result<(), ApiError> {
    if id == 0 {
        return Err(ApiError::InvalidRequest(
            "node ids are positive integers".into(),
        ));
    }
    check_url(&member.url)?;
    if let Some(raft) = &member.raft_url {
        check_url(raft)?;
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InitBody {
    members: BTreeMap<String, Member>,
}

pub(super) async fn init(
    State(state): State<AppState>,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ApiError> {
    let cluster = member(&state)?;
    let body: InitBody = parse(&body)?;
    let mut members = BTreeMap::new();
    for (id, m) in body.members {
        let id: u64 = id.parse().map_err(|_| {
            ApiError::InvalidRequest(format!("member ids are positive integers; got {id:?}"))
        })?;
        check_member(id, &m)?;
        members.insert(id, m);
    }
    if members.is_empty() {
        return Err(ApiError::InvalidRequest("members must not be empty".into()));
    }
    cluster
        .init(members)
        .await
        .map_err(|e| cluster_error(e, &uri))?;
    Ok(json(StatusCode::OK, &cluster.status()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LearnerBody {
    id: u64,
    url: String,
    #[serde(default)]
    raft_url: Option<String>,
}

pub(super) async fn learners(
    State(state): State<AppState>,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ApiError> {
    let cluster = member(&state)?;
    let body: LearnerBody = parse(&body)?;
    let m = Member {
        url: body.url,
        raft_url: body.raft_url,
    };
    check_member(body.id, &m)?;
    cluster
        .add_learner(body.id, m)
        .await
        .map_err(|e| cluster_error(e, &uri))?;
    Ok(json(StatusCode::OK, &cluster.status()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MembersBody {
    voters: BTreeSet<u64>,
}

pub(super) async fn members(
    State(state): State<AppState>,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ApiError> {
    let cluster = member(&state)?;
    let body: MembersBody = parse(&body)?;
    cluster
        .change_voters(body.voters)
        .await
        .map_err(|e| cluster_error(e, &uri))?;
    Ok(json(StatusCode::OK, &cluster.status()))
}

pub(super) async fn status(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(json(StatusCode::OK, &member(&state)?.status()))
}

/// Refuses a Raft call meant for another node id (a member started with
/// the wrong `--node-id`, or a URL reused by another node).
fn check_target(cluster: &Cluster, headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(TARGET_HEADER).map(HeaderValue::to_str) {
        None => Ok(()),
        Some(Ok(id)) if id == cluster.node_id().to_string() => Ok(()),
        Some(other) => Err(ApiError::InvalidRequest(format!(
            "this is node {}, not node {}",
            cluster.node_id(),
            other.unwrap_or("?")
        ))),
    }
}

/// The member a Raft call is for, after checking it is meant for it.
fn rpc_target<'a>(state: &'a AppState, headers: &HeaderMap) -> Result<&'a Arc<Cluster>, ApiError> {
    let cluster = member(state)?;
    check_target(cluster, headers)?;
    Ok(cluster)
}

/// The answer of a Raft RPC: openraft's own `Result`, as JSON.
fn rpc_answer<T: Serialize, E: Serialize>(result: &Result<T, E>) -> Response {
    json(StatusCode::OK, result)
}

pub(super) async fn raft_append(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let raft = rpc_target(&state, &headers)?.raft();
    Ok(rpc_answer(&raft.append_entries(parse(&body)?).await))
}

pub(super) async fn raft_vote(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let raft = rpc_target(&state, &headers)?.raft();
    Ok(rpc_answer(&raft.vote(parse(&body)?).await))
}

pub(super) async fn raft_snapshot(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let raft = rpc_target(&state, &headers)?.raft();
    let chunk: SnapshotChunk = parse(&body)?;
    let request = chunk.into_request().map_err(ApiError::InvalidRequest)?;
    Ok(rpc_answer(&raft.install_snapshot(request).await))
}

pub(super) async fn raft_read_index(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let cluster = rpc_target(&state, &headers)?;
    let index = cluster
        .read_index()
        .await
        .map_err(|e| cluster_error(e, &uri))?;
    Ok(json(StatusCode::OK, &ReadIndex { index }))
}

/// An answer the state machine should never give to this command.
fn unexpected(reply: &Reply) -> ApiError {
    ApiError::Internal(format!(
        "unexpected reply from the state machine: {reply:?}"
    ))
}

/// `PUT /kv/{key}` on a cluster member: checked here, decided when the
/// entry is applied.
pub(super) async fn put(
    state: &AppState,
    cluster: &Cluster,
    uri: &Uri,
    key: &str,
    value: &[u8],
    options: PutOptions,
) -> Result<WriteResult, ApiError> {
    let at_ms = now_ms();
    let (value, expires_at_ms) = state.db.prepare_put(key, value, options.ttl, at_ms)?;
    let command = Command::Put {
        key: key.to_string(),
        // Validated JSON, hence UTF-8.
        value: String::from_utf8_lossy(&value).into_owned(),
        expires_at_ms,
        condition: options.precondition.unwrap_or(Precondition::None).into(),
        at_ms,
    };
    match propose(cluster, command, uri).await? {
        Reply::Written { version, created } => Ok(WriteResult { version, created }),
        other => Err(unexpected(&other)),
    }
}

/// `DELETE /kv/{key}` on a cluster member; returns the delete's revision.
pub(super) async fn delete(
    state: &AppState,
    cluster: &Cluster,
    uri: &Uri,
    key: &str,
    precondition: Option<Precondition>,
) -> Result<u64, ApiError> {
    state.db.check_key(key)?;
    let command = Command::Delete {
        key: key.to_string(),
        condition: precondition.unwrap_or(Precondition::None).into(),
        at_ms: now_ms(),
    };
    match propose(cluster, command, uri).await? {
        Reply::Deleted { version } => Ok(version),
        other => Err(unexpected(&other)),
    }
}

/// `POST /txn` on a cluster member: checked here, then one log entry whose
/// compares are decided when it is applied.
pub(super) async fn txn(
    state: &AppState,
    cluster: &Cluster,
    uri: &Uri,
    txn: Txn,
) -> Result<TxnResult, ApiError> {
    let at_ms = now_ms();
    let checked = state.db.prepare_txn(txn, at_ms)?;
    let command = Command::Txn {
        txn: checked.into(),
        at_ms,
    };
    match propose(cluster, command, uri).await? {
        Reply::Txn(reply) => Ok(reply.into()),
        other => Err(unexpected(&other)),
    }
}

/// `POST /kv/clear` on a cluster member; returns how many keys went.
pub(super) async fn clear(
    cluster: &Cluster,
    uri: &Uri,
    prefix: Option<&str>,
) -> Result<usize, ApiError> {
    let command = Command::Clear {
        prefix: prefix.unwrap_or("").to_string(),
        at_ms: now_ms(),
    };
    match propose(cluster, command, uri).await? {
        Reply::Cleared { n } => Ok(n),
        other => Err(unexpected(&other)),
    }
}

/// A subscription change on a cluster member must reach the leader: a
/// follower redirects it there before doing anything.
pub(super) fn ensure_leader(state: &AppState, uri: &Uri) -> Result<(), ApiError> {
    let Some(cluster) = &state.cluster else {
        return Ok(());
    };
    match cluster.leader() {
        Some((id, _)) if id == cluster.node_id() => Ok(()),
        Some((_, leader)) => Err(cluster_error(
            ClusterError::NotLeader {
                leader_url: leader.url,
            },
            uri,
        )),
        None => Err(cluster_error(ClusterError::NoLeader, uri)),
    }
}

//! Raft RPC between members over HTTP: each call is a `POST` of JSON to
//! `/raft/{append,vote,snapshot}` on the target's Raft URL, with the
//! cluster's bearer token and the id the caller believes the target has
//! (a member refuses calls meant for another id). Snapshot chunks travel
//! as base64 inside the JSON.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{SnapshotMeta, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::types::{Member, TypeConfig};
use crate::config::AuthToken;

/// The header naming the node id a Raft call is meant for.
pub const TARGET_HEADER: &str = "dododb-raft-target";

/// One chunk of a snapshot on the wire.
#[derive(Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The sender's vote.
    pub vote: Vote<u64>,
    /// The snapshot's metadata.
    pub meta: SnapshotMeta<u64, Member>,
    /// Where this chunk starts in the file.
    pub offset: u64,
    /// The chunk, base64.
    pub data: String,
    /// Whether it is the last one.
    pub done: bool,
}

impl SnapshotChunk {
    /// The request openraft expects from this chunk.
    ///
    /// # Errors
    ///
    /// The data is not base64.
    pub fn into_request(self) -> Result<InstallSnapshotRequest<TypeConfig>, String> {
        let data = STANDARD
            .decode(self.data.as_bytes())
            .map_err(|e| format!("snapshot chunk is not base64: {e}"))?;
        Ok(InstallSnapshotRequest {
            vote: self.vote,
            meta: self.meta,
            offset: self.offset,
            data,
            done: self.done,
        })
    }
}

/// Builds a connection per target; they share one HTTP client.
#[derive(Clone)]
pub struct Network {
    client: reqwest::Client,
    token: Option<AuthToken>,
}

impl Network {
    /// A network that sends `token` (if any) with every call, from
    /// `local_ip` when given (the member's own listen address, so that
    /// other members and proxies between them see who calls).
    ///
    /// # Errors
    ///
    /// The HTTP client cannot be built.
    pub fn new(token: Option<AuthToken>, local_ip: Option<IpAddr>) -> Result<Network, String> {
        let client = reqwest::Client::builder()
            .local_address(local_ip)
            .no_proxy()
            .connect_timeout(Duration::from_secs(1))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot build the Raft HTTP client: {e}"))?;
        Ok(Network { client, token })
    }

    /// The shared HTTP client (also for read-index calls to the leader).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The bearer header value, if the cluster has a token.
    pub fn bearer(&self) -> Option<String> {
        self.token
            .as_ref()
            .map(|t| format!("Bearer {}", t.expose()))
    }
}

/// A connection to one member.
pub struct Connection {
    network: Network,
    target: u64,
    member: Member,
}

impl Connection {
    async fn call<Req: Serialize, Resp: DeserializeOwned, E>(
        &self,
        route: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<u64, Member, E>>
    where
        E: std::error::Error + DeserializeOwned,
    {
        let url = format!(
            "{}/raft/{route}",
            self.member.raft_base().trim_end_matches('/')
        );
        let body =
            serde_json::to_vec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut builder = self
            .network
            .client
            .post(&url)
            .timeout(timeout)
            .header(TARGET_HEADER, self.target.to_string())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(bearer) = self.network.bearer() {
            builder = builder.header(reqwest::header::AUTHORIZATION, bearer);
        }
        let response = builder.send().await.map_err(|e| {
            if e.is_connect() {
                RPCError::Unreachable(Unreachable::new(&e))
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if !status.is_success() {
            let why = std::io::Error::other(format!(
                "{url} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            ));
            return Err(RPCError::Network(NetworkError::new(&why)));
        }
        let result: Result<Resp, E> =
            serde_json::from_slice(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, node: &Member) -> Connection {
        Connection {
            network: self.clone(),
            target,
            member: node.clone(),
        }
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        let entries = rpc.entries.len();
        let started = std::time::Instant::now();
        let result = self.call("append", &rpc, option.hard_ttl()).await;
        if entries > 0 {
            tracing::debug!(
                target: "dododb::raft::timing",
                to = self.target,
                entries,
                rtt_us = started.elapsed().as_micros() as u64,
                "append entries call"
            );
        }
        result
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, Member, RaftError<u64, InstallSnapshotError>>,
    > {
        let chunk = SnapshotChunk {
            vote: rpc.vote,
            meta: rpc.meta,
            offset: rpc.offset,
            data: STANDARD.encode(&rpc.data),
            done: rpc.done,
        };
        self.call("snapshot", &chunk, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        self.call("vote", &rpc, option.hard_ttl()).await
    }
}

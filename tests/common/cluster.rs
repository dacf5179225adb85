//! Real cluster members for the cluster tests: `dododb serve --node-id N`
//! processes on loopback, each with its own data directory, that a test
//! can `kill -9` and restart on the same port, plus a blocking HTTP client
//! that does not follow redirects (tests look at the 307s themselves).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, Response};
use serde_json::{Value, json};

use super::TestServer;

/// A blocking client with no proxy, no redirects and a short timeout.
pub fn http() -> Client {
    http_waiting(10)
}

/// A client like [`http`] that waits up to `secs` for an answer (a hang
/// guard for long requests such as an import on a loaded machine).
pub fn http_waiting(secs: u64) -> Client {
    Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(secs))
        .build()
        .expect("client")
}

/// The entries of the export of the member at `url` (key, version and
/// value), sorted: its data, without the header and trailer, which carry
/// times and sizes.
pub fn exported_entries(url: &str) -> Vec<String> {
    let text = http()
        .get(format!("{url}/system/export"))
        .send()
        .expect("export")
        .text()
        .expect("text");
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("{\"key\""))
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// `GET url`, again while it answers 503 (no leader for a moment, during
/// an election), for up to 20 s; any other answer is returned.
pub fn read(url: &str) -> Response {
    eventually(Duration::from_secs(20), "an answer other than 503", || {
        http().get(url).send().ok().filter(|r| r.status() != 503)
    })
}

/// Heartbeats every 100 ms, elections after 500–1000 ms, and a snapshot
/// every 100 applied writes, so a member that misses a few hundred writes
/// can only catch up by a snapshot install.
pub const SNAPSHOT_EVERY_100: [&str; 6] = [
    "--raft-heartbeat-ms",
    "100",
    "--raft-election-ms",
    "500",
    "--raft-snapshot-logs",
    "100",
];

/// The `Location` header of an answer, if it has a readable one.
pub fn location(response: &Response) -> Option<&str> {
    response.headers().get("location")?.to_str().ok()
}

/// The index in `urls` of the member a `307` answer points to.
pub fn redirect_target(response: &Response, urls: &[String]) -> Option<usize> {
    let location = location(response)?;
    urls.iter().position(|u| location.starts_with(u.as_str()))
}

/// Polls `check` until it returns `Some` or `within` passes.
pub fn eventually<T>(within: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One member: its process (none while killed) and where it lives.
pub struct Node {
    /// The node id.
    pub id: u64,
    /// `host:port` of its HTTP listener (kept across restarts).
    pub addr: String,
    /// Its data directory.
    pub dir: PathBuf,
    /// Extra flags it runs with (besides listen, data dir and node id).
    pub args: Vec<String>,
    /// The running process.
    pub server: Option<TestServer>,
}

impl Node {
    /// Its client URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `url` + `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url())
    }

    fn flags(&self) -> Vec<String> {
        let mut flags = vec!["--node-id".to_string(), self.id.to_string()];
        flags.extend(self.args.iter().cloned());
        flags
    }

    /// `GET /cluster/status`, if it answers.
    pub fn status(&self) -> Option<Value> {
        let response = http().get(self.at("/cluster/status")).send().ok()?;
        response
            .status()
            .is_success()
            .then(|| response.json().ok())?
    }

    /// The index this member has applied, per `/cluster/status`; `None`
    /// while it does not answer.
    pub fn applied(&self) -> Option<u64> {
        self.status()?["applied"].as_u64()
    }

    /// Waits (up to `within`, a hang guard) until this member applied
    /// `upto`.
    pub fn wait_applied(&self, upto: u64, within: Duration) {
        let what = format!("member {} applying {upto}", self.id);
        eventually(within, &what, || (self.applied()? >= upto).then_some(()));
    }

    /// Kills the process with SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop(super::Stop::Kill9);
        }
    }

    /// Starts it again on the same port and data directory.
    pub fn restart(&mut self) {
        assert!(self.server.is_none(), "node {} is running", self.id);
        let flags = self.flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        self.server = Some(TestServer::start_at(&self.dir, &self.addr, &flags));
    }

    /// What it wrote to stderr (empty while killed).
    pub fn log(&self) -> String {
        self.server
            .as_ref()
            .map(TestServer::log)
            .unwrap_or_default()
    }
}

/// A set of members started together (not yet a group until `init`).
pub struct TestCluster {
    /// The members, `nodes[i].id == i + 1`.
    pub nodes: Vec<Node>,
    _tmp: tempfile::TempDir,
}

impl TestCluster {
    /// Starts `n` members on 127.0.0.1 with `args` each; `raft_url(i)`
    /// may give node `i + 1` a Raft URL of its own (a proxy).
    pub fn start(n: u64, args: &[&str]) -> TestCluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let nodes = (1..=n)
            .map(|id| TestCluster::start_node(tmp.path(), id, "127.0.0.1", args))
            .collect();
        TestCluster { nodes, _tmp: tmp }
    }

    /// Starts `n` members, node `i` listening on 127.0.0.`i` (so that
    /// its Raft calls leave from that address).
    pub fn start_on_own_ips(n: u64, args: &[&str]) -> TestCluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let nodes = (1..=n)
            .map(|id| TestCluster::start_node(tmp.path(), id, &format!("127.0.0.{id}"), args))
            .collect();
        TestCluster { nodes, _tmp: tmp }
    }

    fn start_node(root: &std::path::Path, id: u64, ip: &str, args: &[&str]) -> Node {
        let dir = root.join(format!("node{id}"));
        let mut node = Node {
            id,
            addr: String::new(),
            dir,
            args: args.iter().map(|a| a.to_string()).collect(),
            server: None,
        };
        let flags = node.flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let server = TestServer::start_at(&node.dir, &format!("{ip}:0"), &flags);
        node.addr = server.addr().to_string();
        node.server = Some(server);
        node
    }

    /// Adds one more (uninitialized) member with the next id.
    pub fn add_node(&mut self, args: &[&str]) -> &Node {
        let id = self.nodes.len() as u64 + 1;
        let node = TestCluster::start_node(self._tmp.path(), id, "127.0.0.1", args);
        self.nodes.push(node);
        self.nodes.last().expect("just pushed")
    }

    /// The `members` object of `/cluster/init` for every node, with each
    /// node's Raft URL from `raft_url` when it gives one.
    pub fn members(&self, raft_url: impl Fn(&Node) -> Option<String>) -> Value {
        let mut members = serde_json::Map::new();
        for node in &self.nodes {
            let mut member = json!({ "url": node.url() });
            if let Some(raft) = raft_url(node) {
                member["raft_url"] = json!(raft);
            }
            members.insert(node.id.to_string(), member);
        }
        json!({ "members": members })
    }

    /// `POST /cluster/init` on node 1 with every node; returns the answer.
    pub fn init(&self) -> Response {
        self.init_with(&self.members(|_| None))
    }

    /// `POST /cluster/init` on node 1 with `body`.
    pub fn init_with(&self, body: &Value) -> Response {
        http()
            .post(self.nodes[0].at("/cluster/init"))
            .json(body)
            .send()
            .expect("POST /cluster/init")
    }

    /// The index of the node that leads, one of `among`, as every node of
    /// `among` agrees, waiting up to `within`.
    pub fn leader_among(&self, among: &[usize], within: Duration) -> usize {
        eventually(within, "one leader that the others follow", || {
            let mut leader = None;
            for &i in among {
                let status = self.nodes[i].status()?;
                let id = status["leader_id"].as_u64()?;
                if leader.is_some_and(|l| l != id) {
                    return None;
                }
                leader = Some(id);
            }
            let index = usize::try_from(leader? - 1).ok()?;
            if !among.contains(&index) {
                return None;
            }
            let status = self.nodes[index].status()?;
            (status["role"] == "leader").then_some(index)
        })
    }

    /// The leader among every node.
    pub fn leader(&self) -> usize {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.leader_among(&all, Duration::from_secs(20))
    }
}

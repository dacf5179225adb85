//! The web console at `/ui` in a real headless Chromium, driven over
//! WebDriver (chromedriver) with fantoccini, against the real server binary.
//!
//! This target needs Debian's `chromium` and `chromium-driver` packages, so
//! it is not part of `scripts/test` (which needs only cargo): `scripts/ui-test`
//! runs it, and `.ci/run` installs the packages and runs it. Without the
//! browser every test fails and says what to install; none passes silently.
//! Each failing test leaves a screenshot (`failure.png`) in its temporary
//! directory, which is kept and named in the failure message.

mod common;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::tcp::free_port;
use common::webhook::subscribe;
use common::{TestServer, client, get, get_json, kv, put};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// Every wait for the page gives up after this long (generous: a shared
/// CI machine under load can be slow, and a pass never waits this long).
const DEADLINE: Duration = Duration::from_secs(60);

/// Where the browser and its driver are, unless the environment says.
fn binary(env: &str, default: &str) -> PathBuf {
    std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from)
}

/// Fails the test at once, and clearly, when the browser is missing.
fn require_browser() -> (PathBuf, PathBuf) {
    let chromium = binary("DODODB_CHROMIUM", "/usr/bin/chromium");
    let driver = binary("DODODB_CHROMEDRIVER", "/usr/bin/chromedriver");
    for (what, path, env) in [
        ("Chromium", &chromium, "DODODB_CHROMIUM"),
        ("chromedriver", &driver, "DODODB_CHROMEDRIVER"),
    ] {
        assert!(
            path.is_file(),
            "the browser tests need {what} at {} (or set {env}); install both with \
             `apt-get install -y chromium chromium-driver` (.ci/run does)",
            path.display()
        );
    }
    (chromium, driver)
}

/// A chromedriver process with one Chromium session.
struct Browser {
    client: Client,
    driver: Child,
    dir: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Starts chromedriver on a free port and a fresh Chromium profile,
/// `width` × `height` CSS pixels.
async fn launch(width: u32, height: u32) -> Browser {
    let (chromium, driver_bin) = require_browser();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let driver = Command::new(&driver_bin)
        .arg(format!("--port={port}"))
        .arg(format!(
            "--log-path={}",
            dir.path().join("chromedriver.log").display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver_bin.display()));
    let url = format!("http://127.0.0.1:{port}");
    let http = client();
    let started = Instant::now();
    loop {
        let ready = http.get(format!("{url}/status")).send().await;
        if let Ok(r) = ready
            && let Ok(v) = r.json::<Value>().await
            && v["value"]["ready"] == true
        {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "chromedriver did not come up on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let profile = dir.path().join("profile");
    let args = [
        "--headless".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--disable-dev-shm-usage".into(),
        format!("--user-data-dir={}", profile.display()),
        format!("--window-size={width},{height}"),
    ];
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"binary": chromium, "args": args}),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot open a Chromium session: {e}"));
    Browser {
        client,
        driver,
        dir,
    }
}

/// What a scenario gets: the browser, the server and a plain HTTP client.
#[derive(Clone)]
struct Ui {
    c: Client,
    server: Arc<TestServer>,
}

/// Runs `scenario` against a server started with `args` in a browser
/// window `width` pixels wide. On failure, saves a screenshot in the test's
/// temporary directory, keeps the directory and fails naming it.
fn run<F, Fut>(args: &[&str], width: u32, scenario: F)
where
    F: FnOnce(Ui) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let server = Arc::new(TestServer::start(args));
        let mut browser = launch(width, 900).await;
        let ui = Ui {
            c: browser.client.clone(),
            // Kept here too, so the server outlives a failed scenario
            // until its screenshot is taken.
            server: Arc::clone(&server),
        };
        let outcome = tokio::spawn(scenario(ui)).await;
        if let Err(e) = outcome {
            let why = match e.try_into_panic() {
                Ok(payload) => payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into()),
                Err(e) => e.to_string(),
            };
            let shot = browser.dir.path().join("failure.png");
            let saved = match browser.client.screenshot().await {
                Ok(png) => std::fs::write(&shot, png).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let _ = browser.client.clone().close().await;
            let dir = std::mem::replace(&mut browser.dir, tempfile::tempdir().expect("tempdir"));
            let kept: PathBuf = dir.keep();
            match saved {
                Ok(()) => panic!("{why}\nscreenshot: {}", kept.join("failure.png").display()),
                Err(e) => panic!("{why}\n(no screenshot: {e}; logs in {})", kept.display()),
            }
        }
        let _ = browser.client.clone().close().await;
    });
}

impl Ui {
    /// Opens the console and waits until its panes are up.
    async fn open(&self) {
        self.c.goto(&self.server.at("/ui")).await.expect("goto /ui");
        self.wait_visible("#app").await;
    }

    async fn find(&self, css: &str) -> Element {
        self.c
            .wait()
            .at_most(DEADLINE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    async fn wait_visible(&self, css: &str) -> Element {
        let started = Instant::now();
        loop {
            if let Ok(e) = self.c.find(Locator::Css(css)).await
                && e.is_displayed().await.unwrap_or(false)
            {
                return e;
            }
            assert!(started.elapsed() < DEADLINE, "{css} never became visible");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.wait_visible(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Replaces the text of an input or textarea.
    async fn type_into(&self, css: &str, text: &str) {
        let field = self.wait_visible(css).await;
        field.clear().await.expect("clear");
        field.send_keys(text).await.expect("type");
    }

    async fn value(&self, css: &str) -> String {
        self.find(css)
            .await
            .prop("value")
            .await
            .expect("value")
            .unwrap_or_default()
    }

    /// Waits until the text of `css` satisfies `ok`; returns it.
    async fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        let mut last = String::new();
        loop {
            if let Ok(e) = self.c.find(Locator::Css(css)).await
                && let Ok(text) = e.text().await
            {
                if ok(&text) {
                    return text;
                }
                last = text;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{css} never showed {what}; last text: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_contains(&self, css: &str, needle: &str) -> String {
        self.wait_text(css, needle, |t| t.contains(needle)).await
    }

    /// Runs `script` in the page and returns its answer.
    async fn js(&self, script: &str) -> Value {
        self.c
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script {script}: {e}"))
    }

    /// Waits until `script` answers `true`.
    async fn wait_js(&self, what: &str, script: &str) {
        let started = Instant::now();
        while self.js(script).await != Value::Bool(true) {
            assert!(started.elapsed() < DEADLINE, "never: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The texts of the key list's entries.
    async fn listed(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in self
            .c
            .find_all(Locator::Css("#key-list button"))
            .await
            .expect("list")
        {
            out.push(e.text().await.unwrap_or_default());
        }
        out
    }

    async fn wait_listed(&self, what: &str, ok: impl Fn(&[String]) -> bool) -> Vec<String> {
        let started = Instant::now();
        loop {
            let listed = self.listed().await;
            if ok(&listed) {
                return listed;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "the key list never showed {what}: {listed:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the key list's entry for `key`.
    async fn open_key(&self, key: &str) {
        let started = Instant::now();
        loop {
            let buttons = self
                .c
                .find_all(Locator::Css("#key-list button.key"))
                .await
                .expect("keys");
            for b in buttons {
                if b.attr("data-key").await.ok().flatten().as_deref() == Some(key) {
                    b.click().await.expect("click key");
                    self.wait_opened(key).await;
                    return;
                }
            }
            assert!(started.elapsed() < DEADLINE, "{key:?} is never listed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the editor shows `key`, read from the server.
    async fn wait_opened(&self, key: &str) {
        let script = format!(
            "return !document.getElementById('editor').hidden \
             && document.getElementById('edit-key').value === {} \
             && document.getElementById('meta-version') !== null",
            Value::String(key.to_string())
        );
        self.wait_js(&format!("the editor shows {key:?}"), &script)
            .await;
    }

    /// `PUT /kv/{key}` from outside the page, which must succeed.
    async fn put(&self, key: &str, body: &str) {
        put(&self.server, key, body).await;
    }

    /// The stored bytes of `key`, or None when it is absent.
    async fn get(&self, key: &str) -> Option<String> {
        get(&self.server, key).await
    }

    async fn list_prefix(&self, prefix: &str) {
        self.type_into("#prefix", prefix).await;
        self.click("#keys-form button[type=submit]").await;
    }
}

fn compact(json_text: &str) -> Value {
    serde_json::from_str(json_text).unwrap_or_else(|e| panic!("{json_text:?}: {e}"))
}

#[test]
fn browse_a_seeded_prefix_with_folders_paging_and_search() {
    run(&["--in-memory"], 1280, |ui| async move {
        // 150 users (more than one page of 100), a config key, and keys
        // outside the prefix.
        for i in 0..150 {
            ui.put(&format!("app/users:{i:03}"), &format!("{{\"n\":{i}}}"))
                .await;
        }
        ui.put("app/config", "{\"debug\":false}").await;
        ui.put("other", "1").await;
        ui.open().await;
        ui.list_prefix("app/").await;
        // One folder for the users, one leaf for the config.
        let listed = ui
            .wait_listed("a users folder and config", |l| {
                l.iter().any(|t| t.starts_with("users:")) && l.iter().any(|t| t == "config")
            })
            .await;
        assert!(!listed.iter().any(|t| t.contains("other")), "{listed:?}");
        ui.click("#key-list button.folder").await;
        ui.wait_js(
            "the prefix becomes app/users:",
            "return document.getElementById('prefix').value === 'app/users:'",
        )
        .await;
        ui.wait_listed("the first page", |l| l.len() == 100).await;
        ui.wait_contains("#crumbs", "users:").await;
        // The second page through the cursor.
        ui.click("#more").await;
        let all = ui.wait_listed("both pages", |l| l.len() == 150).await;
        assert_eq!(all[0], "000");
        assert_eq!(all[149], "149");
        ui.wait_js(
            "no more pages",
            "return document.getElementById('more').hidden",
        )
        .await;
        // Search within the prefix.
        ui.type_into("#search", "14").await;
        let found = ui.wait_listed("the matches of 14", |l| l.len() == 12).await;
        assert!(found.iter().all(|k| k.contains("14")), "{found:?}");
        // Open one by keyboard: the search box, Tab to the list, Enter.
        ui.type_into("#search", "app/users:042").await;
        ui.wait_listed("one match", |l| l.len() == 1).await;
        let key = ui.find("#key-list button.key").await;
        key.send_keys("\u{E007}").await.expect("Enter");
        ui.wait_opened("app/users:042").await;
        let shown = ui.value("#edit-value").await;
        assert_eq!(compact(&shown), json!({"n": 42}));
        ui.wait_contains("#meta", "version").await;
    });
}

#[test]
fn edit_and_save_with_validation() {
    run(&["--in-memory"], 1280, |ui| async move {
        ui.put(
            "cfg/app",
            "{\"stage\":1,\"big\":123456789012345678901234567890}",
        )
        .await;
        ui.open().await;
        ui.open_key("cfg/app").await;
        // Formatted, with the big number kept digit for digit.
        let shown = ui.value("#edit-value").await;
        assert!(shown.contains('\n'), "not formatted: {shown:?}");
        assert!(shown.contains("123456789012345678901234567890"), "{shown}");
        let version = ui
            .wait_text("#meta-version", "a version", |t| !t.is_empty())
            .await;
        // Invalid JSON is refused before anything is sent.
        ui.type_into("#edit-value", "{\"stage\": 2,").await;
        ui.click("#save").await;
        ui.wait_contains("#edit-error", "not valid JSON").await;
        assert_eq!(
            compact(&ui.get("cfg/app").await.expect("present")),
            compact("{\"stage\":1,\"big\":123456789012345678901234567890}")
        );
        // A good edit is saved and the new version shown.
        ui.type_into("#edit-value", "{\"stage\": 2}").await;
        ui.click("#save").await;
        ui.wait_text("#meta-version", "a new version", |t| {
            !t.is_empty() && t != version
        })
        .await;
        assert_eq!(
            compact(&ui.get("cfg/app").await.expect("present")),
            json!({"stage": 2})
        );
        ui.wait_contains("#meta-size", "B").await;
        ui.wait_contains("#meta-expires", "never").await;
    });
}

#[test]
fn a_concurrent_change_during_an_edit_shows_the_conflict() {
    run(&["--in-memory"], 1280, |ui| async move {
        ui.put("doc", "{\"owner\":\"first\"}").await;
        ui.open().await;
        ui.open_key("doc").await;
        ui.type_into("#edit-value", "{\"owner\": \"console\"}")
            .await;
        // Someone else writes while the edit is open.
        ui.put("doc", "{\"owner\":\"curl\"}").await;
        ui.click("#save").await;
        ui.wait_visible("#conflict").await;
        let mine = ui.wait_contains("#conflict-mine", "console").await;
        let theirs = ui.wait_contains("#conflict-theirs", "curl").await;
        assert!(!theirs.contains("console"), "{mine} / {theirs}");
        ui.wait_contains("#conflict-text", "Nothing was saved")
            .await;
        // Never overwritten silently.
        assert_eq!(
            compact(&ui.get("doc").await.expect("present")),
            json!({"owner": "curl"})
        );
        // The user may choose their version after seeing both.
        ui.click("#overwrite").await;
        ui.wait_js(
            "the conflict closes",
            "return document.getElementById('conflict').hidden",
        )
        .await;
        // Not `poll_until`: its async closure makes this future not `Send`
        // enough for the spawned scenario.
        let started = Instant::now();
        while compact(&ui.get("doc").await.expect("present")) != json!({"owner": "console"}) {
            assert!(
                started.elapsed() < DEADLINE,
                "the chosen version was never saved"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

#[test]
fn create_with_ttl_then_see_it_expire() {
    run(&["--in-memory"], 1280, |ui| async move {
        ui.put("session:kept", "1").await;
        ui.open().await;
        // Creating a key that exists is refused, not an overwrite.
        ui.click("#new-key").await;
        ui.type_into("#edit-key", "session:kept").await;
        ui.type_into("#edit-value", "2").await;
        ui.click("#save").await;
        ui.wait_contains("#edit-error", "already exists").await;
        assert_eq!(ui.get("session:kept").await.as_deref(), Some("1"));
        ui.click("#new-key").await;
        ui.type_into("#edit-key", "session:short").await;
        ui.type_into("#edit-value", "{\"user\": \"ann\"}").await;
        // A bad TTL is refused before anything is sent.
        ui.type_into("#edit-ttl", "1.5").await;
        ui.click("#save").await;
        ui.wait_contains("#edit-error", "TTL").await;
        ui.type_into("#edit-ttl", "5").await;
        ui.click("#save").await;
        // The editor shows the key as read back from the server, with its
        // expiry, and watches it expire.
        ui.wait_opened("session:short").await;
        ui.wait_contains("#meta-expires", "in ").await;
        assert_eq!(
            compact(&ui.value("#edit-value").await),
            json!({"user": "ann"})
        );
        ui.wait_listed("both keys in a folder", |l| l == ["session: 2"])
            .await;
        ui.wait_contains("#meta-state", "expired").await;
        ui.wait_listed("the key gone", |l| l == ["session:kept"])
            .await;
        assert_eq!(ui.get("session:short").await, None);
    });
}

#[test]
fn delete_asks_first() {
    run(&["--in-memory"], 1280, |ui| async move {
        ui.put("trash/a", "1").await;
        ui.put("trash/b", "2").await;
        ui.open().await;
        // Both are in one folder.
        ui.click("#key-list button.folder").await;
        ui.open_key("trash/a").await;
        // Cancel keeps it.
        ui.click("#delete").await;
        ui.wait_visible("#confirm-dialog").await;
        ui.wait_contains("#confirm-text", "trash/a").await;
        ui.click("#confirm-no").await;
        ui.wait_js(
            "the dialog closes",
            "return !document.getElementById('confirm-dialog').open",
        )
        .await;
        assert_eq!(ui.get("trash/a").await.as_deref(), Some("1"));
        // Confirm deletes it.
        ui.click("#delete").await;
        ui.click("#confirm-yes").await;
        ui.wait_contains("#meta-state", "Deleted").await;
        assert_eq!(ui.get("trash/a").await, None);
        assert_eq!(ui.get("trash/b").await.as_deref(), Some("2"));
        ui.wait_listed("only b", |l| l == ["b"]).await;
    });
}

#[test]
fn an_http_put_appears_in_the_live_pane_and_pause_loses_nothing() {
    run(&["--in-memory"], 1280, |ui| async move {
        ui.open().await;
        ui.wait_contains("#feed-state", "live").await;
        ui.put("live/one", "1").await;
        ui.wait_contains("#feed-list", "live/one").await;
        // Paused: the stream is closed; changes meanwhile come on resume.
        ui.click("#feed-pause").await;
        ui.wait_contains("#feed-state", "paused").await;
        ui.put("live/two", "2").await;
        ui.put("live/three", "3").await;
        assert!(
            !ui.find("#feed-list")
                .await
                .text()
                .await
                .expect("text")
                .contains("live/two")
        );
        ui.click("#feed-pause").await;
        ui.wait_contains("#feed-list", "live/three").await;
        let rows = ui.find("#feed-list").await.text().await.expect("text");
        for key in ["live/one", "live/two", "live/three"] {
            assert_eq!(rows.matches(key).count(), 1, "{key} once in {rows}");
        }
        // The prefix filter.
        ui.type_into("#feed-prefix", "keep/").await;
        ui.click("#feed-form button[type=submit]").await;
        ui.wait_contains("#feed-state", "keep/").await;
        ui.put("drop/x", "1").await;
        ui.put("keep/x", "1").await;
        let rows = ui.wait_contains("#feed-list", "keep/x").await;
        assert!(!rows.contains("drop/x"), "{rows}");
    });
}

/// A webhook receiver that answers every delivery with 500.
async fn failing_receiver() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let app = axum::Router::new().fallback(move || {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            StatusCode::INTERNAL_SERVER_ERROR
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), hits)
}

#[test]
fn a_subscription_shows_failing_when_its_receiver_answers_500() {
    run(&["--in-memory"], 1280, |ui| async move {
        let (url, hits) = failing_receiver().await;
        ui.open().await;
        ui.type_into("#sub-target", "orders/").await;
        ui.type_into("#sub-url", &url).await;
        ui.click("#sub-form button[type=submit]").await;
        ui.wait_contains("#sub-list", "orders/").await;
        ui.put("orders/1", "{\"total\":5}").await;
        let started = Instant::now();
        while hits.load(Ordering::SeqCst) == 0 {
            assert!(started.elapsed() < DEADLINE, "no delivery attempt");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ui.wait_js(
            "the subscription shows failing",
            "const b = document.querySelector('#sub-list .badge'); \
                 return b !== null && b.dataset.status === 'failing'",
        )
        .await;
        ui.wait_contains("#sub-list", "500").await;
        // Delete it from the console.
        ui.click("#sub-list button.danger").await;
        ui.click("#confirm-yes").await;
        ui.wait_contains("#sub-list", "no subscriptions").await;
    });
}

#[test]
fn the_token_is_asked_for_and_kept_for_the_tab_only() {
    run(
        &["--in-memory", "--auth-token", "s3cret-token"],
        1280,
        |ui| async move {
            ui.put_with_token("guarded", "1", "s3cret-token").await;
            ui.c.goto(&ui.server.at("/ui")).await.expect("goto");
            ui.wait_visible("#token-dialog").await;
            ui.type_into("#token", "wrong").await;
            ui.click("#token-form button[type=submit]").await;
            ui.wait_contains("#token-error", "Wrong token").await;
            ui.type_into("#token", "s3cret-token").await;
            ui.click("#token-form button[type=submit]").await;
            ui.wait_visible("#app").await;
            ui.wait_listed("the key", |l| l.iter().any(|t| t == "guarded"))
                .await;
            assert_eq!(
                ui.js("return [sessionStorage.getItem('dododb.token'), localStorage.length, document.cookie]")
                    .await,
                json!(["s3cret-token", 0, ""])
            );
            // A reload in the same tab keeps it; forgetting it asks again.
            ui.c.refresh().await.expect("reload");
            ui.wait_visible("#app").await;
            ui.click("#sign-out").await;
            ui.wait_visible("#token-dialog").await;
            assert_eq!(
                ui.js("return sessionStorage.getItem('dododb.token')").await,
                Value::Null
            );
        },
    );
}

impl Ui {
    async fn put_with_token(&self, key: &str, body: &str, token: &str) {
        let r = self
            .server
            .http()
            .put(self.server.at(&kv(key)))
            .bearer_auth(token)
            .body(body.to_string())
            .send()
            .await
            .expect("PUT");
        assert!(r.status().is_success(), "{}", r.status());
    }
}

#[test]
fn a_key_that_looks_like_markup_shows_as_text() {
    run(&["--in-memory"], 1280, |ui| async move {
        let key = "<img src=x onerror=alert(1)>";
        ui.put(
            key,
            "\"<script>alert(2)</script><img src=y onerror=alert(3)>\"",
        )
        .await;
        ui.open().await;
        let listed = ui
            .wait_listed("the key as text", |l| l.iter().any(|t| t == key))
            .await;
        assert!(listed.contains(&key.to_string()));
        ui.open_key(key).await;
        assert_eq!(
            ui.value("#edit-value").await,
            "\"<script>alert(2)</script><img src=y onerror=alert(3)>\""
        );
        ui.wait_contains("#feed-state", "live").await;
        ui.put(key, "\"<b>again</b>\"").await;
        ui.wait_contains("#feed-list", key).await;
        // Nothing ran and no element was made from the text.
        assert!(ui.c.get_alert_text().await.is_err(), "an alert is open");
        assert_eq!(
            ui.js("return document.querySelectorAll('img, script:not([src]), b').length")
                .await,
            json!(0)
        );
    });
}

#[test]
fn usable_at_400_pixels_wide() {
    run(&["--in-memory"], 400, |ui| async move {
        ui.put(
            "narrow/a-rather-long-key-name-that-must-wrap-somewhere",
            "{}",
        )
        .await;
        ui.open().await;
        ui.wait_listed("the key", |l| !l.is_empty()).await;
        // One column, nothing wider than the window.
        ui.wait_js(
            "no horizontal scrolling",
            "return document.documentElement.scrollWidth <= window.innerWidth",
        )
        .await;
        let columns = ui
            .js("return getComputedStyle(document.getElementById('app')).gridTemplateColumns.split(' ').length")
            .await;
        assert_eq!(columns, json!(1));
        ui.open_key("narrow/a-rather-long-key-name-that-must-wrap-somewhere")
            .await;
        ui.wait_js(
            "still no horizontal scrolling",
            "return document.documentElement.scrollWidth <= window.innerWidth",
        )
        .await;
    });
}

#[test]
fn charts_draw_the_polled_figures() {
    run(&[], 1280, |ui| async move {
        ui.open().await;
        // Writes between polls give a request rate and an fsync latency.
        let started = Instant::now();
        let mut n = 0;
        while ui
            .js("return ['requests', 'fsync'].every(id => \
                 document.querySelector('#chart-' + id + ' .now')?.dataset.value > 0)")
            .await
            != Value::Bool(true)
        {
            assert!(started.elapsed() < DEADLINE, "no rate or latency drawn");
            ui.put(&format!("c/{n}"), "1").await;
            n += 1;
        }
        let keys = get_json(&ui.server, "/kv/count").await["count"].clone();
        ui.wait_js(
            "the keys chart shows the count",
            &format!(
                "return document.querySelector('#chart-keys .now').dataset.value === '{keys}'"
            ),
        )
        .await;
        ui.wait_js(
            "a line is drawn",
            "return document.querySelector('#chart-keys polyline') !== null",
        )
        .await;
    });
}

/// Two screenshots of the console (1,280 and 400 pixels wide) with data and
/// a few minutes' worth of charts; `DODODB_UI_SCREENSHOTS=dir` also copies
/// them there (how `docs/console*.png` are made).
#[test]
fn the_console_renders_at_both_widths() {
    let out = std::env::var_os("DODODB_UI_SCREENSHOTS").map(PathBuf::from);
    run(&[], 1280, move |ui| async move {
        let dir = tempfile::tempdir().expect("tempdir");
        take_screenshots(&ui, dir.path()).await;
        for name in ["console.png", "console-narrow.png"] {
            let png = std::fs::read(dir.path().join(name)).expect("screenshot");
            assert!(png.starts_with(b"\x89PNG"), "{name} is not a PNG");
            if let Some(out) = &out {
                std::fs::write(out.join(name), png).expect("copy");
            }
        }
    });
}

async fn take_screenshots(ui: &Ui, out: &Path) {
    for (key, value) in [
        (
            "app/config",
            "{\"debug\":false,\"workers\":8,\"regions\":[\"eu-west\",\"us-east\"]}",
        ),
        (
            "app/users:ann",
            "{\"name\":\"Ann\",\"plan\":\"pro\",\"since\":\"2024-03-01\"}",
        ),
        ("app/users:bob", "{\"name\":\"Bob\",\"plan\":\"free\"}"),
        ("app/users:cy", "{\"name\":\"Cy\",\"plan\":\"team\"}"),
        ("app/flags:beta", "true"),
        ("app/flags:dark-mode", "false"),
    ] {
        ui.put(key, value).await;
    }
    let (url, _) = failing_receiver().await;
    subscribe(&ui.server, &json!({"prefix": "jobs/", "callback_url": url})).await;
    ui.open().await;
    ui.list_prefix("app/").await;
    ui.wait_listed("the folders", |l| l.len() >= 3).await;
    ui.open_key("app/config").await;
    // A burst of writes between each of eight polls draws some history.
    for round in 0..8 {
        for i in 0..(round * 7 % 20 + 3) {
            ui.put(
                &format!("jobs/{round}-{i}"),
                &format!("{{\"progress\":{i}}}"),
            )
            .await;
        }
        ui.wait_js(
            "the next poll",
            &format!(
                "return document.querySelectorAll('#chart-keys svg')[0]?.dataset.points >= {}",
                round + 2
            ),
        )
        .await;
    }
    // Tall enough for every pane.
    ui.c.set_window_size(1280, 1320).await.expect("resize");
    ui.wait_js(
        "the charts in view",
        "return document.getElementById('charts-pane').getBoundingClientRect().bottom <= window.innerHeight",
    )
    .await;
    let png = ui.c.screenshot().await.expect("screenshot");
    std::fs::write(out.join("console.png"), png).expect("write");
    ui.c.set_window_size(400, 900).await.expect("resize");
    ui.wait_js(
        "one column",
        "return document.documentElement.scrollWidth <= window.innerWidth",
    )
    .await;
    let png = ui.c.screenshot().await.expect("screenshot");
    std::fs::write(out.join("console-narrow.png"), png).expect("write");
}

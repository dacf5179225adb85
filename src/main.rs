//! The `dododb` executable: parses the command line, sets up logging and
//! runs the server or an offline tool.

mod allocator;
mod cli;
mod client;
mod config_file;

use std::process::ExitCode;

use anyhow::Context;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command, RepairArgs, RestoreArgs, ServeArgs};
use client::{ClientCommand, Connect};
use dododb::Db;

fn main() -> ExitCode {
    let cli = match config_file::parse() {
        Ok(cli) => cli,
        Err(config_file::ParseFailure::File(line)) => {
            eprintln!("dododb: {line}");
            return ExitCode::from(2);
        }
        Err(config_file::ParseFailure::Cli(e)) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(config_file::ParseFailure::Cli(e)) => {
            // One line, as the SPEC asks; clap's own text adds usage blocks.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("dododb: {first} (see dododb --help)");
            return ExitCode::from(2);
        }
    };
    // Only the server and the offline tools log; client commands print
    // results.
    let result = match job(cli) {
        Job::Client(connect, command) => return client::run(&connect, &command),
        Job::Shell(connect) => return client::shell(&connect),
        Job::Serve(args) => {
            init_logging();
            serve(args)
        }
        Job::Repair(args) => {
            init_logging();
            repair(args)
        }
        Job::Restore(args) => restore(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dododb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// What the command line asks for. Built once per run: the size of the
/// `Serve` variant costs nothing.
#[allow(clippy::large_enum_variant)]
enum Job {
    Serve(ServeArgs),
    Repair(RepairArgs),
    Restore(RestoreArgs),
    Client(Connect, ClientCommand),
    Shell(Connect),
}

fn job(cli: Cli) -> Job {
    match cli.command {
        None => Job::Serve(cli.serve),
        Some(Command::Serve(args)) => Job::Serve(args),
        Some(Command::Repair(args)) => Job::Repair(args),
        Some(Command::Get(r)) => Job::Client(r.connect, ClientCommand::Get(r.args)),
        Some(Command::Put(r)) => Job::Client(r.connect, ClientCommand::Put(r.args)),
        Some(Command::Del(r)) => Job::Client(r.connect, ClientCommand::Del(r.args)),
        Some(Command::Ls(r)) => Job::Client(r.connect, ClientCommand::Ls(r.args)),
        Some(Command::Count(r)) => Job::Client(r.connect, ClientCommand::Count(r.args)),
        Some(Command::Watch(r)) => Job::Client(r.connect, ClientCommand::Watch(r.args)),
        Some(Command::Subscribe(r)) => Job::Client(r.connect, ClientCommand::Subscribe(r.args)),
        Some(Command::Subs(r)) => Job::Client(r.connect, ClientCommand::Subs(r.args)),
        Some(Command::SubRecover(r)) => Job::Client(r.connect, ClientCommand::SubRecover(r.args)),
        Some(Command::SubEnable(r)) => Job::Client(r.connect, ClientCommand::SubEnable(r.args)),
        Some(Command::Txn(r)) => Job::Client(r.connect, ClientCommand::Txn(r.args)),
        Some(Command::Mget(r)) => Job::Client(r.connect, ClientCommand::Mget(r.args)),
        Some(Command::Mset(r)) => Job::Client(r.connect, ClientCommand::Mset(r.args)),
        Some(Command::Import(r)) => Job::Client(r.connect, ClientCommand::Import(r.args)),
        Some(Command::Export(r)) => Job::Client(r.connect, ClientCommand::Export(r.args)),
        Some(Command::Restore(args)) => Job::Restore(args),
        Some(Command::Cluster(r)) => Job::Client(r.connect, ClientCommand::Cluster(r.args.command)),
        Some(Command::Shell(connect)) => Job::Shell(connect),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.to_config();
    config.validate().map_err(anyhow::Error::msg)?;
    allocator::purge_freed_pages_promptly();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("dododb-http")
        .build()
        .context("cannot start the async runtime")?;
    raise_open_files_limit();
    runtime.block_on(async move {
        // Bind first: a port in use should fail before any recovery work.
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr().context("cannot read the bound address")?;
        let raft_listener = match args.raft_listen {
            Some(at) => Some(
                tokio::net::TcpListener::bind(at)
                    .await
                    .with_context(|| format!("cannot listen on {at} (--raft-listen)"))?,
            ),
            None => None,
        };
        let raft_addr = match &raft_listener {
            Some(l) => Some(l.local_addr().context("cannot read the bound Raft address")?),
            None => None,
        };
        let (db, cluster) = match args.cluster_settings(addr, raft_addr) {
            None => {
                refuse_cluster_data(&config)?;
                let db = tokio::task::spawn_blocking(move || Db::open(config))
                    .await
                    .context("start-up task failed")??;
                (db, None)
            }
            Some(settings) => {
                let node_id = settings.node_id;
                let (db, cluster) = dododb::raft::Cluster::start(config, settings).await?;
                tracing::info!(node_id, "cluster member started");
                (db, Some(cluster))
            }
        };
        if let Some(raft_listener) = raft_listener {
            let app = dododb::http::member_app(db.clone(), cluster.clone());
            let timeout = db.config().header_read_timeout;
            tokio::spawn(dododb::http::serve_app(raft_listener, app, timeout));
        }
        let storage = match &db.config().storage {
            dododb::Storage::InMemory => "in-memory".to_string(),
            dododb::Storage::Dir(dir) => dir.display().to_string(),
        };
        tracing::info!(%addr, data_dir = %storage, fsync = db.config().fsync.as_str(), "DodoDB serving");
        // One line on stdout for people and scripts that started us.
        println!("dododb listening on http://{addr}");
        dododb::http::serve_member(listener, db, cluster, shutdown_signal())
            .await
            .context("server failed")
    })
}

/// A data directory a cluster member used holds its data under `raft/`:
/// starting it without `--node-id` would serve an empty database.
fn refuse_cluster_data(config: &dododb::Config) -> anyhow::Result<()> {
    if let dododb::Storage::Dir(dir) = &config.storage {
        anyhow::ensure!(
            !dir.join("raft").is_dir(),
            "{} holds a cluster member's data (raft/); start it with its --node-id",
            dir.display()
        );
    }
    Ok(())
}

/// Every connection is a file descriptor, and the usual soft limit (1024)
/// is far below what a server holding thousands of idle keep-alive
/// connections needs: raise it to the hard limit.
#[cfg(unix)]
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(e) => tracing::warn!("cannot raise the open files limit: {e}"),
    }
}

#[cfg(not(unix))]
fn raise_open_files_limit() {}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested: finishing in-flight requests");
}

/// `dododb restore`: opens the directory as a database, imports the file
/// through the same checks and write path as `POST /system/import`, and
/// closes it (WAL synced, final snapshot written).
fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let dir = &args.data_dir;
    let holds_data = dir.exists()
        && std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_some();
    anyhow::ensure!(
        !holds_data || args.force,
        "{} is not empty; restore builds a new data directory (--force replaces every key it holds)",
        dir.display()
    );
    let mut file = std::fs::File::open(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let config = dododb::Config {
        fsync: dododb::FsyncPolicy::Never,
        snapshot_interval: None,
        max_key_bytes: usize::try_from(args.max_key_bytes).unwrap_or(usize::MAX),
        max_value_bytes: usize::try_from(args.max_value_bytes).unwrap_or(usize::MAX),
        ..dododb::Config::with_dir(dir)
    };
    let db = Db::open(config)?;
    let mut spool = db.import_spool()?;
    let mut chunk = vec![0; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut chunk)
            .with_context(|| format!("cannot read {}", args.file.display()))?;
        if n == 0 {
            break;
        }
        spool.push(&chunk[..n])?;
    }
    let spooled = spool.finish()?;
    let skipped = spooled.metas;
    let mode = if holds_data {
        dododb::db::ImportMode::Replace
    } else {
        dododb::db::ImportMode::Merge
    };
    let done = db.apply_import(spooled, mode)?;
    db.close()?;
    println!(
        "restored {} entries into {} (revision {}; {} already expired left out{})",
        done.imported,
        dir.display(),
        done.revision,
        done.expired,
        if skipped > 0 {
            format!("; {skipped} subscriptions not restored")
        } else {
            String::new()
        }
    );
    Ok(())
}

fn repair(args: RepairArgs) -> anyhow::Result<()> {
    let dir = &args.data_dir;
    anyhow::ensure!(dir.is_dir(), "{} is not a directory", dir.display());
    let from = dododb::snapshot::list(dir)?.last().copied().unwrap_or(0);
    let mut out = std::io::stdout();
    let cut = dododb::wal::repair(dir, from, &mut out)?;
    if cut {
        println!("repaired; the server will start with the records before the damage");
    }
    Ok(())
}

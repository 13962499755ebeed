//! `regent`: a high-availability agent for PostgreSQL, compatible with Patroni's configuration,
//! DCS layout and REST API. Runs as the container entrypoint (PID 1) of each Postgres pod.

mod config;
mod ctl;
mod fence;
mod ha;
mod logging;
mod pid1;
mod postgres;
#[cfg(test)]
mod sim;
mod snapshot;
mod watchdog;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use config::{Config, DcsConfig, DynamicConfig};

/// Exit codes: 0 clean shutdown, 1 runtime failure, 2 bad configuration or usage.
const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "regent",
    version,
    about = "PostgreSQL high-availability agent (Patroni-compatible)",
    after_help = "Managing a cluster: regent ctl <COMMAND> takes patronictl's commands, options \
                  and output formats (regent ctl --help lists them)."
)]
struct Cli {
    /// Check the configuration file and exit (0 when valid, 2 otherwise); starts nothing.
    #[arg(long)]
    validate_config: bool,
    /// Patroni-format YAML configuration file or directory. Without it, the configuration comes
    /// from PATRONI_CONFIGURATION or PATRONI_* environment variables.
    config_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    // `regent ctl ...` is patronictl's tool; its own parser (a subcommand would clash with the
    // agent's positional CONFIG argument).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "ctl") {
        return ctl::main(args[1..].to_vec());
    }
    // The fence process the agent starts for itself (see fence.rs); nothing else is parsed.
    if args.len() == 2 && args[1] == fence::FENCE_ARG {
        return fence::run();
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let cfg = match config::load_with_env(cli.config_file.as_deref(), &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("regent: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = config::validate(&cfg).and_then(|()| config::check_supported(&cfg)) {
        eprintln!("regent: invalid configuration: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    // Postgres settings that cannot work (parameters, TLS options) are configuration errors too.
    if let Err(e) = postgres::Postgres::new(pg_settings(&cfg)) {
        eprintln!("regent: invalid configuration: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    if cli.validate_config {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    // Patroni removes PATRONI_* from the environment so Postgres and its children never see
    // credentials.
    for key in env.keys().filter(|k| k.starts_with("PATRONI_")) {
        std::env::remove_var(key);
    }
    logging::init(
        &cfg.log.level,
        matches!(cfg.log.type_, config::LogType::Json),
    );

    // One thread: small footprint, and every child is spawned from the thread that lives as
    // long as the agent (the parent-death signal is bound to the spawning thread).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("regent: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    // `POST /reload` reads the same file with the environment as it was at start.
    let reload_path = cli.config_file.clone();
    let reloader: ha::cycle::ConfigReloader = Box::new(move || {
        let cfg = config::load_with_env(reload_path.as_deref(), &env)?;
        config::validate(&cfg).and_then(|()| config::check_supported(&cfg))?;
        Ok(cfg)
    });
    runtime.block_on(run(cfg, reloader))
}

async fn run(cfg: Config, reloader: ha::cycle::ConfigReloader) -> ExitCode {
    pid1::start_reaper();
    info!(scope = %cfg.scope, name = %cfg.name, version = env!("CARGO_PKG_VERSION"), "starting regent");
    for w in &cfg.warnings {
        warn!("configuration: {w}");
    }

    let dcs: Arc<dyn dcs::Dcs> = match build_dcs(&cfg).await {
        Ok(d) => d,
        Err(e) => {
            error!(error = %e, "cannot set up the DCS");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let pg = match postgres::Postgres::new(pg_settings(&cfg)) {
        Ok(p) => p,
        Err(e) => {
            error!(error = %e, "cannot set up Postgres control");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };

    // Peers may serve their API over TLS and with authentication (Patroni's ctl/restapi
    // client settings); the HA loop's calls are short.
    let member_client = match config::member_client(
        &cfg,
        std::time::Duration::from_secs(2),
        std::time::Duration::from_secs(1),
    ) {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "invalid configuration");
            return ExitCode::from(EXIT_CONFIG);
        }
    };

    let (snapshot_tx, snapshot_rx) = tokio::sync::watch::channel(rest::Snapshot::default());
    let (command_tx, command_rx) = tokio::sync::mpsc::channel(16);
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);

    if let Some(url) = same_name_member_alive(&cfg, dcs.as_ref(), &member_client).await {
        error!(
            "a member named {} is already running at {url}: refusing to start a second one",
            cfg.name
        );
        return ExitCode::from(EXIT_RUNTIME);
    }

    let listen = cfg.restapi.listen.clone();
    let listener = match tokio::net::TcpListener::bind(listen_addr(&listen)).await {
        Ok(l) => l,
        Err(e) => {
            error!(error = %e, "cannot listen on restapi.listen {listen}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    // Checked by `check_supported` already; this loads the files for serving.
    let security = match cfg
        .restapi
        .security_settings()
        .map_err(|e| e.to_string())
        .and_then(|s| {
            rest::security::Security::new(&s, snapshot_rx.clone()).map_err(|e| e.to_string())
        }) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            error!(error = %e, "REST API security settings");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // A reload (POST /reload) also applies the REST API's credentials, allowlist and headers.
    let reload_security = security.clone();
    let reloader: ha::cycle::ConfigReloader = Box::new(move || {
        let cfg = reloader()?;
        let settings = cfg.restapi.security_settings()?;
        reload_security.reload(&settings)?;
        Ok(cfg)
    });
    // Citus: the coordinator's manager is shared by the HA loop and the `/citus` handler.
    let citus_runtime = cfg
        .citus
        .as_ref()
        .map(|c| ha::cycle::CitusRuntime::new(c.group, c.database.clone()));
    let citus_handler = citus_runtime.as_ref().map(|rt| {
        std::sync::Arc::new(ha::cycle::CoordinatorEvents {
            manager: rt.manager.clone(),
            dcs: dcs.clone(),
        }) as std::sync::Arc<dyn rest::CitusHandler>
    });
    let failsafe_inbox = rest::FailsafeInbox::default();
    let api_state = rest::ApiState {
        snapshot: snapshot_rx,
        commands: command_tx,
        citus: citus_handler,
        failsafe: failsafe_inbox.clone(),
    };
    let mut rest_shutdown = shutdown_rx.clone();
    let rest_task = tokio::spawn(async move {
        let stop = async move {
            let _ = rest_shutdown.wait_for(|v| *v).await;
        };
        let app = rest::router(api_state);
        if let Err(e) = rest::security::serve(listener, app, security, stop).await {
            error!(error = %e, "REST API stopped");
        }
    });

    tokio::spawn(forward_signals(shutdown_tx));

    let mut agent = ha::cycle::Agent::new(cfg, dcs, Box::new(pg), member_client, snapshot_tx)
        .with_commands(command_rx)
        .with_config_reloader(reloader)
        .with_failsafe_inbox(failsafe_inbox);
    if let Some(rt) = citus_runtime {
        agent = agent.with_citus(rt);
    }
    let exit = agent.run(shutdown_rx).await;
    rest_task.abort();
    match exit {
        ha::cycle::Exit::Shutdown => ExitCode::SUCCESS,
        ha::cycle::Exit::Fatal(msg) => {
            error!("exiting: {msg}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Two agents with one name would fight over one member key and one lock: before listening,
/// ask the REST API published under our name whether it is alive (`GET /liveness`).
async fn same_name_member_alive(
    cfg: &Config,
    dcs: &dyn dcs::Dcs,
    client: &reqwest::Client,
) -> Option<String> {
    let cluster = tokio::time::timeout(std::time::Duration::from_secs(5), dcs.get_cluster())
        .await
        .ok()?
        .ok()?;
    let api_url = cluster.member(&cfg.name)?.data.api_url.clone()?;
    let liveness = match api_url.rsplit_once('/') {
        Some((base, _)) if base.contains("://") => format!("{base}/liveness"),
        _ => format!("{}/liveness", api_url.trim_end_matches('/')),
    };
    // Our own API may be https with a private CA: the client for calling members has it.
    let resp = client.get(&liveness).send().await.ok()?;
    resp.status().is_success().then_some(api_url)
}

/// SIGTERM/SIGINT start a clean shutdown; a second one is ignored while it runs.
async fn forward_signals(shutdown: tokio::sync::watch::Sender<bool>) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => info!("received SIGTERM"),
            _ = int.recv() => info!("received SIGINT"),
        }
        let _ = shutdown.send(true);
    }
}

/// `restapi.listen` is `host:port`; an empty host or `*` means all interfaces.
fn listen_addr(listen: &str) -> String {
    match listen.rsplit_once(':') {
        Some(("", port)) | Some(("*", port)) => format!("0.0.0.0:{port}"),
        Some(_) => listen.to_string(),
        None => format!("0.0.0.0:{listen}"),
    }
}

async fn build_dcs(cfg: &Config) -> Result<Arc<dyn dcs::Dcs>, dcs::DcsError> {
    let (dynamic, _) = DynamicConfig::from_value(&cfg.bootstrap.dcs);
    let timing = dcs::Timing {
        ttl: dynamic.ttl,
        loop_wait: dynamic.loop_wait,
        retry_timeout: dynamic.retry_timeout,
    };
    match &cfg.dcs {
        DcsConfig::Etcd3(e) => {
            let backend = dcs::etcd::Etcd3::new(dcs::etcd::EtcdConfig {
                hosts: e.hosts.clone(),
                protocol: e.protocol.clone(),
                cacert: e.cacert.clone(),
                cert: e.cert.clone(),
                key: e.key.clone(),
                namespace: cfg.namespace.clone(),
                scope: cfg.scope.clone(),
                name: cfg.name.clone(),
                group: cfg.citus.as_ref().map(|c| c.group),
                username: e.username.clone(),
                password: e.password.clone(),
                timing,
            })?;
            Ok(Arc::new(backend))
        }
        DcsConfig::Kubernetes(k) => {
            let backend = dcs::kubernetes::Kubernetes::connect(dcs::kubernetes::KubernetesConfig {
                scope: cfg.scope.clone(),
                name: cfg.name.clone(),
                group: cfg.citus.as_ref().map(|c| c.group),
                namespace: k.namespace.clone(),
                labels: k.labels.clone(),
                scope_label: k.scope_label.clone(),
                role_label: k.role_label.clone(),
                leader_label_value: k.leader_label_value.clone(),
                follower_label_value: k.follower_label_value.clone(),
                standby_leader_label_value: k.standby_leader_label_value.clone(),
                tmp_role_label: k.tmp_role_label.clone(),
                use_endpoints: k.use_endpoints,
                pod_ip: k.pod_ip.clone(),
                ports: k.ports.clone(),
                cacert: k.cacert.clone(),
                context: k.context.clone(),
                bypass_api_service: k.bypass_api_service,
                retriable_http_codes: k.retriable_http_codes.clone(),
                bootstrap_labels: k.bootstrap_labels.clone(),
                timing,
                kubeconfig: None,
            })
            .await?;
            Ok(Arc::new(backend))
        }
    }
}

/// Postgres parameters: the DCS copy, overridden by the local file (Patroni's precedence).
pub fn merged_parameters(
    cfg: &Config,
    dynamic: &DynamicConfig,
) -> serde_json::Map<String, serde_json::Value> {
    let mut params = dynamic.parameters.clone();
    for (k, v) in &cfg.postgresql.parameters {
        params.insert(k.clone(), v.clone());
    }
    params
}

/// pg_hba lines: local `postgresql.pg_hba`, else the DCS copy, else legacy `bootstrap.pg_hba`.
pub fn merged_pg_hba(cfg: &Config, dynamic: &DynamicConfig) -> Vec<String> {
    if !cfg.postgresql.pg_hba.is_empty() {
        cfg.postgresql.pg_hba.clone()
    } else if !dynamic.pg_hba.is_empty() {
        dynamic.pg_hba.clone()
    } else {
        cfg.bootstrap.pg_hba.clone()
    }
}

fn pg_settings(cfg: &Config) -> postgres::PgSettings {
    let (dynamic, _) = DynamicConfig::from_value(&cfg.bootstrap.dcs);
    let (hosts, port) = cfg.postgres_listen_host_port();
    let (connect_host, _) = cfg.pg_connect_host_port();
    let data_dir = cfg.postgresql.data_dir.clone();
    let run_as = run_as_user(&data_dir);
    postgres::PgSettings {
        data_dir: data_dir.clone(),
        bin_dir: cfg
            .bin("postgres")
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default(),
        scope: cfg.scope.clone(),
        name: cfg.name.clone(),
        listen_addresses: hosts.join(","),
        port,
        connect_host,
        superuser: pg_user(&cfg.postgresql.authentication.superuser),
        replication: pg_user(&cfg.postgresql.authentication.replication),
        rewind: cfg.postgresql.authentication.rewind.as_ref().map(pg_user),
        parameters: merged_parameters(cfg, &dynamic),
        pg_hba: merged_pg_hba(cfg, &dynamic),
        initdb_options: cfg.bootstrap.initdb.clone(),
        basebackup_options: cfg.postgresql.basebackup.clone(),
        run_as,
        pg_ctl_timeout: std::time::Duration::from_secs(cfg.postgresql.pg_ctl_timeout),
        pgpass: cfg.postgresql.pgpass.clone(),
        socket_dir: socket_dir(run_as),
        citus: cfg.citus.as_ref().map(|c| postgres::CitusSettings {
            group: c.group,
            database: c.database.clone(),
        }),
        ..postgres::PgSettings::default()
    }
}

/// The Unix socket directory: Debian's `/var/run/postgresql`, created (and given to the Postgres
/// user) when missing; a user-set `unix_socket_directories` parameter overrides it.
fn socket_dir(run_as: Option<(u32, u32)>) -> PathBuf {
    let dir = PathBuf::from("/var/run/postgresql");
    if !dir.exists() {
        match std::fs::create_dir_all(&dir) {
            Ok(()) => {
                if let Some((uid, gid)) = run_as {
                    let _ = std::os::unix::fs::chown(&dir, Some(uid), Some(gid));
                }
            }
            Err(e) => warn!(error = %e, "cannot create the socket directory {}", dir.display()),
        }
    }
    dir
}

fn pg_user(u: &config::PgUser) -> postgres::PgUser {
    postgres::PgUser {
        username: u.username.clone(),
        password: u.password.clone(),
        sslmode: u.sslmode.clone(),
        sslkey: u.sslkey.clone(),
        sslcert: u.sslcert.clone(),
        sslrootcert: u.sslrootcert.clone(),
        ..Default::default()
    }
}

/// Postgres refuses to run as root: when the agent is root, run it as the owner of the data
/// directory (or its parent), else as the `postgres` user.
fn run_as_user(data_dir: &std::path::Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    for p in [Some(data_dir), data_dir.parent()].into_iter().flatten() {
        if let Ok(md) = std::fs::metadata(p) {
            if md.uid() != 0 {
                return Some((md.uid(), md.gid()));
            }
        }
    }
    match nix::unistd::User::from_name("postgres") {
        Ok(Some(u)) => Some((u.uid.as_raw(), u.gid.as_raw())),
        _ => None,
    }
}

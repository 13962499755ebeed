//! `regent-kube-apiserver --listen 127.0.0.1:PORT [--watch-window N] [--tls-cert F --tls-key F]
//! [--rbac FILE [--rbac-role NAME]... [--admin-token T]...] [--state-file F]`: the Kubernetes API test server
//! (see `regent_tests::kube_api`). Prints `listening on http://ADDR` (`https://` with TLS) once
//! it accepts connections, then one line per request.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use regent_tests::kube_api::rbac::Policy;
use regent_tests::kube_api::{serve, serve_tls, tls, ServeOptions};

#[derive(Parser, Debug)]
#[command(name = "regent-kube-apiserver", about = "Kubernetes API test server")]
struct Args {
    /// Address to listen on (127.0.0.1:0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Events per resource kept for resuming watches; older resourceVersions get 410 Gone.
    #[arg(long, default_value_t = 1000)]
    watch_window: usize,
    /// Milliseconds between bookmarks on watches that allow them.
    #[arg(long, default_value_t = 1000)]
    bookmark_interval_ms: u64,
    /// Do not log requests.
    #[arg(long)]
    quiet: bool,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Enforce the Roles (and ClusterRoles) of this YAML file, e.g. kubernetes/rbac.yaml, for
    /// every client token but the admin tokens; refused requests get the real server's 403.
    #[arg(long)]
    rbac: Option<PathBuf>,
    /// Bind only this Role of --rbac (repeatable; default: all of them).
    #[arg(long, requires = "rbac")]
    rbac_role: Vec<String>,
    /// A token exempt from --rbac besides the fixture's and the harness's (repeatable).
    #[arg(long, requires = "rbac")]
    admin_token: Vec<String>,
    /// Start from the state saved in this file (when it exists) and save the state there on
    /// SIGTERM: a restart keeps every object.
    #[arg(long)]
    state_file: Option<PathBuf>,
}

fn fail(message: String) -> ! {
    eprintln!("regent-kube-apiserver: {message}");
    std::process::exit(1);
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let rbac = args.rbac.as_ref().map(|path| {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| fail(format!("--rbac {}: {e}", path.display())));
        Policy::from_yaml(
            &text,
            &path.display().to_string(),
            &args.rbac_role,
            &args.admin_token,
        )
        .unwrap_or_else(|e| fail(format!("--rbac {e}")))
    });
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::server_config(cert, key).unwrap_or_else(|e| fail(e))),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .unwrap_or_else(|e| fail(format!("cannot listen on {}: {e}", args.listen)));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| fail(format!("local address: {e}")));
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("listening on {scheme}://{addr}");
    if let Some(policy) = &rbac {
        let roles: Vec<&str> = policy.roles.iter().map(|r| r.name.as_str()).collect();
        println!("enforcing RBAC: Roles {roles:?} of {}", policy.source);
    }
    let _ = std::io::stdout().flush();
    let opts = ServeOptions {
        watch_window: args.watch_window,
        bookmark_interval: Duration::from_millis(args.bookmark_interval_ms.max(10)),
        log_requests: !args.quiet,
        rbac,
        state_file: args.state_file,
    };
    let served = match tls {
        Some(tls) => serve_tls(listener, tls, opts).await,
        None => serve(listener, opts).await,
    };
    if let Err(e) = served {
        fail(e.to_string());
    }
}

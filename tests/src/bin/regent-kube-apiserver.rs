//! `regent-kube-apiserver --listen 127.0.0.1:PORT [--watch-window N]`: the Kubernetes API test
//! server (see `regent_tests::kube_api`). Prints `listening on http://ADDR` once it accepts
//! connections, then one line per request.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use regent_tests::kube_api::{serve, ServeOptions};

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
    /// TLS certificate (PEM); not supported by this build.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// TLS key (PEM); not supported by this build.
    #[arg(long)]
    tls_key: Option<PathBuf>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if args.tls_cert.is_some() || args.tls_key.is_some() {
        eprintln!("regent-kube-apiserver: TLS is not supported; serve plain HTTP on 127.0.0.1");
        std::process::exit(2);
    }
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "regent-kube-apiserver: cannot listen on {}: {e}",
                args.listen
            );
            std::process::exit(1);
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("regent-kube-apiserver: local address: {e}");
            std::process::exit(1);
        }
    };
    println!("listening on http://{addr}");
    let _ = std::io::stdout().flush();
    let opts = ServeOptions {
        watch_window: args.watch_window,
        bookmark_interval: Duration::from_millis(args.bookmark_interval_ms.max(10)),
        log_requests: !args.quiet,
    };
    if let Err(e) = serve(listener, opts).await {
        eprintln!("regent-kube-apiserver: {e}");
        std::process::exit(1);
    }
}

//! Logging through `tracing`: readable lines by default, JSON with `log.type: json`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Install the global subscriber. `level` is Patroni's (DEBUG, INFO, WARNING, ERROR, CRITICAL).
pub fn init(level: &str, json: bool) {
    let level = match level.to_ascii_uppercase().as_str() {
        "DEBUG" => "debug",
        "WARNING" | "WARN" => "warn",
        "ERROR" | "CRITICAL" | "FATAL" => "error",
        "TRACE" => "trace",
        _ => "info",
    };
    // RUST_LOG wins when set, so operators can raise one module's level.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{level},hyper=warn,reqwest=warn,tokio_postgres=warn"
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    if let Err(e) = result {
        eprintln!("regent: cannot initialise logging: {e}");
    }
}

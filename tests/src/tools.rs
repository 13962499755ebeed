//! External programs some tests drive: the real Patroni and patronictl (interoperability, which
//! `.ci/run` installs from PyPI), and kubectl (against the Kubernetes API test server, which no
//! registry CI reaches ships in a version recent enough). A test that needs one that is missing
//! fails, naming the program and how to get it, rather than passing without having run.

use std::path::PathBuf;

/// Where `.ci/run` installs Patroni (a virtualenv of the system Python).
pub const DEFAULT_PATRONI: &str = "/opt/regent-patroni/bin/patroni";

const PATRONI_INSTALL: &str = "python3 -m venv /opt/regent-patroni && \
     /opt/regent-patroni/bin/pip install 'patroni[etcd3]' psycopg2-binary (.ci/run does this)";

/// The real `patroni`: `$PATRONI_BIN`, else `DEFAULT_PATRONI`. Panics if it is missing.
pub fn patroni_bin() -> PathBuf {
    let path = std::env::var_os("PATRONI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATRONI));
    assert!(
        path.is_file(),
        "the real Patroni is needed at {} (or set $PATRONI_BIN): {PATRONI_INSTALL}",
        path.display()
    );
    path
}

/// The real `patronictl`, next to `patroni_bin()`. Panics if it is missing.
pub fn patronictl_bin() -> PathBuf {
    let path = patroni_bin().with_file_name("patronictl");
    assert!(
        path.is_file(),
        "patronictl is needed at {} (it comes with Patroni): {PATRONI_INSTALL}",
        path.display()
    );
    path
}

/// `kubectl`: `$KUBECTL_BIN`, else the first `kubectl` on `PATH`. Panics if there is none.
pub fn kubectl_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("KUBECTL_BIN").map(PathBuf::from) {
        assert!(
            path.is_file(),
            "KUBECTL_BIN points at {}, which does not exist",
            path.display()
        );
        return path;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("kubectl"))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "kubectl is needed on PATH (or set $KUBECTL_BIN): a recent one (tested with 1.32); \
             Debian's kubernetes-client (1.20) needs the OpenAPI v2 document, which the \
             Kubernetes API test server does not serve"
        )
    })
}

//! Test certificates made with the `openssl` command-line tool, shared by the TLS tests.

use std::path::Path;
use std::process::Command;

const OPENSSL_BIN: &str = "openssl";

/// Run `openssl args...` in `dir`; panics with its stderr when it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new(OPENSSL_BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{OPENSSL_BIN}` ({e}): install the openssl command-line tool \
                 (Debian package `openssl`) to run these tests"
            )
        });
    assert!(
        output.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A self-signed CA: `<name>.crt` and `<name>.key` in `dir`.
pub fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=regent test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A certificate `<name>.crt`/`<name>.key` signed by `ca.crt` in `dir`, with `extensions` (an
/// openssl extension file's text).
pub fn make_leaf(dir: &Path, name: &str, subject: &str, extensions: &str, serial: &str) {
    let ext_file = format!("{name}.ext");
    std::fs::write(dir.join(&ext_file), extensions).expect("write extension file");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            subject,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            serial,
            "-days",
            "2",
            "-extfile",
            &ext_file,
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

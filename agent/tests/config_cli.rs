//! `regent --validate-config`: exit 0 for a valid configuration, exit 2 with
//! `regent: invalid configuration: <key>: <problem>` otherwise.

// A test file: its helpers, too, may stop the test on an unexpected value.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const VALID: &str = r#"
scope: batman
name: postgresql0
restapi:
  listen: 127.0.0.1:8008
  connect_address: 127.0.0.1:8008
etcd3:
  hosts: 127.0.0.1:2379
bootstrap:
  dcs: {ttl: 30, loop_wait: 10, retry_timeout: 10}
  initdb: [{encoding: UTF8}, data-checksums]
postgresql:
  listen: 127.0.0.1:5432
  connect_address: 127.0.0.1:5432
  data_dir: /tmp/regent-config-cli-data
  authentication:
    superuser: {username: postgres, password: zalando}
    replication: {username: replicator, password: rep-pass}
"#;

/// `text` as `patroni.yml` in a scratch directory (removed when the directory is dropped).
fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("patroni.yml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// Run `regent --validate-config <path>` with no inherited `PATRONI_*` variables.
fn validate(path: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_regent"));
    cmd.arg("--validate-config").arg(path);
    for (k, _) in std::env::vars() {
        if k.starts_with("PATRONI_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap_or_else(|e| panic!("run regent: {e}"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn valid_configuration_exits_zero() {
    let (_dir, path) = config_file(VALID);
    let out = validate(&path, &[]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
}

/// (text to find in VALID, its replacement, extra environment, expected stderr fragment)
type Case = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[test]
fn invalid_configurations_exit_two_naming_the_problem() {
    let cases: &[Case] = &[
        (
            "listen: 127.0.0.1:8008\n  connect",
            "listen: 8008\n  connect",
            &[],
            "regent: invalid configuration: restapi.listen: invalid type: integer `8008`, expected a string",
        ),
        (
            "  data_dir: /tmp/regent-config-cli-data\n",
            "",
            &[],
            "regent: invalid configuration: postgresql.data_dir: required setting is missing",
        ),
        (
            "",
            "",
            &[("PATRONI_ZOOKEEPER_HOSTS", "zk:2181")],
            "regent: invalid configuration: unsupported DCS 'zookeeper': Regent supports etcd3 and kubernetes",
        ),
        (
            "etcd3:\n  hosts: 127.0.0.1:2379\n",
            "",
            &[],
            "regent: invalid configuration: no DCS configured: add an etcd3 or kubernetes section",
        ),
        (
            "dcs: {ttl: 30,",
            "dcs: {ttl: abc,",
            &[],
            "regent: invalid configuration: bootstrap.dcs.ttl: invalid value 'abc'",
        ),
        ("scope: batman\n", "scope: [batman\n", &[], "YAML syntax error at line"),
    ];
    for (find, replace, env, want) in cases {
        assert!(VALID.contains(find), "test setup: {find:?}");
        let text = VALID.replacen(find, replace, 1);
        let (_dir, path) = config_file(&text);
        let out = validate(&path, env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{replace:?}: stderr: {err}");
        assert!(
            err.contains(want),
            "{replace:?}:\n  got:  {err}\n  want: {want}"
        );
    }
}

#[test]
fn missing_file_exits_two() {
    let dir = tempfile::tempdir().unwrap();
    let out = validate(&dir.path().join("absent.yml"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
}

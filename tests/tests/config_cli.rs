//! Command-line behaviour that needs nothing but the binary (and an etcd to prove that nothing
//! was written): `--version`, `--help`, `--validate-config`, and refusal of bad configuration
//! files.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use regent_tests::{run_regent, Etcd, MemberConfig, MemberSpec, TestDir};

/// A bad configuration must be refused quickly, not after retries.
const CLI_DEADLINE: Duration = Duration::from_secs(30);
/// Exit code for an invalid configuration.
const EXIT_BAD_CONFIG: i32 = 2;

struct Setup {
    etcd: Etcd,
    spec: MemberSpec,
    config: MemberConfig,
    config_path: PathBuf,
    _dir: TestDir,
}

async fn setup() -> Setup {
    let etcd = Etcd::launch().await;
    let dir = TestDir::new("cli");
    let spec = MemberSpec::new(
        "cli",
        "cli-0",
        dir.postgres_subdir("cli-0"),
        vec![etcd.client_addr()],
    );
    let config = MemberConfig::patroni(&spec);
    let config_path = spec.member_dir.join("regent.yml");
    Setup {
        etcd,
        spec,
        config,
        config_path,
        _dir: dir,
    }
}

fn describe(output: &Output) -> String {
    format!(
        "exit status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Entries of the member directory other than the configuration file.
fn stray_files(member_dir: &Path, config_path: &Path) -> Vec<String> {
    std::fs::read_dir(member_dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", member_dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path != config_path)
        .map(|path| path.display().to_string())
        .collect()
}

async fn assert_nothing_written(setup: &Setup, context: &str) {
    assert!(
        !setup.spec.data_dir().exists(),
        "{context}: data_dir {} was created",
        setup.spec.data_dir().display()
    );
    let strays = stray_files(&setup.spec.member_dir, &setup.config_path);
    assert!(
        strays.is_empty(),
        "{context}: files written next to the config: {strays:?}"
    );
    let keys = setup.etcd.get_prefix("/service/").await;
    assert!(keys.is_empty(), "{context}: keys written to etcd: {keys:?}");
}

/// Run both `regent --validate-config FILE` and `regent FILE` on the file as written, and check
/// that each exits 2 with a message naming every string of `must_mention`, writing nothing.
async fn assert_rejected(setup: &Setup, must_mention: &[&str]) {
    let file = setup.config_path.as_os_str();
    for args in [
        vec![std::ffi::OsStr::new("--validate-config"), file],
        vec![file],
    ] {
        let context = format!("regent {args:?}");
        let output = run_regent(&args, &setup.spec.member_dir, CLI_DEADLINE).await;
        assert_eq!(
            output.status.code(),
            Some(EXIT_BAD_CONFIG),
            "{context} must exit {EXIT_BAD_CONFIG}; {}",
            describe(&output)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        for needle in must_mention {
            assert!(
                stderr.contains(needle),
                "{context}: stderr must mention {needle:?}; {}",
                describe(&output)
            );
        }
        assert_nothing_written(setup, &context).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_prints_the_version_and_exits_zero() {
    let dir = TestDir::new("cli-version");
    let output = run_regent(["--version"], dir.path(), CLI_DEADLINE).await;
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(env!("CARGO_PKG_VERSION")),
        "--version must print the workspace version {}; {}",
        env!("CARGO_PKG_VERSION"),
        describe(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_names_regent_ctl() {
    let dir = TestDir::new("cli-help");
    let output = run_regent(["--help"], dir.path(), CLI_DEADLINE).await;
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("regent ctl <COMMAND>"),
        "--help must point to regent ctl; {}",
        describe(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_config_accepts_a_good_file_without_starting_anything() {
    let setup = setup().await;
    setup.config.write_to(&setup.config_path);
    let output = run_regent(
        [
            std::ffi::OsStr::new("--validate-config"),
            setup.config_path.as_os_str(),
        ],
        &setup.spec.member_dir,
        CLI_DEADLINE,
    )
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_nothing_written(&setup, "--validate-config on a good file").await;
    let api = std::net::TcpStream::connect(("127.0.0.1", setup.spec.api_port));
    assert!(
        api.is_err(),
        "something listens on the REST API port after validation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_type_for_data_dir_is_refused() {
    let mut setup = setup().await;
    setup.config.set("postgresql.data_dir", vec![1, 2]);
    setup.config.write_to(&setup.config_path);
    assert_rejected(&setup, &["data_dir"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_type_for_restapi_listen_is_refused() {
    let mut setup = setup().await;
    setup
        .config
        .set("restapi.listen", vec!["127.0.0.1", "8008"]);
    setup.config.write_to(&setup.config_path);
    assert_rejected(&setup, &["listen"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_tls_options_of_the_superuser_are_refused() {
    let mut setup = setup().await;
    setup.config.set(
        "postgresql.authentication.superuser.sslmode",
        "verify-everything",
    );
    setup.config.write_to(&setup.config_path);
    assert_rejected(&setup, &["postgresql.authentication.superuser.sslmode"]).await;

    setup
        .config
        .set("postgresql.authentication.superuser.sslmode", "verify-full");
    setup.config.set(
        "postgresql.authentication.superuser.sslrootcert",
        "/nonexistent/root.crt",
    );
    setup.config.write_to(&setup.config_path);
    assert_rejected(
        &setup,
        &[
            "postgresql.authentication.superuser.sslrootcert",
            "/nonexistent/root.crt",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_data_dir_is_refused() {
    let mut setup = setup().await;
    assert!(setup.config.remove("postgresql.data_dir").is_some());
    setup.config.write_to(&setup.config_path);
    assert_rejected(&setup, &["data_dir"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yaml_syntax_error_reports_line_and_column() {
    let setup = setup().await;
    // Line 4 holds a second `:` where a plain scalar ends a mapping value.
    let text = format!(
        "scope: cli\nname: cli-0\nrestapi:\n  listen: 127.0.0.1:{}: oops\n  connect_address: 127.0.0.1:{}\n\
         etcd3:\n  hosts: ['{}']\npostgresql:\n  data_dir: {}\n",
        setup.spec.api_port,
        setup.spec.api_port,
        setup.etcd.client_addr(),
        setup.spec.data_dir().display()
    );
    std::fs::write(&setup.config_path, text).expect("write config");
    regent_tests::process::chown_to_postgres(&setup.config_path);
    assert_rejected(&setup, &["line 4", "column"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_dcs_section_is_refused() {
    let mut setup = setup().await;
    setup.config.remove("etcd3");
    setup.config.set(
        "zookeeper.hosts",
        vec![format!("127.0.0.1:{}", regent_tests::free_port())],
    );
    setup.config.write_to(&setup.config_path);
    assert_rejected(&setup, &["zookeeper"]).await;
}

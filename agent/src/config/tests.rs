use super::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Modelled on Patroni's postgres0.yml, with etcd3.
const POSTGRES0: &str = r#"
scope: batman
namespace: /service/
name: postgresql0

restapi:
  listen: 127.0.0.1:8008
  connect_address: 127.0.0.1:8008
  authentication:
    username: username
    password: password

ctl:
  insecure: false

etcd3:
  host: 127.0.0.1:2379

bootstrap:
  dcs:
    ttl: 30
    loop_wait: 10
    retry_timeout: 10
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      pg_hba:
      - host replication replicator 127.0.0.1/32 md5
      - host all all 0.0.0.0/0 md5
      parameters:
        wal_level: hot_standby
        hot_standby: "on"
        max_connections: 100
        max_wal_senders: 10
        archive_mode: "on"
        archive_timeout: 1800s
        archive_command: mkdir -p ../wal_archive && test ! -f ../wal_archive/%f && cp %p ../wal_archive/%f
      recovery_conf:
        restore_command: cp ../wal_archive/%f %p

  # 'initdb' options: a list, some with values
  initdb:
  - encoding: UTF8
  - data-checksums

  pg_hba:
  - host replication replicator 127.0.0.1/32 md5
  - host all all 0.0.0.0/0 md5

postgresql:
  listen: 127.0.0.1:5432
  connect_address: 127.0.0.1:5432
  data_dir: data/postgresql0
  pgpass: /tmp/pgpass0
  authentication:
    replication:
      username: replicator
      password: rep-pass
    superuser:
      username: postgres
      password: zalando
    rewind:
      username: rewind_user
      password: rewind_password
  parameters:
    unix_socket_directories: '..'

#watchdog:
#  mode: automatic

tags:
    noloadbalance: false
    clonefrom: false
    nosync: false
    nostream: false
"#;

/// The smallest valid configuration, for error tests that change one thing.
const MINIMAL: &str = r#"
scope: s
name: n
restapi: {listen: "127.0.0.1:8008", connect_address: "127.0.0.1:8008"}
etcd3: {hosts: "127.0.0.1:2379"}
postgresql:
  listen: 127.0.0.1:5432
  connect_address: 127.0.0.1:5432
  data_dir: /tmp/d
  authentication:
    superuser: {username: postgres}
    replication: {username: replicator}
"#;

fn no_env() -> BTreeMap<String, String> {
    BTreeMap::new()
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A scratch directory, removed on drop.
fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("create a temporary directory: {e}"))
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p
}

fn load_str(text: &str, e: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
    let dir = temp_dir();
    let path = write(&dir, "patroni.yml", text);
    load_with_env(Some(&path), e)
}

fn must(r: Result<Config, ConfigError>) -> Config {
    r.unwrap_or_else(|e| panic!("config should load: {e}"))
}

fn error_text(r: Result<Config, ConfigError>) -> String {
    match r {
        Ok(c) => panic!("config should not load: {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn patroni_postgres0_loads() {
    let cfg = must(load_str(POSTGRES0, &no_env()));
    assert_eq!(cfg.scope, "batman");
    assert_eq!(cfg.name, "postgresql0");
    assert_eq!(cfg.namespace, "/service/");
    assert_eq!(cfg.base_path(), "/service/batman");
    assert_eq!(cfg.log.level, "INFO");
    assert_eq!(cfg.log.type_, LogType::Plain);
    assert_eq!(cfg.restapi.listen, "127.0.0.1:8008");
    assert_eq!(
        cfg.restapi.authentication,
        Some(BasicAuth {
            username: "username".into(),
            password: "password".into()
        })
    );
    assert!(!cfg.ctl.insecure);
    match &cfg.dcs {
        DcsConfig::Etcd3(e) => {
            assert_eq!(e.hosts, vec!["127.0.0.1:2379"]);
            assert_eq!(e.protocol, "http");
            assert_eq!(e.endpoints(), vec!["http://127.0.0.1:2379"]);
        }
        other => panic!("expected etcd3, got {other:?}"),
    }
    assert_eq!(
        cfg.bootstrap.initdb,
        vec!["--encoding=UTF8", "--data-checksums"]
    );
    assert_eq!(cfg.bootstrap.pg_hba.len(), 2);
    assert_eq!(
        cfg.bootstrap.dcs["postgresql"]["parameters"]["max_connections"],
        json!(100)
    );
    let (dynamic, warnings) = cfg.bootstrap_dynamic();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(dynamic.use_pg_rewind);
    assert_eq!(dynamic.ttl, 30);
    assert_eq!(cfg.postgresql.data_dir, PathBuf::from("data/postgresql0"));
    assert_eq!(cfg.postgresql.pgpass, Some(PathBuf::from("/tmp/pgpass0")));
    assert_eq!(cfg.postgresql.authentication.superuser.username, "postgres");
    assert_eq!(
        cfg.postgresql.authentication.superuser.password.as_deref(),
        Some("zalando")
    );
    assert_eq!(
        cfg.postgresql.authentication.replication.username,
        "replicator"
    );
    assert_eq!(
        cfg.postgresql
            .authentication
            .rewind
            .as_ref()
            .map(|r| r.username.as_str()),
        Some("rewind_user")
    );
    assert_eq!(
        cfg.postgresql.parameters.get("unix_socket_directories"),
        Some(&json!(".."))
    );
    assert_eq!(cfg.postgresql.pg_ctl_timeout, 60);
    assert!(!cfg.postgresql.use_unix_socket);
    assert_eq!(cfg.postgresql.use_slots, None);
    assert!(!cfg.tags.nofailover() && !cfg.tags.nosync());
    assert_eq!(cfg.tags.failover_priority(), 1);
    assert!(cfg.citus.is_none());
    assert_eq!(cfg.watchdog, crate::watchdog::WatchdogConfig::default());
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);

    assert_eq!(
        cfg.postgres_listen_host_port(),
        (vec!["127.0.0.1".to_string()], 5432)
    );
    assert_eq!(cfg.pg_connect_host_port(), ("127.0.0.1".to_string(), 5432));
    assert_eq!(cfg.rest_listen_addr(), ("127.0.0.1".to_string(), 8008));
    assert_eq!(cfg.conn_url(), "postgres://127.0.0.1:5432/postgres");
    assert_eq!(cfg.api_url(), "http://127.0.0.1:8008/patroni");
}

#[test]
fn citus_regent_keys() {
    let text = format!(
        "{MINIMAL}citus:\n  group: 0\n  database: citus\n  minimum_workers: '2'\n  provision:\n    \
         coordinator: /etc/regent/provision/coordinator\n    \
         worker:\n    - /etc/regent/provision/10-worker.sql\n    - ' /etc/regent/provision/20-worker.sql '\n\
         bootstrap:\n  dcs:\n    synchronous_mode: false\n"
    );
    let cfg = must(load_str(&text, &no_env()));
    let citus = cfg
        .citus
        .clone()
        .unwrap_or_else(|| panic!("citus section lost"));
    assert_eq!(citus.minimum_workers, 2);
    assert_eq!(
        citus.provision,
        CitusProvision {
            coordinator: vec![PathBuf::from("/etc/regent/provision/coordinator")],
            worker: vec![
                PathBuf::from("/etc/regent/provision/10-worker.sql"),
                PathBuf::from("/etc/regent/provision/20-worker.sql"),
            ],
        }
    );
    assert_eq!(
        citus.provision_scripts(),
        [PathBuf::from("/etc/regent/provision/coordinator")]
    );
    let worker = CitusConfig { group: 3, ..citus };
    assert_eq!(worker.provision_scripts().len(), 2);
    // An explicit synchronous_mode wins over the Citus default.
    assert_eq!(cfg.bootstrap.dcs["synchronous_mode"], json!(false));
}

#[test]
fn citus_regent_keys_from_the_environment() {
    let vars = env(&[
        ("PATRONI_CITUS_GROUP", "1"),
        ("PATRONI_CITUS_DATABASE", "citus"),
        ("PATRONI_CITUS_MINIMUM_WORKERS", "3"),
        ("PATRONI_CITUS_PROVISION_WORKER", "[/p/a.sql, /p/b.sql]"),
    ]);
    let cfg = must(load_str(MINIMAL, &vars));
    let citus = cfg.citus.unwrap_or_else(|| panic!("citus section lost"));
    assert_eq!((citus.group, citus.minimum_workers), (1, 3));
    assert_eq!(
        citus.provision.worker,
        [PathBuf::from("/p/a.sql"), PathBuf::from("/p/b.sql")]
    );
    assert!(citus.provision.coordinator.is_empty());
    let bad = env(&[
        ("PATRONI_CITUS_GROUP", "1"),
        ("PATRONI_CITUS_DATABASE", "citus"),
        ("PATRONI_CITUS_MINIMUM_WORKERS", "some"),
    ]);
    let err = error_text(load_str(MINIMAL, &bad));
    assert!(
        err.contains("citus.minimum_workers: invalid value 'some'"),
        "{err}"
    );
}

#[test]
fn kubernetes_section_with_defaults_and_citus() {
    let text = MINIMAL.replace(
        "etcd3: {hosts: \"127.0.0.1:2379\"}",
        "kubernetes:\n  labels: {application: patroni}\n  use_endpoints: 'on'\n  retriable_http_codes: 401\ncitus:\n  group: 1\n  database: citus",
    );
    let cfg = must(load_str(&text, &no_env()));
    let DcsConfig::Kubernetes(k) = &cfg.dcs else {
        panic!("expected kubernetes, got {:?}", cfg.dcs)
    };
    assert_eq!(k.namespace, "default");
    assert_eq!(
        k.labels.get("application").map(String::as_str),
        Some("patroni")
    );
    assert_eq!(
        (k.scope_label.as_str(), k.role_label.as_str()),
        ("cluster-name", "role")
    );
    assert_eq!(
        (
            k.leader_label_value.as_str(),
            k.follower_label_value.as_str(),
            k.standby_leader_label_value.as_str()
        ),
        ("primary", "replica", "primary")
    );
    assert!(k.use_endpoints && !k.bypass_api_service);
    assert_eq!(k.ports, vec![json!({"port": 5432})]);
    assert_eq!(k.retriable_http_codes, vec![401]);
    assert_eq!(
        cfg.citus,
        Some(CitusConfig {
            group: 1,
            database: "citus".into(),
            minimum_workers: 0,
            provision: CitusProvision::default(),
        })
    );
    assert_eq!(cfg.bootstrap.dcs["synchronous_mode"], json!(true));
}

#[test]
fn top_level_namespace_overrides_kubernetes_namespace() {
    let text = MINIMAL.replace(
        "etcd3: {hosts: \"127.0.0.1:2379\"}",
        "namespace: prod\nkubernetes: {namespace: other}",
    );
    let cfg = must(load_str(&text, &no_env()));
    let DcsConfig::Kubernetes(k) = &cfg.dcs else {
        panic!("expected kubernetes")
    };
    assert_eq!(k.namespace, "prod");
}

#[test]
fn etcd3_host_forms() {
    type Expected<'a> = Result<(Vec<&'a str>, &'a str, Option<&'a str>), &'a str>;
    let cases: &[(&str, Expected)] = &[
        (
            "{host: '10.0.0.1:2379'}",
            Ok((vec!["10.0.0.1:2379"], "http", None)),
        ),
        ("{host: etcd}", Ok((vec!["etcd:2379"], "http", None))),
        (
            "{hosts: 'a:2379, b:2380'}",
            Ok((vec!["a:2379", "b:2380"], "http", None)),
        ),
        (
            "{hosts: [a, 'b:2380'], port: 2000, protocol: https}",
            Ok((vec!["a:2000", "b:2380"], "https", None)),
        ),
        (
            "{hosts: ['https://a:2379']}",
            Ok((vec!["a:2379"], "https", None)),
        ),
        (
            "{hosts: ['[::1]:2379']}",
            Ok((vec!["[::1]:2379"], "http", None)),
        ),
        (
            "{url: 'https://u:p@e.example:2379/'}",
            Ok((vec!["e.example:2379"], "https", Some("u"))),
        ),
        (
            "{proxy: 'http://proxy:8080'}",
            Ok((vec!["proxy:8080"], "http", None)),
        ),
        ("{}", Err("etcd3.hosts: no etcd endpoints")),
        ("{hosts: [1]}", Err("etcd3.hosts[0]: expected host:port")),
        ("{host: 'a:b'}", Err("etcd3.host: invalid port")),
        (
            "{host: a, protocol: ftp}",
            Err("etcd3.protocol: invalid value 'ftp'"),
        ),
        (
            "{srv: example.org}",
            Err("etcd3.srv: DNS SRV discovery is not supported"),
        ),
    ];
    for (section, want) in cases {
        let text = MINIMAL.replace("{hosts: \"127.0.0.1:2379\"}", section);
        let got = load_str(&text, &no_env());
        match want {
            Ok((hosts, protocol, user)) => {
                let cfg = must(got);
                let DcsConfig::Etcd3(e) = &cfg.dcs else {
                    panic!("expected etcd3")
                };
                assert_eq!(&e.hosts, hosts, "{section}");
                assert_eq!(&e.protocol, protocol, "{section}");
                assert_eq!(e.username.as_deref(), *user, "{section}");
            }
            Err(prefix) => {
                let msg = error_text(got);
                assert!(msg.starts_with(prefix), "{section}: {msg}");
            }
        }
    }
}

#[test]
fn env_overrides_file_values() {
    let e = env(&[
        ("PATRONI_NAME", "from-env"),
        ("PATRONI_RESTAPI_LISTEN", "0.0.0.0:8009"),
        ("PATRONI_RESTAPI_PASSWORD", "secret"),
        ("PATRONI_POSTGRESQL_DATA_DIR", "/var/lib/pg"),
        ("PATRONI_SUPERUSER_PASSWORD", "su-pass"),
        ("PATRONI_REWIND_USERNAME", "rewinder"),
        ("PATRONI_ETCD3_HOSTS", "10.0.0.1:2379,10.0.0.2:2379"),
        ("PATRONI_ETCD3_PROTOCOL", "https"),
        ("PATRONI_LOG_LEVEL", "debug"),
        ("PATRONI_LOG_TYPE", "json"),
        ("PATRONI_CTL_INSECURE", "yes"),
        ("PATRONI_CITUS_GROUP", "0"),
        ("PATRONI_CITUS_DATABASE", "citus"),
        ("NOT_PATRONI", "ignored"),
    ]);
    let cfg = must(load_str(POSTGRES0, &e));
    assert_eq!(cfg.name, "from-env");
    assert_eq!(cfg.scope, "batman");
    assert_eq!(cfg.restapi.listen, "0.0.0.0:8009");
    assert_eq!(cfg.rest_listen_addr(), ("0.0.0.0".to_string(), 8009));
    // Merged into the file's authentication, not replacing it.
    assert_eq!(
        cfg.restapi.authentication,
        Some(BasicAuth {
            username: "username".into(),
            password: "secret".into()
        })
    );
    assert_eq!(cfg.postgresql.data_dir, PathBuf::from("/var/lib/pg"));
    let auth = &cfg.postgresql.authentication;
    assert_eq!(auth.superuser.username, "postgres");
    assert_eq!(auth.superuser.password.as_deref(), Some("su-pass"));
    assert_eq!(
        auth.rewind.as_ref().map(|r| r.username.as_str()),
        Some("rewinder")
    );
    assert_eq!(
        auth.rewind.as_ref().and_then(|r| r.password.as_deref()),
        Some("rewind_password")
    );
    let DcsConfig::Etcd3(etcd) = &cfg.dcs else {
        panic!("expected etcd3")
    };
    // `hosts` is preferred over the file's `host`, as in Patroni.
    assert_eq!(etcd.hosts, vec!["10.0.0.1:2379", "10.0.0.2:2379"]);
    assert_eq!(etcd.protocol, "https");
    assert_eq!(cfg.log.level, "DEBUG");
    assert_eq!(cfg.log.type_, LogType::Json);
    assert!(cfg.ctl.insecure);
    assert_eq!(
        cfg.citus,
        Some(CitusConfig {
            group: 0,
            database: "citus".into(),
            minimum_workers: 0,
            provision: CitusProvision::default(),
        })
    );
}

#[test]
fn env_only_configuration() {
    let e = env(&[
        ("PATRONI_SCOPE", "demo"),
        ("PATRONI_NAME", "pod-0"),
        ("PATRONI_RESTAPI_LISTEN", "0.0.0.0:8008"),
        ("PATRONI_RESTAPI_CONNECT_ADDRESS", "10.1.2.3:8008"),
        ("PATRONI_POSTGRESQL_LISTEN", "0.0.0.0:5432"),
        ("PATRONI_POSTGRESQL_CONNECT_ADDRESS", "10.1.2.3:5432"),
        ("PATRONI_POSTGRESQL_DATA_DIR", "/home/postgres/pgdata"),
        ("PATRONI_SUPERUSER_USERNAME", "postgres"),
        ("PATRONI_REPLICATION_USERNAME", "standby"),
        ("PATRONI_KUBERNETES_NAMESPACE", "db"),
        (
            "PATRONI_KUBERNETES_LABELS",
            "{application: patroni, cluster: demo}",
        ),
        ("PATRONI_KUBERNETES_USE_ENDPOINTS", "true"),
        ("PATRONI_KUBERNETES_POD_IP", "10.1.2.3"),
        (
            "PATRONI_KUBERNETES_PORTS",
            "[{\"name\": \"postgresql\", \"port\": 5432}]",
        ),
        ("PATRONI_KUBERNETES_BYPASS_API_SERVICE", "off"),
    ]);
    let cfg = must(load_with_env(None, &e));
    assert_eq!((cfg.scope.as_str(), cfg.name.as_str()), ("demo", "pod-0"));
    let DcsConfig::Kubernetes(k) = &cfg.dcs else {
        panic!("expected kubernetes")
    };
    assert_eq!(k.namespace, "db");
    assert_eq!(k.labels.len(), 2);
    assert!(k.use_endpoints && !k.bypass_api_service);
    assert_eq!(k.pod_ip.as_deref(), Some("10.1.2.3"));
    assert_eq!(k.ports, vec![json!({"name": "postgresql", "port": 5432})]);
    assert_eq!(cfg.conn_url(), "postgres://10.1.2.3:5432/postgres");
}

#[test]
fn patroni_configuration_variable_replaces_everything() {
    let e = env(&[
        ("PATRONI_CONFIGURATION", MINIMAL),
        // Ignored when the whole configuration comes from PATRONI_CONFIGURATION.
        ("PATRONI_NAME", "ignored"),
        ("PATRONI_ZOOKEEPER_HOSTS", "zk:2181"),
    ]);
    let cfg = must(load_with_env(None, &e));
    assert_eq!(cfg.name, "n");

    let e = env(&[("PATRONI_CONFIGURATION", "scope: [unclosed\n")]);
    let msg = error_text(load_with_env(None, &e));
    assert!(
        msg.starts_with("PATRONI_CONFIGURATION: YAML syntax error at line"),
        "{msg}"
    );
}

#[test]
fn directory_is_merged_in_name_order() {
    let dir = temp_dir();
    write(&dir, "10-base.yml", POSTGRES0);
    write(
        &dir,
        "20-local.yaml",
        "name: postgresql9\npostgresql:\n  listen: 127.0.0.1:5439\n  parameters: {work_mem: 8MB}\ntags: {nofailover: true}\n",
    );
    write(&dir, "30-drop.yml", "ctl: ~\n");
    write(&dir, "README.md", "not: [yaml");
    let cfg = must(load_with_env(Some(dir.path()), &no_env()));
    assert_eq!(cfg.name, "postgresql9");
    assert_eq!(cfg.postgresql.listen, "127.0.0.1:5439");
    // Deep merge keeps sibling keys from earlier files.
    assert_eq!(cfg.postgresql.connect_address, "127.0.0.1:5432");
    assert_eq!(
        cfg.postgresql.parameters.get("work_mem"),
        Some(&json!("8MB"))
    );
    assert_eq!(
        cfg.postgresql.parameters.get("unix_socket_directories"),
        Some(&json!(".."))
    );
    assert!(cfg.tags.nofailover());
    assert!(!cfg.ctl.insecure);
}

#[test]
fn invalid_configurations_name_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        // (find, replace, expected error prefix)
        (
            "restapi: {listen: \"127.0.0.1:8008\",",
            "restapi: {listen: 8008,",
            "restapi.listen: invalid type: integer `8008`, expected a string",
        ),
        (
            "  data_dir: /tmp/d\n",
            "",
            "postgresql.data_dir: required setting is missing",
        ),
        ("scope: s\n", "", "scope: required setting is missing"),
        (
            "    replication: {username: replicator}\n",
            "",
            "postgresql.authentication.replication: required setting is missing",
        ),
        (
            "superuser: {username: postgres}",
            "superuser: {password: x}",
            "postgresql.authentication.superuser.username: required setting is missing",
        ),
        (
            "  data_dir: /tmp/d\n",
            "  data_dir: /tmp/d\n  parameters: [max_connections]\n",
            "postgresql.parameters: invalid type: sequence",
        ),
        (
            "  data_dir: /tmp/d\n",
            "  data_dir: /tmp/d\n  pg_ctl_timeout: soon\n",
            "postgresql.pg_ctl_timeout: invalid value 'soon'",
        ),
        (
            "  data_dir: /tmp/d\n",
            "  data_dir: /tmp/d\n  pg_hba: [1, 2]\n",
            "postgresql.pg_hba[0]: invalid type: integer",
        ),
        (
            "name: n\n",
            "name: n\nbootstrap: {dcs: {ttl: abc}}\n",
            "bootstrap.dcs.ttl: invalid value 'abc'",
        ),
        (
            "name: n\n",
            "name: n\nbootstrap: {dcs: {postgresql: {use_slots: maybe}}}\n",
            "bootstrap.dcs.postgresql.use_slots: invalid value",
        ),
        (
            "name: n\n",
            "name: n\nbootstrap: {dcs: [ttl]}\n",
            "bootstrap.dcs: invalid value",
        ),
        (
            "name: n\n",
            "name: n\nbootstrap: {initdb: [{pgdata: /x}]}\n",
            "bootstrap.initdb: option 'pgdata' is not allowed",
        ),
        (
            "name: n\n",
            "name: n\nbootstrap: {method: wal_e}\n",
            "bootstrap.wal_e: bootstrap.method is 'wal_e'",
        ),
        (
            "name: n\n",
            "name: n\nlog: {level: LOUD}\n",
            "log.level: invalid value 'LOUD'",
        ),
        (
            "name: n\n",
            "name: n\nlog: {type: xml}\n",
            "log.type: invalid value 'xml'",
        ),
        (
            "name: n\n",
            "name: n\nctl: {insecure: sometimes}\n",
            "ctl.insecure: invalid value 'sometimes'",
        ),
        (
            "connect_address: \"127.0.0.1:8008\"",
            "connect_address: \"*:8008\"",
            "restapi.connect_address: '*:8008' must name exactly one",
        ),
        (
            "listen: \"127.0.0.1:8008\"",
            "listen: \"127.0.0.1\"",
            "restapi.listen: '127.0.0.1' has no port",
        ),
        (
            "  listen: 127.0.0.1:5432\n",
            "  listen: 127.0.0.1:99999\n",
            "postgresql.listen: invalid port '99999'",
        ),
        (
            "name: n\n",
            "name: n\ncitus: {group: -1, database: citus}\n",
            "citus.group: invalid value -1",
        ),
        (
            "name: n\n",
            "name: n\ncitus: {group: 1}\n",
            "citus.database: required setting is missing",
        ),
        (
            "name: n\n",
            "name: n\ncitus: {group: 0, database: citus, minimum_workers: -2}\n",
            "citus.minimum_workers: invalid value -2, expected an integer >= 0",
        ),
        (
            "name: n\n",
            "name: n\ncitus: {group: 0, database: citus, minimum_workers: many}\n",
            "citus.minimum_workers: invalid value 'many'",
        ),
        (
            "name: n\n",
            "name: n\ncitus: {group: 0, database: citus, provision: [a.sql]}\n",
            "citus.provision: expected a mapping with coordinator and/or worker",
        ),
        (
            "name: n\n",
            "name: n\ncitus: {group: 0, database: citus, provision: {workers: [a.sql]}}\n",
            "citus.provision.workers: unknown key, expected coordinator or worker",
        ),
        (
            "name: n\n",
            "name: n\ncitus: {group: 0, database: citus, provision: {worker: [a.sql, 3]}}\n",
            "citus.provision.worker: invalid value 3, expected a path or a list of paths",
        ),
        (
            "name: n\n",
            "name: n\ncitus: {group: 0, database: citus, provision: {coordinator: ''}}\n",
            "citus.provision.coordinator: invalid value '', expected a path",
        ),
        (
            "name: n\n",
            "name: n\ncitus: {group: 0, database: citus, provision: {coordinator: {a: b}}}\n",
            "citus.provision.coordinator: invalid value",
        ),
        (
            "name: n\n",
            "name: n\nzookeeper: {hosts: ['zk:2181']}\n",
            "unsupported DCS 'zookeeper': Regent supports etcd3 and kubernetes",
        ),
        (
            "name: n\n",
            "name: n\netcd: {host: 'e:2379'}\n",
            "unsupported DCS 'etcd': Regent supports etcd3 and kubernetes",
        ),
        (
            "etcd3: {hosts: \"127.0.0.1:2379\"}\n",
            "",
            "no DCS configured: add an etcd3 or kubernetes section",
        ),
        (
            "name: n\n",
            "name: n\nkubernetes: {}\n",
            "both etcd3 and kubernetes are configured",
        ),
        (
            "etcd3: {hosts: \"127.0.0.1:2379\"}",
            "namespace: /service\nkubernetes: {}",
            "kubernetes.namespace: '/service' is not a Kubernetes namespace",
        ),
        (
            "etcd3: {hosts: \"127.0.0.1:2379\"}",
            "kubernetes: {ports: [{port: http}]}",
            "kubernetes.ports: item 0: expected a mapping with a valid 'port'",
        ),
        (
            "name: n\n",
            "name: n\ncitus: {database: citus}\n",
            "citus.group: required setting is missing",
        ),
        (
            "listen: \"127.0.0.1:8008\"",
            "listen: \" \"",
            "restapi.listen: empty address, expected host:port",
        ),
        (
            "etcd3: {hosts: \"127.0.0.1:2379\"}",
            "etcd3: {hosts: 5}",
            "etcd3.hosts: expected a list or a comma-separated string, got 5",
        ),
        (
            "etcd3: {hosts: \"127.0.0.1:2379\"}",
            "etcd3: {url: \"http://:2379\"}",
            "etcd3.url: 'http://:2379' has no host",
        ),
        (
            "etcd3: {hosts: \"127.0.0.1:2379\"}",
            "etcd3: {hosts: \"127.0.0.1:2379\", protocol: ftp}",
            "etcd3.protocol: invalid value 'ftp', expected 'http' or 'https'",
        ),
        (
            "name: n\n",
            "name: n\nbootstrap: {initdb: [{encoding: [a]}]}\n",
            "bootstrap.initdb: item 0: option 'encoding' must have a scalar value, got [\"a\"]",
        ),
        (
            "name: n\n",
            "name: n\nbootstrap: {initdb: ['--']}\n",
            "bootstrap.initdb: item 0: expected an option name or a single `name: value` pair, got '--'",
        ),
        (
            "name: n\n",
            "name: n\nbootstrap: {initdb: {'-': x}}\n",
            "bootstrap.initdb: empty option name",
        ),
        (
            "name: n\n",
            "name: n\nbootstrap: {initdb: data-checksums}\n",
            "bootstrap.initdb: invalid value 'data-checksums', expected a list or a mapping of options",
        ),
    ];
    for (find, replace, want) in cases {
        assert!(
            MINIMAL.contains(find),
            "test setup: {find:?} not in MINIMAL"
        );
        let text = MINIMAL.replacen(find, replace, 1);
        let msg = error_text(load_str(&text, &no_env()));
        assert!(
            msg.starts_with(want),
            "{replace:?}\n  got:  {msg}\n  want: {want}"
        );
    }
    // And the unmodified minimal config is fine.
    must(load_str(MINIMAL, &no_env()));
}

#[test]
fn yaml_error_without_a_location_names_the_source() {
    let msg = Config::from_yaml_str("x: {<<: 5}\n")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.starts_with("<config>: YAML error: "), "{msg}");
}

#[test]
fn unsupported_dcs_from_environment() {
    let msg = error_text(load_str(
        MINIMAL,
        &env(&[("PATRONI_CONSUL_HOST", "127.0.0.1:8500")]),
    ));
    assert_eq!(
        msg,
        "unsupported DCS 'consul': Regent supports etcd3 and kubernetes"
    );
}

#[test]
fn yaml_syntax_error_reports_line_and_column() {
    let text = "scope: s\nname: n\nrestapi:\n  listen: [oops\n  connect_address: x\n";
    let dir = temp_dir();
    let path = write(&dir, "bad.yml", text);
    match load_with_env(Some(&path), &no_env()) {
        Err(ConfigError::Syntax {
            path: p,
            line,
            column,
            msg,
        }) => {
            assert_eq!(p, path);
            assert!(line >= 4, "line {line}: {msg}");
            assert!(column > 0);
            let shown = ConfigError::Syntax {
                path: p,
                line,
                column,
                msg,
            }
            .to_string();
            assert!(
                shown.contains(&format!(
                    "bad.yml: YAML syntax error at line {line}, column {column}: "
                )),
                "{shown}"
            );
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn io_and_shape_errors() {
    let dir = temp_dir();
    let missing = dir.path().join("nope.yml");
    match load_with_env(Some(&missing), &no_env()) {
        Err(e @ ConfigError::Io { .. }) => {
            assert!(e.to_string().starts_with("cannot read "), "{e}")
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
    let list = write(&dir, "list.yml", "- a\n- b\n");
    let msg = error_text(load_with_env(Some(&list), &no_env()));
    assert!(
        msg.contains("expected a YAML mapping at the top level"),
        "{msg}"
    );
    let empty = write(&dir, "empty.yml", "");
    let msg = error_text(load_with_env(Some(&empty), &no_env()));
    assert!(msg.contains("expected a YAML mapping"), "{msg}");
}

#[test]
fn tool_options_and_paths() {
    let text = MINIMAL.replacen(
        "  data_dir: /tmp/d\n",
        "  data_dir: /tmp/d\n  bin_dir: /opt/pg/bin\n  bin_name: {pg_ctl: pg_ctl.sh}\n  basebackup:\n  - verbose\n  - max-rate: 100M\n  - pgdata: /elsewhere\n  callbacks: {on_role_change: /bin/true, on_nothing: /bin/false}\n",
        1,
    )
    .replacen("name: n\n", "name: n\nbootstrap:\n  initdb: {encoding: UTF8, locale: C.UTF-8}\n", 1)
    .replacen("connect_address: \"127.0.0.1:8008\"}", "connect_address: \"127.0.0.1:8008\", certfile: /etc/ssl/c.pem}", 1);
    let cfg = must(load_str(&text, &no_env()));
    let mut initdb = cfg.bootstrap.initdb.clone();
    initdb.sort();
    assert_eq!(initdb, vec!["--encoding=UTF8", "--locale=C.UTF-8"]);
    assert_eq!(
        cfg.postgresql.basebackup,
        vec!["--verbose", "--max-rate=100M"]
    );
    assert!(
        cfg.warnings
            .iter()
            .any(|w| w.starts_with("postgresql.basebackup: option 'pgdata'")),
        "{:?}",
        cfg.warnings
    );
    assert!(
        cfg.warnings
            .iter()
            .any(|w| w.starts_with("postgresql.callbacks.on_nothing")),
        "{:?}",
        cfg.warnings
    );
    assert_eq!(cfg.bin("pg_ctl"), PathBuf::from("/opt/pg/bin/pg_ctl.sh"));
    assert_eq!(cfg.bin("initdb"), PathBuf::from("/opt/pg/bin/initdb"));
    assert_eq!(cfg.api_url(), "https://127.0.0.1:8008/patroni");

    let plain = must(load_str(MINIMAL, &no_env()));
    let expected = if Path::new(DEFAULT_PG_BIN_DIR).join("initdb").exists() {
        Path::new(DEFAULT_PG_BIN_DIR).join("initdb")
    } else {
        PathBuf::from("initdb")
    };
    assert_eq!(plain.bin("initdb"), expected);
}

#[test]
fn listen_address_forms() {
    let cases = [
        ("*:5432", (vec!["*"], 5432)),
        (
            "0.0.0.0,127.0.0.1:5433",
            (vec!["0.0.0.0", "127.0.0.1"], 5433),
        ),
        ("[::1]:5434", (vec!["::1"], 5434)),
        ("localhost", (vec!["localhost"], 5432)),
    ];
    for (listen, (hosts, port)) in cases {
        let text = MINIMAL.replacen(
            "  listen: 127.0.0.1:5432\n",
            &format!("  listen: '{listen}'\n"),
            1,
        );
        let cfg = must(load_str(&text, &no_env()));
        let want: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        assert_eq!(cfg.postgres_listen_host_port(), (want, port), "{listen}");
    }
}

#[test]
fn bootstrap_dcs_adjustments_become_warnings() {
    let text = MINIMAL.replacen("name: n\n", "name: n\nbootstrap:\n  dcs: {ttl: 10, loop_wait: 10, retry_timeout: 10, master_start_timeout: 0}\n", 1);
    let cfg = must(load_str(&text, &no_env()));
    assert!(
        cfg.warnings
            .iter()
            .any(|w| w.starts_with("bootstrap.dcs.retry_timeout:")),
        "{:?}",
        cfg.warnings
    );
    let (dynamic, _) = cfg.bootstrap_dynamic();
    assert_eq!(
        (dynamic.ttl, dynamic.loop_wait, dynamic.retry_timeout),
        (10, 1, 4)
    );
    assert_eq!(dynamic.primary_start_timeout, 0);
}

#[test]
fn config_deserializes_through_serde() {
    let cfg: Result<Config, _> = serde_json::from_value(json!({
        "scope": "s", "name": "n",
        "restapi": {"listen": "127.0.0.1:8008", "connect_address": "127.0.0.1:8008"},
        "etcd3": {"host": "127.0.0.1:2379"},
        "postgresql": {"listen": "127.0.0.1:5432", "connect_address": "127.0.0.1:5432", "data_dir": "/d",
                       "authentication": {"superuser": {"username": "p"}, "replication": {"username": "r"}}},
    }));
    assert_eq!(cfg.map(|c| c.name).ok().as_deref(), Some("n"));
    let e: Result<Etcd3Config, _> = serde_json::from_value(json!({"hosts": "a:1,b:2"}));
    assert_eq!(
        e.map(|e| e.hosts).ok(),
        Some(vec!["a:1".to_string(), "b:2".to_string()])
    );
    assert!(Config::from_yaml_str(MINIMAL).is_ok());
}

#[test]
fn yaml_merge_keys_and_nulls() {
    let text = MINIMAL.replacen(
        "name: n\n",
        "name: n\nx-common: &common {certfile: /c.pem}\nctl:\n  <<: *common\n  insecure:\nlog:\n",
        1,
    );
    let cfg = must(load_str(&text, &no_env()));
    assert_eq!(cfg.ctl.certfile, Some(PathBuf::from("/c.pem")));
    assert!(!cfg.ctl.insecure);
    assert_eq!(cfg.log.level, "INFO");
}

#[test]
fn unusable_tls_files_are_refused_by_name() {
    let cases = [
        (
            "restapi.certfile",
            MINIMAL.replace(
                "restapi: {listen",
                "restapi: {certfile: /nonexistent/c.pem, listen",
            ),
        ),
        (
            "restapi.verify_client",
            MINIMAL.replace(
                "restapi: {listen",
                "restapi: {certfile: /c.pem, verify_client: sometimes, listen",
            ),
        ),
        (
            "ctl.cacert",
            format!("{MINIMAL}ctl: {{cacert: /nonexistent/ca.pem}}\n"),
        ),
        (
            "ctl.keyfile",
            format!("{MINIMAL}ctl: {{keyfile: /nonexistent/k.pem}}\n"),
        ),
        (
            "restapi.http_extra_headers",
            MINIMAL.replace(
                "restapi: {listen",
                "restapi: {http_extra_headers: {'bad name': nonexistent}, listen",
            ),
        ),
    ];
    for (key, text) in cases {
        let err = load_str(&text, &no_env())
            .and_then(|cfg| check_supported(&cfg))
            .expect_err(key)
            .to_string();
        assert!(err.starts_with(key), "{key}: {err}");
        assert!(
            err.contains("nonexistent")
                || key == "restapi.verify_client"
                || err.contains("bad name"),
            "{key}: {err}"
        );
    }
    assert!(check_supported(&must(load_str(MINIMAL, &no_env()))).is_ok());
    // TLS to etcd is supported: the files are read when the DCS client is built.
    let tls = MINIMAL.replace(
        "etcd3: {hosts",
        "etcd3: {protocol: https, cacert: /ca.pem, cert: /c.pem, key: /k.pem, hosts",
    );
    let cfg = must(load_str(&tls, &no_env()));
    assert!(check_supported(&cfg).is_ok());
    let DcsConfig::Etcd3(e) = &cfg.dcs else {
        panic!("expected etcd3");
    };
    assert_eq!(e.protocol, "https");
    assert_eq!(e.cacert.as_deref(), Some(std::path::Path::new("/ca.pem")));
    assert_eq!(e.key.as_deref(), Some(std::path::Path::new("/k.pem")));
}

#[test]
fn member_client_settings_name_unreadable_files() {
    let cases = [
        (
            "ctl.cacert",
            format!("{MINIMAL}ctl: {{cacert: /nonexistent/ca.pem}}\n"),
        ),
        (
            "restapi.cafile",
            MINIMAL.replace(
                "restapi: {listen",
                "restapi: {cafile: /nonexistent/ca.pem, listen",
            ),
        ),
        (
            "ctl.certfile",
            format!("{MINIMAL}ctl: {{certfile: /nonexistent/c.pem}}\n"),
        ),
    ];
    for (key, text) in cases {
        let cfg = must(load_str(&text, &no_env()));
        let Err(err) = member_client_builder(&cfg) else {
            panic!("{key}: accepted");
        };
        let err = err.to_string();
        assert!(err.starts_with(key), "{key}: {err}");
    }
    let insecure = format!(
        "{}ctl: {{insecure: true, authentication: {{username: u, password: p}}}}\n",
        MINIMAL
    );
    let cfg = must(load_str(&insecure, &no_env()));
    assert!(member_client_builder(&cfg)
        .and_then(|b| b
            .build()
            .map_err(|e| ConfigError::invalid("x", e.to_string())))
        .is_ok());
}

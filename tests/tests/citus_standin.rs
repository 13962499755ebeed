//! Fidelity of the Citus test stand-in (tests/citus_standin) against the observed behaviour of
//! Citus 13.2: catalog shape, function signatures, error texts and SQLSTATEs, and the write
//! pause that `citus_update_node` holds until COMMIT/ROLLBACK.
//!
//! Every test runs against whatever `ensure_citus()` finds: real Citus when installed, else the
//! stand-in. Tests named `standin_only_*` check the stand-in's own machinery and are skipped
//! (with a message) on real Citus.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use regent_tests::citus::{ensure_citus, standin_dir, CitusCluster, STANDIN_LIBRARY_TARGET};
use regent_tests::{free_port, wait_until_ok};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

/// How long a write may take when nothing holds it back.
const UNBLOCKED: Duration = Duration::from_secs(10);

/// SQLSTATE, message, detail and hint of a failed statement (panics if it succeeded).
#[derive(Debug)]
struct SqlError {
    code: String,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
}

async fn sql_error(client: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> SqlError {
    match client.query(sql, params).await {
        Ok(rows) => panic!("`{sql}` succeeded ({} rows), expected an error", rows.len()),
        Err(e) => {
            let db = e
                .as_db_error()
                .unwrap_or_else(|| panic!("`{sql}` failed without a server error: {e}"));
            SqlError {
                code: db.code().code().to_string(),
                message: db.message().to_string(),
                detail: db.detail().map(str::to_string),
                hint: db.hint().map(str::to_string),
            }
        }
    }
}

/// `(nodeid, groupid, nodename, nodeport)` of the primary row for worker port `port`.
async fn node_id_for_port(client: &Client, port: u16) -> i32 {
    let row = client
        .query_one(
            "SELECT nodeid FROM pg_catalog.pg_dist_node WHERE nodeport = $1",
            &[&i32::from(port)],
        )
        .await
        .unwrap_or_else(|e| panic!("look up the node on port {port}: {e}"));
    row.get(0)
}

/// A plain table `events(id int primary key, payload text)` distributed by `id`.
async fn create_events(client: &Client) {
    client
        .batch_execute(
            "CREATE TABLE events (id int PRIMARY KEY, payload text);
             SELECT create_distributed_table('events', 'id');",
        )
        .await
        .expect("create and distribute events");
}

/// The smallest id ≥ 1 whose shard is placed on the group of node `node_id`.
async fn id_routed_to(client: &Client, node_id: i32) -> i32 {
    let row = client
        .query_one(
            "SELECT min(id) FROM generate_series(1, 1000) AS id
              WHERE (SELECT p.groupid FROM pg_catalog.pg_dist_placement p
                      WHERE p.shardid = get_shard_id_for_distribution_column('events', id))
                  = (SELECT groupid FROM pg_catalog.pg_dist_node WHERE nodeid = $1)",
            &[&node_id],
        )
        .await
        .expect("find an id routed to the node");
    row.get::<_, Option<i32>>(0)
        .unwrap_or_else(|| panic!("no id in 1..1000 is routed to node {node_id}"))
}

async fn backend_pid(client: &Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pg_backend_pid")
        .get(0)
}

/// Wait until session `waiter` is blocked on an advisory lock held by session `holder`.
async fn wait_blocked_by(observer: &Client, waiter: i32, holder: i32) {
    wait_until_ok(
        "the routed write to wait on the node lock",
        UNBLOCKED,
        || async {
            let row = observer
                .query_one(
                    "SELECT wait_event_type, wait_event, $2 = ANY (pg_blocking_pids($1))
                   FROM pg_stat_activity WHERE pid = $1",
                    &[&waiter, &holder],
                )
                .await?;
            let (kind, event, by_holder): (Option<String>, Option<String>, bool) =
                (row.get(0), row.get(1), row.get(2));
            if kind.as_deref() == Some("Lock") && event.as_deref() == Some("advisory") && by_holder
            {
                Ok(())
            } else {
                Err(anyhow!(
                    "pid {waiter}: wait_event_type {kind:?}, wait_event {event:?}, blocked by \
                 {holder}: {by_holder}"
                ))
            }
        },
    )
    .await
}

#[tokio::test]
async fn catalog_tables_and_function_signatures_match_citus_13_2() {
    let cluster = CitusCluster::start_unregistered("citus-catalog", 0)
        .await
        .expect("start a server with the citus extension");
    let client = cluster.coordinator_client().await.expect("connect");

    let columns: Vec<(String, String, bool)> = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull
               FROM pg_attribute
              WHERE attrelid = 'pg_catalog.pg_dist_node'::regclass AND attnum > 0
                AND NOT attisdropped ORDER BY attnum",
            &[],
        )
        .await
        .expect("pg_dist_node columns")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let expected = [
        ("nodeid", "integer", true),
        ("groupid", "integer", true),
        ("nodename", "text", true),
        ("nodeport", "integer", true),
        ("noderack", "text", true),
        ("hasmetadata", "boolean", true),
        ("isactive", "boolean", true),
        ("noderole", "noderole", true),
        ("nodecluster", "name", true),
        ("metadatasynced", "boolean", false),
        ("shouldhaveshards", "boolean", true),
        ("nodeisclone", "boolean", true),
        ("nodeprimarynodeid", "integer", true),
    ];
    let expected: Vec<(String, String, bool)> = expected
        .iter()
        .map(|(n, t, nn)| (n.to_string(), t.to_string(), *nn))
        .collect();
    assert_eq!(
        columns, expected,
        "pg_dist_node columns (name, type, not null)"
    );

    let constraints: Vec<String> = client
        .query(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint
              WHERE conrelid = 'pg_catalog.pg_dist_node'::regclass",
            &[],
        )
        .await
        .expect("pg_dist_node constraints")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        constraints.iter().any(|c| c == "PRIMARY KEY (nodeid)"),
        "{constraints:?}"
    );
    assert!(
        constraints
            .iter()
            .any(|c| c == "UNIQUE (nodename, nodeport)"),
        "{constraints:?}"
    );
    assert!(
        constraints
            .iter()
            .any(|c| c.starts_with("CHECK") && c.contains("nodecluster") && c.contains("primary")),
        "primaries only in the default cluster: {constraints:?}"
    );

    let roles: Vec<String> = client
        .query_one(
            "SELECT array_agg(enumlabel::text ORDER BY enumsortorder) FROM pg_enum
              WHERE enumtypid = 'pg_catalog.noderole'::regtype",
            &[],
        )
        .await
        .expect("noderole labels")
        .get(0);
    assert_eq!(roles, ["primary", "secondary", "unavailable"]);

    for (table, wanted) in [
        ("pg_dist_authinfo", "nodeid,rolename,authinfo"),
        (
            "pg_dist_placement",
            "placementid,shardid,shardstate,shardlength,groupid",
        ),
        ("pg_dist_local_group", "groupid"),
    ] {
        let names: String = client
            .query_one(
                "SELECT string_agg(attname::text, ',' ORDER BY attnum) FROM pg_attribute
                  WHERE attrelid = ('pg_catalog.' || $1)::regclass AND attnum > 0
                    AND NOT attisdropped",
                &[&table],
            )
            .await
            .unwrap_or_else(|e| panic!("columns of {table}: {e}"))
            .get(0);
        assert_eq!(names, wanted, "columns of {table}");
    }

    // (name, identity arguments, number of defaults, result)
    let functions = [
        (
            "citus_add_node",
            "nodename text, nodeport integer, groupid integer, noderole noderole, nodecluster name",
            3,
            "integer",
        ),
        (
            "citus_update_node",
            "node_id integer, new_node_name text, new_node_port integer, force boolean, lock_cooldown integer",
            2,
            "void",
        ),
        ("citus_remove_node", "nodename text, nodeport integer", 0, "void"),
        (
            "citus_set_coordinator_host",
            "host text, port integer, node_role noderole, node_cluster name",
            3,
            "void",
        ),
        (
            "citus_add_secondary_node",
            "nodename text, nodeport integer, primaryname text, primaryport integer, nodecluster name",
            1,
            "integer",
        ),
        (
            "citus_pause_node_within_txn",
            "node_id integer, force boolean, lock_cooldown integer",
            2,
            "void",
        ),
        ("citus_is_coordinator", "", 0, "boolean"),
        ("citus_version", "", 0, "text"),
    ];
    for (name, arguments, defaults, result) in functions {
        let rows = client
            .query(
                "SELECT pg_get_function_identity_arguments(p.oid), p.pronargdefaults::int,
                        pg_get_function_result(p.oid), p.proisstrict
                   FROM pg_proc p WHERE p.proname = $1
                    AND p.pronamespace = 'pg_catalog'::regnamespace",
                &[&name],
            )
            .await
            .unwrap_or_else(|e| panic!("look up {name}: {e}"));
        assert_eq!(rows.len(), 1, "exactly one pg_catalog.{name}");
        let row = &rows[0];
        assert_eq!(row.get::<_, String>(0), arguments, "{name} arguments");
        assert_eq!(row.get::<_, i32>(1), defaults, "{name} defaults");
        assert_eq!(row.get::<_, String>(2), result, "{name} result");
        if name == "citus_update_node" {
            assert!(row.get::<_, bool>(3), "citus_update_node is STRICT");
        }
    }
    for (name, present) in [
        ("citus_get_active_worker_nodes", true),
        ("master_add_node", true),
        ("master_update_node", true),
        ("master_remove_node", true),
        ("master_add_secondary_node", true),
        ("master_get_active_worker_nodes", true),
        ("master_set_coordinator_host", false),
    ] {
        let found: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = $1
                                   AND pronamespace = 'pg_catalog'::regnamespace)",
                &[&name],
            )
            .await
            .expect("look up function")
            .get(0);
        assert_eq!(found, present, "pg_catalog.{name} present");
    }

    let version: String = client
        .query_one("SELECT citus_version()", &[])
        .await
        .expect("citus_version()")
        .get(0);
    assert!(
        version.starts_with("Citus 13.2"),
        "citus_version() = {version}"
    );
    let extversion: String = client
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'citus'",
            &[],
        )
        .await
        .expect("extversion")
        .get(0);
    assert!(extversion.starts_with("13.2"), "extversion {extversion}");

    // A fresh server is not a coordinator until it has a node row; the port defaults to its own.
    let before: bool = client
        .query_one("SELECT citus_is_coordinator()", &[])
        .await
        .expect("citus_is_coordinator()")
        .get(0);
    assert!(!before, "citus_is_coordinator() before any node row");
    client
        .batch_execute("SELECT citus_set_coordinator_host('127.0.0.1')")
        .await
        .expect("citus_set_coordinator_host with the default port");
    client
        .batch_execute("SELECT citus_set_coordinator_host('127.0.0.1')")
        .await
        .expect("citus_set_coordinator_host again (idempotent)");
    let rows = client
        .query(
            "SELECT groupid, nodeport, shouldhaveshards, hasmetadata FROM pg_dist_node",
            &[],
        )
        .await
        .expect("pg_dist_node");
    assert_eq!(rows.len(), 1, "one coordinator row");
    assert_eq!(rows[0].get::<_, i32>(0), 0);
    assert_eq!(
        rows[0].get::<_, i32>(1),
        i32::from(cluster.coordinator.port())
    );
    assert!(!rows[0].get::<_, bool>(2), "coordinator has no shards");
    assert!(rows[0].get::<_, bool>(3), "coordinator has metadata");
    let after: bool = client
        .query_one("SELECT citus_is_coordinator()", &[])
        .await
        .expect("citus_is_coordinator()")
        .get(0);
    assert!(
        after,
        "citus_is_coordinator() after citus_set_coordinator_host"
    );
}

#[tokio::test]
async fn node_registration_is_idempotent_and_refused_off_the_coordinator() {
    let cluster = CitusCluster::start("citus-nodes", 2)
        .await
        .expect("coordinator and two registered workers");
    let coordinator = cluster.coordinator_client().await.expect("connect");
    let worker_ports: Vec<i32> = cluster
        .workers
        .iter()
        .map(|w| i32::from(w.port()))
        .collect();

    let rows = coordinator
        .query(
            "SELECT nodeid, groupid, nodename, nodeport, noderack, hasmetadata, isactive,
                    noderole::text, nodecluster::text, metadatasynced, shouldhaveshards
               FROM pg_dist_node ORDER BY groupid",
            &[],
        )
        .await
        .expect("pg_dist_node");
    assert_eq!(rows.len(), 3, "coordinator and two workers");
    let expected_ports = [
        i32::from(cluster.coordinator.port()),
        worker_ports[0],
        worker_ports[1],
    ];
    for (i, row) in rows.iter().enumerate() {
        let is_coordinator = i == 0;
        assert_eq!(row.get::<_, i32>("groupid"), i as i32, "group of row {i}");
        assert_eq!(row.get::<_, String>("nodename"), "127.0.0.1");
        assert_eq!(row.get::<_, i32>("nodeport"), expected_ports[i]);
        assert_eq!(row.get::<_, String>("noderack"), "default");
        assert!(row.get::<_, bool>("hasmetadata"), "row {i} hasmetadata");
        assert!(row.get::<_, bool>("isactive"), "row {i} isactive");
        assert_eq!(row.get::<_, String>("noderole"), "primary");
        assert_eq!(row.get::<_, String>("nodecluster"), "default");
        assert_eq!(row.get::<_, bool>("shouldhaveshards"), !is_coordinator);
    }
    let first_worker: i32 = rows[1].get("nodeid");

    // Same host:port again, even with another group or role: the existing id, row unchanged.
    for call in [
        "SELECT citus_add_node('127.0.0.1', $1)",
        "SELECT citus_add_node('127.0.0.1', $1, groupid => 7)",
        "SELECT citus_add_node('127.0.0.1', $1, noderole => 'secondary')",
        "SELECT master_add_node('127.0.0.1', $1)",
    ] {
        let id: i32 = coordinator
            .query_one(call, &[&worker_ports[0]])
            .await
            .unwrap_or_else(|e| panic!("{call}: {e}"))
            .get(0);
        assert_eq!(id, first_worker, "{call} returns the existing node id");
    }
    let unchanged = coordinator
        .query_one(
            "SELECT groupid, noderole::text, count(*) OVER () FROM pg_dist_node WHERE nodeid = $1",
            &[&first_worker],
        )
        .await
        .expect("first worker row");
    assert_eq!(unchanged.get::<_, i32>(0), 1);
    assert_eq!(unchanged.get::<_, String>(1), "primary");

    let active: Vec<(String, i64)> = coordinator
        .query(
            "SELECT node_name, node_port FROM citus_get_active_worker_nodes() ORDER BY 2",
            &[],
        )
        .await
        .expect("citus_get_active_worker_nodes()")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut expected_active: Vec<(String, i64)> = worker_ports
        .iter()
        .map(|p| ("127.0.0.1".to_string(), i64::from(*p)))
        .collect();
    expected_active.sort_by_key(|(_, p)| *p);
    assert_eq!(active, expected_active, "active workers");

    let on_coordinator: bool = coordinator
        .query_one("SELECT citus_is_coordinator()", &[])
        .await
        .expect("citus_is_coordinator()")
        .get(0);
    assert!(on_coordinator, "coordinator reports itself as coordinator");
    let worker = cluster.worker_client(0).await.expect("connect to worker");
    let on_worker: bool = worker
        .query_one("SELECT citus_is_coordinator()", &[])
        .await
        .expect("citus_is_coordinator() on a worker")
        .get(0);
    assert!(!on_worker, "a registered worker is not a coordinator");

    let refused = sql_error(
        &worker,
        "SELECT citus_add_node('127.0.0.1', $1)",
        &[&i32::from(cluster.coordinator.port())],
    )
    .await;
    assert_eq!(refused.code, "XX000", "{refused:?}");
    assert_eq!(refused.message, "operation is not allowed on this node");
    assert_eq!(
        refused.hint.as_deref(),
        Some("Connect to the coordinator and run it again.")
    );

    let closed_port = i32::from(free_port());
    let unreachable = sql_error(
        &coordinator,
        "SELECT citus_add_node('127.0.0.1', $1)",
        &[&closed_port],
    )
    .await;
    assert_eq!(unreachable.code, "08006", "{unreachable:?}");
    assert_eq!(
        unreachable.message,
        format!(
            "connection to the remote node postgres@127.0.0.1:{closed_port} failed with the \
             following error: Connection refused"
        )
    );
    let unresolvable = sql_error(
        &coordinator,
        "SELECT citus_add_node('no-such-host.invalid', 5432)",
        &[],
    )
    .await;
    assert_eq!(unresolvable.code, "08006", "{unresolvable:?}");
    assert!(
        unresolvable.message.starts_with(
            "connection to the remote node postgres@no-such-host.invalid:5432 failed with the \
             following error: could not translate host name \"no-such-host.invalid\""
        ),
        "{unresolvable:?}"
    );

    // Secondaries join the primary's group without metadata; an unknown primary is refused.
    let secondary_port = i32::from(free_port());
    let secondary: i32 = coordinator
        .query_one(
            "SELECT citus_add_secondary_node('127.0.0.1', $1, '127.0.0.1', $2)",
            &[&secondary_port, &worker_ports[0]],
        )
        .await
        .expect("citus_add_secondary_node")
        .get(0);
    let row = coordinator
        .query_one(
            "SELECT groupid, noderole::text, isactive, hasmetadata, metadatasynced
               FROM pg_dist_node WHERE nodeid = $1",
            &[&secondary],
        )
        .await
        .expect("secondary row");
    assert_eq!(row.get::<_, i32>(0), 1, "secondary in the primary's group");
    assert_eq!(row.get::<_, String>(1), "secondary");
    assert!(row.get::<_, bool>(2), "secondary is active");
    assert!(!row.get::<_, bool>(3), "secondary has no metadata");
    assert_eq!(row.get::<_, Option<bool>>(4), Some(false));
    coordinator
        .execute(
            "SELECT citus_remove_node('127.0.0.1', $1)",
            &[&secondary_port],
        )
        .await
        .expect("remove the secondary");
    let unknown_primary = sql_error(
        &coordinator,
        "SELECT citus_add_secondary_node('127.0.0.1', $1, '127.0.0.1', $2)",
        &[&secondary_port, &closed_port],
    )
    .await;
    assert_eq!(unknown_primary.code, "XX000", "{unknown_primary:?}");
    assert_eq!(
        unknown_primary.message,
        format!("node at \"127.0.0.1:{closed_port}\" does not exist")
    );

    let count: i64 = coordinator
        .query_one("SELECT count(*) FROM pg_dist_node", &[])
        .await
        .expect("count nodes")
        .get(0);
    assert_eq!(count, 3, "failed and removed registrations left no rows");
}

#[tokio::test]
async fn update_and_remove_errors_and_distributed_table_reads() {
    let cluster = CitusCluster::start("citus-errors", 1)
        .await
        .expect("coordinator and one registered worker");
    let coordinator = cluster.coordinator_client().await.expect("connect");
    let worker_port = cluster.workers[0].port();
    let worker_port_sql = i32::from(worker_port);
    let worker_id = node_id_for_port(&coordinator, worker_port).await;
    let free = i32::from(free_port());

    // The address check comes before the node id check.
    let duplicate = sql_error(
        &coordinator,
        "SELECT citus_update_node(999, '127.0.0.1', $1)",
        &[&worker_port_sql],
    )
    .await;
    assert_eq!(duplicate.code, "55000", "{duplicate:?}");
    assert_eq!(
        duplicate.message,
        "there is already another node with the specified hostname and port"
    );
    let unknown = sql_error(
        &coordinator,
        "SELECT citus_update_node(999, '127.0.0.1', $1)",
        &[&free],
    )
    .await;
    assert_eq!(unknown.code, "P0002", "{unknown:?}");
    assert_eq!(unknown.message, "node 999 not found");

    // STRICT: a NULL argument is a silent no-op.
    let is_null: bool = coordinator
        .query_one(
            "SELECT citus_update_node($1, NULL, $2) IS NULL",
            &[&worker_id, &free],
        )
        .await
        .expect("citus_update_node with NULL host")
        .get(0);
    assert!(is_null);
    coordinator
        .execute(
            "SELECT citus_update_node($1, '127.0.0.1', $2)",
            &[&worker_id, &worker_port_sql],
        )
        .await
        .expect("an unchanged update is accepted");
    let (name, port): (String, i32) = {
        let row = coordinator
            .query_one(
                "SELECT nodename, nodeport FROM pg_dist_node WHERE nodeid = $1",
                &[&worker_id],
            )
            .await
            .expect("worker row");
        (row.get(0), row.get(1))
    };
    assert_eq!((name.as_str(), port), ("127.0.0.1", worker_port_sql));

    let missing = sql_error(
        &coordinator,
        "SELECT citus_remove_node('127.0.0.1', $1)",
        &[&free],
    )
    .await;
    assert_eq!(missing.code, "XX000", "{missing:?}");
    assert_eq!(
        missing.message,
        format!("node at \"127.0.0.1:{free}\" does not exist")
    );

    // Distributed writes and reads through the coordinator land on the worker's shards.
    create_events(&coordinator).await;
    coordinator
        .execute(
            "INSERT INTO events SELECT g, 'row ' || g FROM generate_series(1, 100) g",
            &[],
        )
        .await
        .expect("insert through the coordinator");
    let count: i64 = coordinator
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .expect("count through the coordinator")
        .get(0);
    assert_eq!(count, 100);
    let shard_ids: Vec<i64> = coordinator
        .query(
            "SELECT shardid FROM pg_dist_shard WHERE logicalrelid = 'events'::regclass",
            &[],
        )
        .await
        .expect("shards")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!shard_ids.is_empty(), "events has shards");
    let worker = cluster.worker_client(0).await.expect("connect to worker");
    let union = shard_ids
        .iter()
        .map(|id| format!("SELECT count(*) AS n FROM public.events_{id}"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let on_worker: i64 = worker
        .query_one(&format!("SELECT sum(n)::bigint FROM ({union}) s"), &[])
        .await
        .expect("count the worker's shard tables")
        .get(0);
    assert_eq!(
        on_worker, 100,
        "every row is in a shard table on the worker"
    );

    // A node holding placements cannot be removed.
    let held = sql_error(
        &coordinator,
        "SELECT citus_remove_node('127.0.0.1', $1)",
        &[&worker_port_sql],
    )
    .await;
    assert_eq!(held.code, "XX000", "{held:?}");
    assert!(
        held.message.starts_with(&format!(
            "cannot remove or disable the node 127.0.0.1:{worker_port} because because it \
             contains the only shard placement for shard "
        )),
        "{held:?}"
    );
    assert_eq!(
        held.detail.as_deref(),
        Some("One of the table(s) that prevents the operation complete successfully is public.events")
    );

    // With the worker down, reads fail as Citus reports an unreachable node.
    cluster.workers[0].stop().expect("stop the worker");
    let fresh = cluster.coordinator_client().await.expect("connect");
    let down = sql_error(&fresh, "SELECT count(*) FROM events", &[]).await;
    assert_eq!(down.code, "08006", "{down:?}");
    assert!(
        down.message.starts_with(&format!(
            "connection to the remote node postgres@127.0.0.1:{worker_port} failed with the \
             following error: "
        )),
        "{down:?}"
    );

    // Back up: sessions that had a connection to the old server process reconnect.
    cluster.workers[0]
        .start_again()
        .expect("start the worker again");
    coordinator
        .execute("INSERT INTO events VALUES (101, 'after restart')", &[])
        .await
        .expect("a write after the worker restarted, from a session that wrote before");
    let count: i64 = coordinator
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .expect("a read after the worker restarted")
        .get(0);
    assert_eq!(count, 101);
}

/// How the transaction holding `citus_update_node` ends in the blocking tests.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ending {
    /// Repoint to the real address, then COMMIT.
    CommitRepointed,
    Rollback,
}

/// A write routed to a worker waits while another session holds `citus_update_node(...
/// '-demoted' ...)`; reads and writes to the other worker do not; COMMIT or ROLLBACK releases
/// it.
async fn routed_write_waits_for_update_node(label: &str, ending: Ending) {
    let cluster = CitusCluster::start(label, 2)
        .await
        .expect("coordinator and two registered workers");
    let setup = cluster.coordinator_client().await.expect("connect");
    create_events(&setup).await;
    let held_port = cluster.workers[0].port();
    let held_node = node_id_for_port(&setup, held_port).await;
    let other_node = node_id_for_port(&setup, cluster.workers[1].port()).await;
    let held_id = id_routed_to(&setup, held_node).await;
    let other_id = id_routed_to(&setup, other_node).await;

    let holder = cluster.coordinator_client().await.expect("connect holder");
    let holder_pid = backend_pid(&holder).await;
    holder.batch_execute("BEGIN").await.expect("BEGIN");
    let started = Instant::now();
    holder
        .execute(
            "SELECT citus_update_node($1, '127.0.0.1-demoted', $2, true, 10000)",
            &[&held_node, &i32::from(held_port)],
        )
        .await
        .expect("citus_update_node to the -demoted name");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "citus_update_node without conflicts took {:?}",
        started.elapsed()
    );

    let writer = cluster.coordinator_client().await.expect("connect writer");
    let writer_pid = backend_pid(&writer).await;
    let blocked_write = tokio::spawn(async move {
        writer
            .execute("INSERT INTO events VALUES ($1, 'held')", &[&held_id])
            .await
            .map_err(|e| anyhow!("held write: {e}"))
    });
    wait_blocked_by(&setup, writer_pid, holder_pid).await;

    // Reads are served from the old committed address; the other worker takes writes.
    let reader = cluster.coordinator_client().await.expect("connect reader");
    let read = tokio::time::timeout(
        UNBLOCKED,
        reader.query_one("SELECT count(*) FROM events", &[]),
    )
    .await
    .expect("a read during the pause is not blocked")
    .expect("read during the pause");
    assert_eq!(read.get::<_, i64>(0), 0);
    let seen: String = reader
        .query_one(
            "SELECT nodename FROM pg_dist_node WHERE nodeid = $1",
            &[&held_node],
        )
        .await
        .expect("pg_dist_node during the pause")
        .get(0);
    assert_eq!(seen, "127.0.0.1", "others see the old committed row");
    tokio::time::timeout(
        UNBLOCKED,
        reader.execute("INSERT INTO events VALUES ($1, 'other')", &[&other_id]),
    )
    .await
    .expect("a write to the other worker is not blocked")
    .expect("write to the other worker");
    assert!(!blocked_write.is_finished(), "the held write still waits");

    match ending {
        Ending::CommitRepointed => {
            holder
                .execute(
                    "SELECT citus_update_node($1, '127.0.0.1', $2, true, 10000)",
                    &[&held_node, &i32::from(held_port)],
                )
                .await
                .expect("repoint inside the transaction");
            // Repointing inside the transaction does not release the writer; only COMMIT does.
            wait_blocked_by(&setup, writer_pid, holder_pid).await;
            holder.batch_execute("COMMIT").await.expect("COMMIT");
        }
        Ending::Rollback => holder.batch_execute("ROLLBACK").await.expect("ROLLBACK"),
    }
    let released = Instant::now();
    let inserted = tokio::time::timeout(UNBLOCKED, blocked_write)
        .await
        .expect("the held write finishes after the transaction ends")
        .expect("writer task")
        .expect("the held write succeeds");
    assert_eq!(inserted, 1);
    eprintln!(
        "{label}: held write returned {:?} after {ending:?}",
        released.elapsed()
    );
    let row = setup
        .query_one(
            "SELECT (SELECT nodename FROM pg_dist_node WHERE nodeid = $1),
                    (SELECT count(*) FROM events WHERE id = $2)",
            &[&held_node, &held_id],
        )
        .await
        .expect("state after the pause");
    assert_eq!(row.get::<_, String>(0), "127.0.0.1", "final address");
    assert_eq!(row.get::<_, i64>(1), 1, "the held row arrived");

    if ending == Ending::CommitRepointed {
        // Committing the -demoted name cuts the coordinator off from that node.
        setup
            .execute(
                "SELECT citus_update_node($1, '127.0.0.1-demoted', $2)",
                &[&held_node, &i32::from(held_port)],
            )
            .await
            .expect("commit a -demoted name");
        let fresh = cluster.coordinator_client().await.expect("connect");
        let cut_off = sql_error(&fresh, "SELECT count(*) FROM events", &[]).await;
        assert_eq!(cut_off.code, "08006", "{cut_off:?}");
        assert!(
            cut_off.message.starts_with(&format!(
                "connection to the remote node postgres@127.0.0.1-demoted:{held_port} failed \
                 with the following error: could not translate host name \"127.0.0.1-demoted\""
            )),
            "{cut_off:?}"
        );
    }
}

#[tokio::test]
async fn routed_write_waits_for_update_node_until_commit() {
    routed_write_waits_for_update_node("citus-commit", Ending::CommitRepointed).await;
}

#[tokio::test]
async fn routed_write_waits_for_update_node_until_rollback() {
    routed_write_waits_for_update_node("citus-rollback", Ending::Rollback).await;
}

#[tokio::test]
async fn force_terminates_the_blocking_writer_after_the_cooldown() {
    let cluster = CitusCluster::start("citus-force", 1)
        .await
        .expect("coordinator and one registered worker");
    let setup = cluster.coordinator_client().await.expect("connect");
    create_events(&setup).await;
    let port = i32::from(cluster.workers[0].port());
    let node = node_id_for_port(&setup, cluster.workers[0].port()).await;

    // An open transaction that wrote to the node's shards.
    let blocker = cluster.coordinator_client().await.expect("connect blocker");
    blocker
        .batch_execute("BEGIN; INSERT INTO events VALUES (1, 'open');")
        .await
        .expect("open write transaction");

    // Without force: waits (here until the statement timeout).
    let patient = cluster.coordinator_client().await.expect("connect");
    patient
        .batch_execute("SET statement_timeout = '1s'")
        .await
        .expect("statement_timeout");
    let waited = sql_error(
        &patient,
        "SELECT citus_update_node($1, '127.0.0.1', $2)",
        &[&node, &port],
    )
    .await;
    assert_eq!(waited.code, "57014", "{waited:?}");

    // With force: after lock_cooldown ms the blocker is terminated and the update goes through.
    let cooldown_ms = 1000;
    let started = Instant::now();
    setup
        .execute(
            "SELECT citus_update_node($1, '127.0.0.1', $2, true, $3)",
            &[&node, &port, &cooldown_ms],
        )
        .await
        .expect("forced citus_update_node");
    let took = started.elapsed();
    eprintln!("forced citus_update_node with lock_cooldown {cooldown_ms} ms took {took:?}");
    assert!(
        took >= Duration::from_millis(900),
        "returned before the cooldown: {took:?}"
    );
    assert!(took < Duration::from_secs(8), "took {took:?}");
    wait_until_ok(
        "the blocker's session to be terminated",
        UNBLOCKED,
        || async {
            match blocker.simple_query("SELECT 1").await {
                Err(_) => Ok(()),
                Ok(_) => Err(anyhow!("the blocker's session still answers")),
            }
        },
    )
    .await;
    let victim_rows: i64 = setup
        .query_one("SELECT count(*) FROM events WHERE id = 1", &[])
        .await
        .expect("look for the terminated session's row")
        .get(0);
    assert_eq!(
        victim_rows, 0,
        "the terminated session's write was rolled back"
    );
}

#[tokio::test]
async fn routed_writes_commit_and_roll_back_with_the_coordinator_transaction() {
    let cluster = CitusCluster::start("citus-xact", 2)
        .await
        .expect("coordinator and two registered workers");
    let client = cluster.coordinator_client().await.expect("connect");
    create_events(&client).await;

    client
        .batch_execute(
            "BEGIN;
             INSERT INTO events SELECT g, 'rolled back' FROM generate_series(1, 20) g;",
        )
        .await
        .expect("insert inside a transaction");
    let inside: i64 = client
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .expect("read inside the transaction")
        .get(0);
    assert_eq!(inside, 20, "the transaction reads its own routed writes");
    let other = cluster.coordinator_client().await.expect("connect");
    let outside: i64 = other
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .expect("read from another session")
        .get(0);
    assert_eq!(
        outside, 0,
        "uncommitted routed writes are invisible to others"
    );
    client.batch_execute("ROLLBACK").await.expect("ROLLBACK");

    // The same session (and its connections to the workers) carries on after the rollback.
    client
        .batch_execute(
            "BEGIN;
             INSERT INTO events SELECT g, 'kept' FROM generate_series(1, 10) g;
             COMMIT;
             INSERT INTO events SELECT g, 'autocommit' FROM generate_series(11, 15) g;",
        )
        .await
        .expect("insert after the rollback");
    for (who, session) in [("writer", &client), ("other session", &other)] {
        let rows: Vec<(i32, String)> = session
            .query("SELECT id, payload FROM events ORDER BY id", &[])
            .await
            .unwrap_or_else(|e| panic!("read from the {who}: {e}"))
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let expected: Vec<(i32, String)> = (1..=15)
            .map(|id| (id, if id <= 10 { "kept" } else { "autocommit" }.to_string()))
            .collect();
        assert_eq!(rows, expected, "committed rows as seen by the {who}");
    }

    // A failed routed write (duplicate key on the worker) fails the statement, not the session.
    let duplicate = sql_error(&client, "INSERT INTO events VALUES (1, 'again')", &[]).await;
    assert_eq!(duplicate.code, "23505", "{duplicate:?}");
    client
        .execute("INSERT INTO events VALUES (16, 'after the error')", &[])
        .await
        .expect("write after a failed write");
    let count: i64 = other
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 16);
}

#[tokio::test]
async fn standin_only_injected_errors_fail_the_next_calls_only() {
    let flavor = ensure_citus();
    if !flavor.is_stand_in() {
        eprintln!(
            "skipped: error injection is stand-in machinery; running on {}",
            flavor.describe()
        );
        return;
    }
    let cluster = CitusCluster::start_unregistered("citus-inject", 1)
        .await
        .expect("servers");
    let coordinator = cluster.coordinator_client().await.expect("connect");
    coordinator
        .batch_execute(&format!(
            "INSERT INTO pg_dist_authinfo VALUES (0, current_user, 'password={}');
             SELECT citus_set_coordinator_host('127.0.0.1');
             SELECT citus_standin.inject_error('citus_add_node', '55000',
                 '127.0.0.1:1 is a metadata node, but is out of sync', times => 2,
                 hint => 'If the node is up, wait until metadata gets synced to it and try again.');
             SELECT citus_standin.inject_error('citus_update_node', '40P01', 'deadlock detected');",
            regent_tests::config::SUPERUSER_PASSWORD
        ))
        .await
        .expect("inject errors");
    let port = i32::from(cluster.workers[0].port());
    for attempt in 1..=2 {
        let failed = sql_error(
            &coordinator,
            "SELECT citus_add_node('127.0.0.1', $1)",
            &[&port],
        )
        .await;
        assert_eq!(failed.code, "55000", "attempt {attempt}: {failed:?}");
        assert_eq!(
            failed.message,
            "127.0.0.1:1 is a metadata node, but is out of sync"
        );
        assert_eq!(
            failed.hint.as_deref(),
            Some("If the node is up, wait until metadata gets synced to it and try again.")
        );
    }
    let id: i32 = coordinator
        .query_one("SELECT citus_add_node('127.0.0.1', $1)", &[&port])
        .await
        .expect("the third citus_add_node succeeds")
        .get(0);
    let deadlock = sql_error(
        &coordinator,
        "SELECT citus_update_node($1, '127.0.0.1', $2)",
        &[&id, &port],
    )
    .await;
    assert_eq!(deadlock.code, "40P01", "{deadlock:?}");
    coordinator
        .execute(
            "SELECT citus_update_node($1, '127.0.0.1', $2)",
            &[&id, &port],
        )
        .await
        .expect("the next citus_update_node succeeds");
    coordinator
        .batch_execute("SELECT citus_standin.clear_injected_errors()")
        .await
        .expect("clear injected errors");
    let left: i64 = coordinator
        .query_one("SELECT count(*) FROM citus_standin.injected_error", &[])
        .await
        .expect("count injections")
        .get(0);
    assert_eq!(left, 0);
}

#[tokio::test]
async fn standin_only_installation_is_marked_and_current() -> Result<()> {
    let flavor = ensure_citus();
    if !flavor.is_stand_in() {
        eprintln!(
            "skipped: checks the stand-in's installation; running on {}",
            flavor.describe()
        );
        return Ok(());
    }
    let pg_config = |what: &str| -> Result<std::path::PathBuf> {
        let out = std::process::Command::new(
            std::path::Path::new(regent_tests::config::PG_BIN_DIR).join("pg_config"),
        )
        .arg(format!("--{what}"))
        .output()
        .context("pg_config")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().into())
    };
    let extension_dir = pg_config("sharedir")?.join("extension");
    for name in ["citus.control", "citus--13.2-1.sql"] {
        let installed = std::fs::read_to_string(extension_dir.join(name))?;
        let ours = std::fs::read_to_string(standin_dir().join(name))?;
        assert_eq!(installed, ours, "installed {name} is the workspace's");
        assert!(
            installed.contains("Regent test stand-in for Citus — not Citus"),
            "{name} says what it is"
        );
    }
    let library = pg_config("pkglibdir")?.join("citus.so");
    assert_eq!(
        std::fs::read_link(&library)?,
        std::path::PathBuf::from(STANDIN_LIBRARY_TARGET),
        "citus.so links to a harmless contrib module"
    );
    // A second call is a no-op with the same answer.
    assert_eq!(ensure_citus(), flavor);
    Ok(())
}

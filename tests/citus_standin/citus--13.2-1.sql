/*
 * citus--13.2-1.sql: Regent test stand-in for Citus — not Citus.
 *
 * Imitates the parts of the Citus 13.2 metadata API that an HA agent uses, inside plain
 * PostgreSQL 15, so that Regent's tests run where Citus is not installed: the catalog tables
 * (pg_dist_node, pg_dist_local_group, pg_dist_authinfo, pg_dist_partition, pg_dist_shard,
 * pg_dist_placement), the node functions with Citus's signatures, defaults, error texts and
 * SQLSTATEs, the per-node write lock that citus_update_node holds until COMMIT/ROLLBACK, and
 * hash-distributed tables whose INSERTs and SELECTs on the coordinator are routed to the worker
 * primaries named in pg_dist_node (through dblink's C functions, bound privately below so that
 * `CREATE EXTENSION citus` needs nothing else).
 *
 * Known differences from Citus (see README.md): routed writes commit on the workers with a
 * one-phase commit at the coordinator's COMMIT (no two-phase commit), metadata is not synced to workers beyond their group id
 * (metadatasynced stays true), distributed tables are views over the shards (INSERT and SELECT
 * only), and errors Citus raises from its maintenance daemon (55000 "out of sync", 40P01) can be
 * injected with citus_standin.inject_error().
 */

\echo Use "CREATE EXTENSION citus" to load this file. \quit

CREATE SCHEMA citus;
CREATE SCHEMA citus_standin;
COMMENT ON SCHEMA citus_standin IS 'Regent test stand-in for Citus — not Citus: internals';

-- Objects are created in schema citus and then moved: PostgreSQL refuses CREATE TABLE in
-- pg_catalog, but allows moving an extension's objects there.
CREATE TYPE citus.noderole AS ENUM ('primary', 'secondary', 'unavailable');
ALTER TYPE citus.noderole SET SCHEMA pg_catalog;

CREATE TYPE citus.distribution_type AS ENUM ('hash', 'range', 'append');

CREATE SEQUENCE citus.pg_dist_groupid_seq MINVALUE 1 MAXVALUE 2147483647;
ALTER SEQUENCE citus.pg_dist_groupid_seq SET SCHEMA pg_catalog;
CREATE SEQUENCE citus.pg_dist_node_nodeid_seq MINVALUE 1 MAXVALUE 2147483647;
ALTER SEQUENCE citus.pg_dist_node_nodeid_seq SET SCHEMA pg_catalog;
CREATE SEQUENCE citus.pg_dist_shardid_seq MINVALUE 102008 NO CYCLE;
ALTER SEQUENCE citus.pg_dist_shardid_seq SET SCHEMA pg_catalog;
CREATE SEQUENCE citus.pg_dist_placement_placementid_seq NO CYCLE;
ALTER SEQUENCE citus.pg_dist_placement_placementid_seq SET SCHEMA pg_catalog;

-- pg_dist_node: the 13.2 columns, defaults and constraints.
CREATE TABLE citus.pg_dist_node (
    nodeid int NOT NULL DEFAULT nextval('pg_catalog.pg_dist_node_nodeid_seq') PRIMARY KEY,
    groupid int NOT NULL DEFAULT nextval('pg_catalog.pg_dist_groupid_seq'),
    nodename text NOT NULL,
    nodeport int NOT NULL DEFAULT 5432,
    noderack text NOT NULL DEFAULT 'default',
    hasmetadata bool NOT NULL DEFAULT false,
    isactive bool NOT NULL DEFAULT true,
    noderole pg_catalog.noderole NOT NULL DEFAULT 'primary',
    nodecluster name NOT NULL DEFAULT 'default',
    metadatasynced bool DEFAULT false,
    shouldhaveshards bool NOT NULL DEFAULT true,
    nodeisclone bool NOT NULL DEFAULT false,
    nodeprimarynodeid int NOT NULL DEFAULT 0,
    UNIQUE (nodename, nodeport),
    CONSTRAINT primaries_are_only_allowed_in_the_default_cluster
        CHECK (NOT (nodecluster <> 'default' AND noderole = 'primary'))
);
ALTER TABLE citus.pg_dist_node SET SCHEMA pg_catalog;
ALTER SEQUENCE pg_catalog.pg_dist_node_nodeid_seq OWNED BY pg_catalog.pg_dist_node.nodeid;

-- The group this server belongs to: 0 until a coordinator adds it as a worker.
CREATE TABLE citus.pg_dist_local_group (groupid int NOT NULL PRIMARY KEY);
INSERT INTO citus.pg_dist_local_group VALUES (0);
ALTER TABLE citus.pg_dist_local_group SET SCHEMA pg_catalog;

-- Credentials for connections to other nodes (nodeid 0: every node).
CREATE TABLE citus.pg_dist_authinfo (
    nodeid int NOT NULL,
    rolename name NOT NULL CHECK (rolename <> ''),
    authinfo text NOT NULL,
    UNIQUE (nodeid, rolename)
);
ALTER TABLE citus.pg_dist_authinfo SET SCHEMA pg_catalog;

CREATE TABLE citus.pg_dist_partition (
    logicalrelid regclass NOT NULL,
    partmethod "char" NOT NULL,
    partkey text,
    colocationid int NOT NULL DEFAULT 0,
    repmodel "char" NOT NULL DEFAULT 's',
    autoconverted bool DEFAULT false
);
ALTER TABLE citus.pg_dist_partition SET SCHEMA pg_catalog;

CREATE TABLE citus.pg_dist_shard (
    logicalrelid regclass NOT NULL,
    shardid bigint NOT NULL,
    shardstorage "char" NOT NULL,
    shardalias text,
    shardminvalue text,
    shardmaxvalue text
);
ALTER TABLE citus.pg_dist_shard SET SCHEMA pg_catalog;

CREATE TABLE citus.pg_dist_placement (
    placementid bigint NOT NULL
        DEFAULT nextval('pg_catalog.pg_dist_placement_placementid_seq') PRIMARY KEY,
    shardid bigint NOT NULL,
    shardstate int NOT NULL,
    shardlength bigint NOT NULL,
    groupid int NOT NULL
);
ALTER TABLE citus.pg_dist_placement SET SCHEMA pg_catalog;

GRANT USAGE ON SCHEMA citus TO public;
GRANT SELECT ON pg_catalog.pg_dist_node, pg_catalog.pg_dist_local_group,
    pg_catalog.pg_dist_partition, pg_catalog.pg_dist_shard, pg_catalog.pg_dist_placement
    TO public;
REVOKE ALL ON pg_catalog.pg_dist_authinfo FROM public;

------------------------------------------------------------------------------------------------
-- Stand-in internals (schema citus_standin)
------------------------------------------------------------------------------------------------

-- Tests detect the stand-in through this function; real Citus has no such schema.
CREATE FUNCTION citus_standin.is_standin() RETURNS bool
    LANGUAGE sql IMMUTABLE AS $$ SELECT true $$;

-- dblink's C functions, bound here so that the stand-in does not need the dblink extension
-- (CREATE EXTENSION cannot nest, and Patroni runs a plain `CREATE EXTENSION citus`).
CREATE FUNCTION citus_standin.dblink_connect(text, text) RETURNS text
    AS '$libdir/dblink', 'dblink_connect' LANGUAGE C STRICT;
CREATE FUNCTION citus_standin.dblink_disconnect(text) RETURNS text
    AS '$libdir/dblink', 'dblink_disconnect' LANGUAGE C STRICT;
CREATE FUNCTION citus_standin.dblink_exec(text, text) RETURNS text
    AS '$libdir/dblink', 'dblink_exec' LANGUAGE C STRICT;
CREATE FUNCTION citus_standin.dblink(text, text) RETURNS SETOF record
    AS '$libdir/dblink', 'dblink_record' LANGUAGE C STRICT;
CREATE FUNCTION citus_standin.dblink_get_connections() RETURNS text[]
    AS '$libdir/dblink', 'dblink_get_connections' LANGUAGE C;
REVOKE ALL ON FUNCTION citus_standin.dblink_connect(text, text),
    citus_standin.dblink_disconnect(text), citus_standin.dblink_exec(text, text),
    citus_standin.dblink(text, text), citus_standin.dblink_get_connections() FROM public;

-- Advisory-lock class of the per-node write lock: key (class, nodeid). citus_update_node takes
-- it exclusively until the end of its transaction, routed writes take it shared.
CREATE FUNCTION citus_standin.node_lock_class() RETURNS int
    LANGUAGE sql IMMUTABLE AS $$ SELECT 1130984565 $$;  -- 0x43697475, "Citu"

-- Distributed tables: the view clients use, the table it replaced, the distribution column.
CREATE TABLE citus_standin.distributed_table (
    logicalrelid regclass PRIMARY KEY,
    shell regclass NOT NULL,
    distribution_column text NOT NULL
);

-- Error injection: the next `times` calls of `function_name` fail with `sqlstate`/`message`.
-- The count lives in a sequence so that it survives the failing transaction's rollback.
CREATE TABLE citus_standin.injected_error (
    function_name text NOT NULL,
    sqlstate text NOT NULL,
    message text NOT NULL,
    hint text,
    times int NOT NULL,
    counter regclass NOT NULL
);

CREATE FUNCTION citus_standin.inject_error(function_name text, sqlstate text, message text,
                                           times int DEFAULT 1, hint text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    counter text := format('citus_standin.injected_error_%s',
                           nextval('citus_standin.injected_error_ids'));
BEGIN
    EXECUTE format('CREATE SEQUENCE %s', counter);
    INSERT INTO citus_standin.injected_error
        VALUES (function_name, sqlstate, message, hint, times, counter::regclass);
END $$;
CREATE SEQUENCE citus_standin.injected_error_ids;

CREATE FUNCTION citus_standin.clear_injected_errors() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    injected record;
BEGIN
    FOR injected IN DELETE FROM citus_standin.injected_error RETURNING counter LOOP
        EXECUTE format('DROP SEQUENCE %s', injected.counter);
    END LOOP;
END $$;

CREATE FUNCTION citus_standin.maybe_fail(fn text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    injected record;
BEGIN
    FOR injected IN SELECT * FROM citus_standin.injected_error WHERE function_name = fn LOOP
        IF nextval(injected.counter) <= injected.times THEN
            IF injected.hint IS NULL THEN
                RAISE EXCEPTION '%', injected.message USING ERRCODE = injected.sqlstate;
            ELSE
                RAISE EXCEPTION '%', injected.message
                    USING ERRCODE = injected.sqlstate, HINT = injected.hint;
            END IF;
        END IF;
    END LOOP;
END $$;

CREATE FUNCTION citus_standin.ensure_coordinator() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT groupid FROM pg_catalog.pg_dist_local_group) IS DISTINCT FROM 0 THEN
        RAISE EXCEPTION 'operation is not allowed on this node'
            USING ERRCODE = 'XX000', HINT = 'Connect to the coordinator and run it again.';
    END IF;
END $$;

-- Called on a worker by the coordinator's citus_add_node.
CREATE FUNCTION citus_standin.set_local_group(new_groupid int) RETURNS void
    LANGUAGE sql AS $$ UPDATE pg_catalog.pg_dist_local_group SET groupid = new_groupid $$;

-- A libpq connection-string value, quoted.
CREATE FUNCTION citus_standin.conninfo_value(value text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT '''' || replace(replace(value, '\', '\\'), '''', '\''') || ''''
$$;

-- How to reach a node as the current user, the way Citus does: host, port, this database,
-- citus.node_conninfo (default sslmode=prefer here, the test servers have no TLS), the
-- connection timeout, then pg_dist_authinfo (this node's row before nodeid 0). Without an
-- authinfo row libpq falls back to the server's .pgpass / PGPASSFILE or trust.
CREATE FUNCTION citus_standin.node_conninfo(node_id int, node_name text, node_port int)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    auth text;
    timeout_ms int := coalesce(
        nullif(current_setting('citus.node_connection_timeout', true), '')::int, 30000);
BEGIN
    SELECT authinfo INTO auth FROM pg_catalog.pg_dist_authinfo
     WHERE rolename = current_user AND nodeid IN (node_id, 0)
     ORDER BY nodeid DESC LIMIT 1;
    RETURN concat_ws(' ',
        'host=' || citus_standin.conninfo_value(node_name),
        'port=' || node_port,
        'dbname=' || citus_standin.conninfo_value(current_database()),
        'user=' || citus_standin.conninfo_value(current_user),
        'connect_timeout=' || greatest(1, ceil(timeout_ms / 1000.0)::int),
        'application_name=citus_internal_standin',
        coalesce(nullif(current_setting('citus.node_conninfo', true), ''), 'sslmode=prefer'),
        auth);
END $$;

-- Routed writes run inside a transaction on the node that commits when the coordinator's
-- transaction commits: write_on_node opens it (marked with the coordinator's transaction id)
-- and records it here; a deferred constraint trigger sends COMMIT at the coordinator's COMMIT.
-- When the coordinator's transaction rolls back instead, the row vanishes and the node's
-- transaction stays open until the connection is next used, when node_connection finds the
-- marker and rolls it back. One-phase commit: two nodes can end up apart only if one fails
-- between their COMMITs.
CREATE UNLOGGED TABLE citus_standin.remote_transaction (
    coordinator_xact bigint NOT NULL,
    conn text NOT NULL,
    PRIMARY KEY (coordinator_xact, conn)
);

-- Whether this coordinator transaction already has a transaction open on connection `conn`.
-- (PL/pgSQL, so that a hot standby, where unlogged tables cannot be read, never plans the query.)
CREATE FUNCTION citus_standin.in_remote_transaction(conn text) RETURNS bool
LANGUAGE plpgsql AS $$
BEGIN
    IF pg_is_in_recovery() OR txid_current_if_assigned() IS NULL THEN
        RETURN false;
    END IF;
    RETURN EXISTS (SELECT 1 FROM citus_standin.remote_transaction r
                    WHERE r.coordinator_xact = txid_current_if_assigned()
                      AND r.conn = in_remote_transaction.conn);
END $$;

CREATE FUNCTION citus_standin.commit_remote() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    outcome text := citus_standin.dblink_exec(NEW.conn, 'COMMIT');
BEGIN
    DELETE FROM citus_standin.remote_transaction
     WHERE coordinator_xact = NEW.coordinator_xact AND conn = NEW.conn;
    IF outcome IS DISTINCT FROM 'COMMIT' THEN
        RAISE EXCEPTION 'the transaction on % was rolled back (%)', NEW.conn, outcome
            USING ERRCODE = '40000';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER commit_remote AFTER INSERT ON citus_standin.remote_transaction
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION citus_standin.commit_remote();

-- Open (or reuse) this session's connection to a node; returns the dblink connection name.
-- A cached connection is reused after a check that it still answers and carries no
-- transaction left by a rolled-back coordinator transaction (which it rolls back).
-- A failure is reported as Citus reports it: 08006 naming user@host:port and libpq's reason.
CREATE FUNCTION citus_standin.node_connection(node_id int, node_name text, node_port int)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    conn text := format('citus:%s@%s:%s', current_user, node_name, node_port);
    marker text;
    state text;
    reason text;
BEGIN
    IF conn = ANY (coalesce(citus_standin.dblink_get_connections(), '{}')) THEN
        IF citus_standin.in_remote_transaction(conn) THEN
            RETURN conn;
        END IF;
        BEGIN
            SELECT m INTO marker FROM citus_standin.dblink(conn,
                'SELECT current_setting(''citus_standin.coordinator_xact'', true)') AS t(m text);
            IF coalesce(marker, '') <> '' THEN
                PERFORM citus_standin.dblink_exec(conn, 'ROLLBACK');
            END IF;
            RETURN conn;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE;
            IF state = '25P02' THEN  -- a left-over transaction that failed
                PERFORM citus_standin.dblink_exec(conn, 'ROLLBACK');
                RETURN conn;
            END IF;
            IF NOT citus_standin.is_lost_connection(state) THEN
                RAISE;
            END IF;
        END;
        PERFORM citus_standin.dblink_disconnect(conn);
    END IF;
    BEGIN
        PERFORM citus_standin.dblink_connect(conn,
            citus_standin.node_conninfo(node_id, node_name, node_port));
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS reason = PG_EXCEPTION_DETAIL;
        IF coalesce(reason, '') = '' THEN
            GET STACKED DIAGNOSTICS reason = MESSAGE_TEXT;
        END IF;
        -- libpq: 'connection to server at "h", port p failed: <reason>\n<hint>'
        reason := split_part(regexp_replace(reason, '^.*? failed: ', ''), E'\n', 1);
        RAISE EXCEPTION 'connection to the remote node %@%:% failed with the following error: %',
            current_user, node_name, node_port, reason USING ERRCODE = '08006';
    END;
    RETURN conn;
END $$;

-- Whether an error from a cached connection means the connection is gone (the server
-- restarted or terminated it), so that one reconnect may be tried.
CREATE FUNCTION citus_standin.is_lost_connection(state text) RETURNS bool
    LANGUAGE sql IMMUTABLE AS $$
    SELECT state LIKE '08%' OR state IN ('57P01', '57P02', '57P03')
$$;

-- Run a command on a node (by address), reconnecting once if the cached connection is gone.
CREATE FUNCTION citus_standin.exec_at(node_id int, node_name text, node_port int, command text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    conn text := citus_standin.node_connection(node_id, node_name, node_port);
    state text;
BEGIN
    BEGIN
        RETURN citus_standin.dblink_exec(conn, command);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE;
        IF NOT citus_standin.is_lost_connection(state)
           OR citus_standin.in_remote_transaction(conn) THEN
            RAISE;
        END IF;
    END;
    PERFORM citus_standin.dblink_disconnect(conn);
    conn := citus_standin.node_connection(node_id, node_name, node_port);
    RETURN citus_standin.dblink_exec(conn, command);
END $$;

-- Run a command on a node by id; the address is read now, with a fresh snapshot, so a write
-- that waited for a citus_update_node transaction goes to the address it committed.
CREATE FUNCTION citus_standin.exec_on_node(node_id int, command text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    node record;
BEGIN
    SELECT nodename, nodeport INTO node FROM pg_catalog.pg_dist_node WHERE nodeid = node_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'node % not found', node_id USING ERRCODE = 'P0002';
    END IF;
    RETURN citus_standin.exec_at(node_id, node.nodename, node.nodeport, command);
END $$;

-- A routed write: inside this coordinator transaction's transaction on the node (opened on
-- first use), so that it commits or rolls back with the coordinator's transaction. The address
-- is read now, as in exec_on_node.
CREATE FUNCTION citus_standin.write_on_node(node_id int, command text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    node record;
    conn text;
    xact bigint;
BEGIN
    SELECT nodename, nodeport INTO node FROM pg_catalog.pg_dist_node WHERE nodeid = node_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'node % not found', node_id USING ERRCODE = 'P0002';
    END IF;
    conn := citus_standin.node_connection(node_id, node.nodename, node.nodeport);
    IF NOT citus_standin.in_remote_transaction(conn) THEN
        xact := txid_current();
        PERFORM citus_standin.dblink_exec(conn,
            format('BEGIN; SET LOCAL citus_standin.coordinator_xact = %L', xact));
        INSERT INTO citus_standin.remote_transaction VALUES (xact, conn);
    END IF;
    PERFORM citus_standin.dblink_exec(conn, command);
END $$;

-- Take the node's write lock exclusively until the end of the transaction. With force, wait at
-- most lock_cooldown ms, then terminate the sessions that hold it (as Citus does).
CREATE FUNCTION citus_standin.lock_node_exclusive(node_id int, force bool, lock_cooldown int)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    lock_class int := citus_standin.node_lock_class();
    saved_timeout text := current_setting('lock_timeout');
    blocker int;
BEGIN
    IF NOT force THEN
        PERFORM pg_advisory_xact_lock(lock_class, node_id);
        RETURN;
    END IF;
    IF pg_try_advisory_xact_lock(lock_class, node_id) THEN
        RETURN;
    END IF;
    IF lock_cooldown > 0 THEN
        BEGIN
            PERFORM set_config('lock_timeout', lock_cooldown::text, true);
            PERFORM pg_advisory_xact_lock(lock_class, node_id);
            PERFORM set_config('lock_timeout', saved_timeout, true);
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            NULL;  -- cooldown over: terminate the holders below
        END;
    END IF;
    FOR blocker IN
        SELECT DISTINCT l.pid FROM pg_catalog.pg_locks l
         WHERE l.locktype = 'advisory' AND l.granted AND l.pid <> pg_backend_pid()
           AND l.database = (SELECT oid FROM pg_catalog.pg_database
                              WHERE datname = current_database())
           AND l.classid = lock_class::oid AND l.objid = node_id::oid AND l.objsubid = 2
    LOOP
        RAISE WARNING 'terminating conflicting backend %', blocker;
        PERFORM pg_terminate_backend(blocker);
    END LOOP;
    PERFORM pg_advisory_xact_lock(lock_class, node_id);
END $$;

-- The shared form, taken by every routed write and DDL before it reaches the node.
CREATE FUNCTION citus_standin.lock_node_shared(node_id int) RETURNS void
    LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock_shared(citus_standin.node_lock_class(), node_id)
$$;

CREATE FUNCTION citus_standin.raise_duplicate_node() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'there is already another node with the specified hostname and port'
        USING ERRCODE = '55000';
END $$;

------------------------------------------------------------------------------------------------
-- Node functions (pg_catalog), with Citus 13.2's signatures and defaults
------------------------------------------------------------------------------------------------

CREATE FUNCTION pg_catalog.citus_version() RETURNS text
    LANGUAGE sql STABLE AS $$
    SELECT 'Citus 13.2.2 on x86_64-pc-linux-gnu, Regent test stand-in for Citus — not Citus'
$$;

CREATE FUNCTION pg_catalog.citus_is_coordinator() RETURNS bool
    LANGUAGE sql STABLE STRICT AS $$
    SELECT (SELECT groupid FROM pg_catalog.pg_dist_local_group) = 0
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_dist_node
                    WHERE isactive AND noderole = 'primary')
$$;

CREATE FUNCTION pg_catalog.citus_coordinator_nodeid() RETURNS int
    LANGUAGE sql STABLE STRICT AS $$
    SELECT coalesce((SELECT nodeid FROM pg_catalog.pg_dist_node
                      WHERE groupid = 0 AND noderole = 'primary' LIMIT 1), 0)
$$;

CREATE FUNCTION pg_catalog.citus_add_node(nodename text, nodeport int, groupid int DEFAULT -1,
                                          noderole pg_catalog.noderole DEFAULT 'primary',
                                          nodecluster name DEFAULT 'default')
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    existing int;
    new_nodeid int;
    new_groupid int := groupid;
BEGIN
    PERFORM citus_standin.ensure_coordinator();
    PERFORM citus_standin.maybe_fail('citus_add_node');
    LOCK TABLE pg_catalog.pg_dist_node IN EXCLUSIVE MODE;
    -- Idempotent on (host, port), even when group or role differ (Citus returns the old id).
    SELECT n.nodeid INTO existing FROM pg_catalog.pg_dist_node n
     WHERE n.nodename = citus_add_node.nodename AND n.nodeport = citus_add_node.nodeport;
    IF FOUND THEN
        RETURN existing;
    END IF;
    IF new_groupid = -1 THEN
        new_groupid := nextval('pg_catalog.pg_dist_groupid_seq');
    END IF;
    IF noderole = 'primary' AND EXISTS (
        SELECT 1 FROM pg_catalog.pg_dist_node n
         WHERE n.groupid = new_groupid AND n.noderole = 'primary') THEN
        RAISE EXCEPTION 'group % already has a primary node', new_groupid
            USING ERRCODE = 'XX000';
    END IF;
    new_nodeid := nextval('pg_catalog.pg_dist_node_nodeid_seq');
    -- A worker primary learns its group (Citus syncs its metadata); this also checks that the
    -- node is reachable, failing with 08006 as Citus does.
    IF noderole = 'primary' AND new_groupid <> 0 THEN
        BEGIN
            PERFORM citus_standin.exec_at(new_nodeid, nodename, nodeport,
                format('DO $remote$ BEGIN PERFORM citus_standin.set_local_group(%s); END $remote$',
                       new_groupid));
        EXCEPTION WHEN undefined_function OR invalid_schema_name THEN
            RAISE EXCEPTION 'the citus extension is not created in database "%" on node %:%',
                current_database(), nodename, nodeport
                USING ERRCODE = '55000',
                      HINT = 'Run CREATE EXTENSION citus there first (Regent does it when it bootstraps the node).';
        END;
    END IF;
    INSERT INTO pg_catalog.pg_dist_node (nodeid, groupid, nodename, nodeport, hasmetadata,
                                         isactive, noderole, nodecluster, metadatasynced,
                                         shouldhaveshards)
    VALUES (new_nodeid, new_groupid, nodename, nodeport, noderole = 'primary', true, noderole,
            nodecluster, noderole = 'primary', new_groupid <> 0);
    RETURN new_nodeid;
END $$;

CREATE FUNCTION pg_catalog.citus_add_secondary_node(nodename text, nodeport int,
                                                    primaryname text, primaryport int,
                                                    nodecluster name DEFAULT 'default')
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    existing int;
    primary_group int;
    new_nodeid int;
BEGIN
    PERFORM citus_standin.ensure_coordinator();
    PERFORM citus_standin.maybe_fail('citus_add_secondary_node');
    LOCK TABLE pg_catalog.pg_dist_node IN EXCLUSIVE MODE;
    SELECT n.groupid INTO primary_group FROM pg_catalog.pg_dist_node n
     WHERE n.nodename = primaryname AND n.nodeport = primaryport;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'node at "%:%" does not exist', primaryname, primaryport
            USING ERRCODE = 'XX000';
    END IF;
    SELECT n.nodeid INTO existing FROM pg_catalog.pg_dist_node n
     WHERE n.nodename = citus_add_secondary_node.nodename
       AND n.nodeport = citus_add_secondary_node.nodeport;
    IF FOUND THEN
        RETURN existing;
    END IF;
    new_nodeid := nextval('pg_catalog.pg_dist_node_nodeid_seq');
    INSERT INTO pg_catalog.pg_dist_node (nodeid, groupid, nodename, nodeport, hasmetadata,
                                         isactive, noderole, nodecluster, metadatasynced)
    VALUES (new_nodeid, primary_group, nodename, nodeport, false, true, 'secondary',
            nodecluster, false);
    RETURN new_nodeid;
END $$;

CREATE FUNCTION pg_catalog.citus_set_coordinator_host(
    host text, port int DEFAULT current_setting('port')::int,
    node_role pg_catalog.noderole DEFAULT 'primary', node_cluster name DEFAULT 'default')
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    coordinator int;
BEGIN
    PERFORM citus_standin.ensure_coordinator();
    PERFORM citus_standin.maybe_fail('citus_set_coordinator_host');
    LOCK TABLE pg_catalog.pg_dist_node IN EXCLUSIVE MODE;
    SELECT nodeid INTO coordinator FROM pg_catalog.pg_dist_node
     WHERE groupid = 0 AND noderole = 'primary';
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_dist_node
                WHERE nodename = host AND nodeport = port
                  AND nodeid IS DISTINCT FROM coordinator) THEN
        PERFORM citus_standin.raise_duplicate_node();
    END IF;
    IF coordinator IS NULL THEN
        INSERT INTO pg_catalog.pg_dist_node (groupid, nodename, nodeport, hasmetadata,
                                             isactive, noderole, nodecluster, metadatasynced,
                                             shouldhaveshards)
        VALUES (0, host, port, true, true, node_role, node_cluster, true, false);
    ELSE
        UPDATE pg_catalog.pg_dist_node SET nodename = host, nodeport = port
         WHERE nodeid = coordinator;
    END IF;
END $$;

CREATE FUNCTION pg_catalog.citus_update_node(node_id int, new_node_name text,
                                             new_node_port int, force bool DEFAULT false,
                                             lock_cooldown int DEFAULT 10000)
RETURNS void LANGUAGE plpgsql STRICT AS $$
BEGIN
    PERFORM citus_standin.maybe_fail('citus_update_node');
    -- Citus checks the address before the node id.
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_dist_node
                WHERE nodename = new_node_name AND nodeport = new_node_port
                  AND nodeid <> node_id) THEN
        PERFORM citus_standin.raise_duplicate_node();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_node WHERE nodeid = node_id) THEN
        RAISE EXCEPTION 'node % not found', node_id USING ERRCODE = 'P0002';
    END IF;
    LOCK TABLE pg_catalog.pg_dist_node IN EXCLUSIVE MODE;
    PERFORM citus_standin.lock_node_exclusive(node_id, force, lock_cooldown);
    UPDATE pg_catalog.pg_dist_node SET nodename = new_node_name, nodeport = new_node_port
     WHERE nodeid = node_id;
END $$;

CREATE FUNCTION pg_catalog.citus_pause_node_within_txn(node_id int, force bool DEFAULT false,
                                                       lock_cooldown int DEFAULT 10000)
RETURNS void LANGUAGE plpgsql STRICT AS $$
BEGIN
    PERFORM citus_standin.maybe_fail('citus_pause_node_within_txn');
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_node WHERE nodeid = node_id) THEN
        RAISE EXCEPTION 'node % not found', node_id USING ERRCODE = 'P0002';
    END IF;
    PERFORM citus_standin.lock_node_exclusive(node_id, force, lock_cooldown);
END $$;

CREATE FUNCTION pg_catalog.citus_remove_node(nodename text, nodeport int)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    node record;
    held record;
BEGIN
    PERFORM citus_standin.ensure_coordinator();
    PERFORM citus_standin.maybe_fail('citus_remove_node');
    LOCK TABLE pg_catalog.pg_dist_node IN EXCLUSIVE MODE;
    SELECT * INTO node FROM pg_catalog.pg_dist_node n
     WHERE n.nodename = citus_remove_node.nodename AND n.nodeport = citus_remove_node.nodeport;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'node at "%:%" does not exist', nodename, nodeport
            USING ERRCODE = 'XX000';
    END IF;
    IF node.noderole = 'primary' THEN
        SELECT p.shardid, s.logicalrelid INTO held
          FROM pg_catalog.pg_dist_placement p
          JOIN pg_catalog.pg_dist_shard s USING (shardid)
         WHERE p.groupid = node.groupid
         ORDER BY p.shardid LIMIT 1;
        IF FOUND THEN
            -- The doubled "because" is Citus's own text.
            RAISE EXCEPTION 'cannot remove or disable the node %:% because because it contains the only shard placement for shard %',
                nodename, nodeport, held.shardid
                USING ERRCODE = 'XX000',
                      DETAIL = format('One of the table(s) that prevents the operation complete successfully is %s',
                                      (SELECT format('%I.%I', ns.nspname, c.relname)
                                         FROM pg_catalog.pg_class c
                                         JOIN pg_catalog.pg_namespace ns
                                           ON ns.oid = c.relnamespace
                                        WHERE c.oid = held.logicalrelid));
        END IF;
    END IF;
    DELETE FROM pg_catalog.pg_dist_node WHERE nodeid = node.nodeid;
END $$;

CREATE FUNCTION pg_catalog.citus_get_active_worker_nodes(OUT node_name text,
                                                         OUT node_port bigint)
RETURNS SETOF record LANGUAGE sql STABLE AS $$
    SELECT nodename, nodeport::bigint FROM pg_catalog.pg_dist_node
     WHERE isactive AND noderole = 'primary' AND groupid <> 0
     ORDER BY nodeid
$$;

-- The pre-11 names that still exist in 13.2 (there is no master_set_coordinator_host).
CREATE FUNCTION pg_catalog.master_add_node(nodename text, nodeport int, groupid int DEFAULT -1,
                                           noderole pg_catalog.noderole DEFAULT 'primary',
                                           nodecluster name DEFAULT 'default')
RETURNS int LANGUAGE sql AS $$
    SELECT pg_catalog.citus_add_node(nodename, nodeport, groupid, noderole, nodecluster)
$$;
CREATE FUNCTION pg_catalog.master_add_secondary_node(nodename text, nodeport int,
                                                     primaryname text, primaryport int,
                                                     nodecluster name DEFAULT 'default')
RETURNS int LANGUAGE sql AS $$
    SELECT pg_catalog.citus_add_secondary_node(nodename, nodeport, primaryname, primaryport,
                                               nodecluster)
$$;
CREATE FUNCTION pg_catalog.master_update_node(node_id int, new_node_name text,
                                              new_node_port int, force bool DEFAULT false,
                                              lock_cooldown int DEFAULT 10000)
RETURNS void LANGUAGE sql STRICT AS $$
    SELECT pg_catalog.citus_update_node(node_id, new_node_name, new_node_port, force,
                                        lock_cooldown)
$$;
CREATE FUNCTION pg_catalog.master_remove_node(nodename text, nodeport int)
RETURNS void LANGUAGE sql AS $$
    SELECT pg_catalog.citus_remove_node(nodename, nodeport)
$$;
CREATE FUNCTION pg_catalog.master_get_active_worker_nodes(OUT node_name text,
                                                          OUT node_port bigint)
RETURNS SETOF record LANGUAGE sql STABLE AS $$
    SELECT * FROM pg_catalog.citus_get_active_worker_nodes()
$$;

------------------------------------------------------------------------------------------------
-- Hash-distributed tables
------------------------------------------------------------------------------------------------

-- "col1 type1, col2 type2, ..." of a relation, for shard DDL and dblink column lists.
CREATE FUNCTION citus_standin.column_definitions(rel regclass) RETURNS text
    LANGUAGE sql STABLE AS $$
    SELECT string_agg(format('%I %s', attname, format_type(atttypid, atttypmod)), ', '
                      ORDER BY attnum)
      FROM pg_catalog.pg_attribute
     WHERE attrelid = rel AND attnum > 0 AND NOT attisdropped
$$;

-- Citus names a shard <table>_<shardid>, in the table's schema.
CREATE FUNCTION citus_standin.shard_name(rel regclass, shard bigint) RETURNS text
    LANGUAGE sql STABLE AS $$
    SELECT format('%I.%I', ns.nspname, c.relname || '_' || shard)
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace ns ON ns.oid = c.relnamespace
     WHERE c.oid = rel
$$;

-- Every row of a distributed table, read from each worker primary's shards. Reads take no
-- lock: during a citus_update_node transaction they use the old committed address.
CREATE FUNCTION citus_standin.read_distributed(shell regclass) RETURNS SETOF record
LANGUAGE plpgsql AS $$
DECLARE
    dist record;
    rel regclass;
    node record;
    conn text;
    state text;
BEGIN
    SELECT * INTO dist FROM citus_standin.distributed_table d WHERE d.shell = read_distributed.shell;
    rel := dist.logicalrelid;
    FOR node IN
        SELECT n.nodeid, n.nodename, n.nodeport,
               string_agg(format('SELECT * FROM %s', citus_standin.shard_name(rel, s.shardid)),
                          ' UNION ALL ' ORDER BY s.shardid) AS query
          FROM pg_catalog.pg_dist_shard s
          JOIN pg_catalog.pg_dist_placement p USING (shardid)
          JOIN pg_catalog.pg_dist_node n ON n.groupid = p.groupid AND n.noderole = 'primary'
         WHERE s.logicalrelid = rel
         GROUP BY n.nodeid, n.nodename, n.nodeport
    LOOP
        conn := citus_standin.node_connection(node.nodeid, node.nodename, node.nodeport);
        BEGIN
            RETURN QUERY EXECUTE format('SELECT * FROM citus_standin.dblink(%L, %L) AS t(%s)',
                conn, node.query, citus_standin.column_definitions(dist.shell));
            CONTINUE;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE;
            IF NOT citus_standin.is_lost_connection(state)
               OR citus_standin.in_remote_transaction(conn) THEN
                RAISE;
            END IF;
        END;
        PERFORM citus_standin.dblink_disconnect(conn);
        conn := citus_standin.node_connection(node.nodeid, node.nodename, node.nodeport);
        RETURN QUERY EXECUTE format('SELECT * FROM citus_standin.dblink(%L, %L) AS t(%s)',
            conn, node.query, citus_standin.column_definitions(dist.shell));
    END LOOP;
END $$;

-- INSTEAD OF INSERT on a distributed table: hash the distribution column, find the shard's
-- group and its primary, take that node's write lock (shared: waits while a citus_update_node
-- transaction holds it), then insert into the shard on the node's current address.
CREATE FUNCTION citus_standin.route_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    dist record;
    key text;
    hash int;
    target record;
    target_node int;
    shard text;
BEGIN
    SELECT * INTO dist FROM citus_standin.distributed_table WHERE logicalrelid = TG_RELID;
    EXECUTE format('SELECT ($1).%I::text', dist.distribution_column) USING NEW INTO key;
    IF key IS NULL THEN
        RAISE EXCEPTION 'cannot perform an INSERT with NULL in the partition column'
            USING ERRCODE = '23502';
    END IF;
    hash := hashtext(key);
    SELECT s.shardid, p.groupid INTO target
      FROM pg_catalog.pg_dist_shard s JOIN pg_catalog.pg_dist_placement p USING (shardid)
     WHERE s.logicalrelid = TG_RELID
       AND hash BETWEEN s.shardminvalue::int AND s.shardmaxvalue::int;
    SELECT n.nodeid INTO target_node FROM pg_catalog.pg_dist_node n
     WHERE n.groupid = target.groupid AND n.noderole = 'primary';
    IF target_node IS NULL THEN
        RAISE EXCEPTION 'no primary node in group % for shard %', target.groupid, target.shardid
            USING ERRCODE = 'XX000';
    END IF;
    PERFORM citus_standin.lock_node_shared(target_node);
    shard := citus_standin.shard_name(TG_RELID, target.shardid);
    PERFORM citus_standin.write_on_node(target_node,
        format('INSERT INTO %s SELECT * FROM json_populate_record(NULL::%s, %L)',
               shard, shard, row_to_json(NEW)::text));
    RETURN NEW;
END $$;

-- The shard a distribution value (as text) hashes to.
CREATE FUNCTION citus_standin.shard_for_value(table_name regclass, distribution_value text)
RETURNS bigint LANGUAGE plpgsql STABLE AS $$
DECLARE
    hash int;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM citus_standin.distributed_table WHERE logicalrelid = table_name) THEN
        RAISE EXCEPTION 'relation % is not distributed', table_name USING ERRCODE = 'XX000';
    END IF;
    IF distribution_value IS NULL THEN
        RAISE EXCEPTION 'distribution value cannot be NULL for tables other than reference tables.'
            USING ERRCODE = 'XX000';
    END IF;
    hash := hashtext(distribution_value);
    RETURN (SELECT shardid FROM pg_catalog.pg_dist_shard
             WHERE logicalrelid = table_name
               AND hash BETWEEN shardminvalue::int AND shardmaxvalue::int);
END $$;

-- Citus takes distribution_value "any"; here a typed value, or an untyped literal as text.
CREATE FUNCTION pg_catalog.get_shard_id_for_distribution_column(
    table_name regclass, distribution_value anyelement)
RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT citus_standin.shard_for_value(table_name, distribution_value::text)
$$;
CREATE FUNCTION pg_catalog.get_shard_id_for_distribution_column(
    table_name regclass, distribution_value text DEFAULT NULL)
RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT citus_standin.shard_for_value(table_name, distribution_value)
$$;

CREATE FUNCTION citus_standin.refuse_modification() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the Citus stand-in routes only INSERT and SELECT on distributed table %',
        TG_TABLE_NAME USING ERRCODE = '0A000';
END $$;

-- create_distributed_table(table, column): Citus's signature. The table is moved into schema
-- citus_standin and replaced by a view of the same name over the shards; its rows are moved
-- to the shards; shards are spread round-robin over the worker groups that should have shards.
CREATE FUNCTION pg_catalog.create_distributed_table(
    table_name regclass, distribution_column text,
    distribution_type citus.distribution_type DEFAULT 'hash',
    colocate_with text DEFAULT 'default', shard_count int DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    rel record;
    shell_name text;
    view_oid regclass;
    shards int := coalesce(shard_count,
        nullif(current_setting('citus.shard_count', true), '')::int, 32);
    groups int[];
    range_width bigint;
    shard bigint;
    i int;
    col record;
    node record;
    ddl text;
BEGIN
    PERFORM citus_standin.ensure_coordinator();
    IF distribution_type <> 'hash' THEN
        RAISE EXCEPTION 'the Citus stand-in supports only hash distribution'
            USING ERRCODE = '0A000';
    END IF;
    IF shards < 1 THEN
        RAISE EXCEPTION '% is outside the valid range for parameter "shard_count" (1 .. 64000)',
            shards USING ERRCODE = '22023';
    END IF;
    SELECT c.oid, c.relname, c.relkind, ns.nspname INTO rel
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace ns ON ns.oid = c.relnamespace
     WHERE c.oid = table_name;
    IF EXISTS (SELECT 1 FROM citus_standin.distributed_table WHERE logicalrelid = table_name) THEN
        RAISE EXCEPTION 'table "%" is already distributed', rel.relname USING ERRCODE = 'XX000';
    END IF;
    IF rel.relkind <> 'r' THEN
        RAISE EXCEPTION 'the Citus stand-in distributes only plain tables, not "%"', rel.relname
            USING ERRCODE = '0A000';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                    WHERE attrelid = table_name AND attname = distribution_column
                      AND attnum > 0 AND NOT attisdropped) THEN
        RAISE EXCEPTION 'column "%" of relation "%" does not exist',
            distribution_column, rel.relname USING ERRCODE = '42703';
    END IF;
    SELECT array_agg(n.groupid ORDER BY n.groupid) INTO groups
      FROM pg_catalog.pg_dist_node n
     WHERE n.noderole = 'primary' AND n.isactive AND n.shouldhaveshards;
    IF groups IS NULL THEN
        RAISE EXCEPTION 'no worker node can hold shards: add one with citus_add_node first'
            USING ERRCODE = 'XX000';
    END IF;

    -- The table steps aside for the view clients will use under its name.
    shell_name := format('%s_%s', left(rel.relname, 40), rel.oid);
    EXECUTE format('ALTER TABLE %I.%I RENAME TO %I', rel.nspname, rel.relname, shell_name);
    EXECUTE format('ALTER TABLE %I.%I SET SCHEMA citus_standin', rel.nspname, shell_name);
    EXECUTE format('CREATE VIEW %I.%I AS SELECT * FROM citus_standin.read_distributed(%s::oid::regclass) AS t(%s)',
        rel.nspname, rel.relname, rel.oid, citus_standin.column_definitions(rel.oid));
    view_oid := format('%I.%I', rel.nspname, rel.relname)::regclass;
    FOR col IN SELECT a.attname, pg_get_expr(d.adbin, d.adrelid) AS expr
                 FROM pg_catalog.pg_attrdef d
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
                WHERE d.adrelid = rel.oid AND NOT a.attisdropped
    LOOP
        EXECUTE format('ALTER VIEW %s ALTER COLUMN %I SET DEFAULT %s', view_oid, col.attname,
                       col.expr);
    END LOOP;
    EXECUTE format('CREATE TRIGGER citus_standin_route_insert INSTEAD OF INSERT ON %s FOR EACH ROW EXECUTE FUNCTION citus_standin.route_insert()', view_oid);
    EXECUTE format('CREATE TRIGGER citus_standin_refuse INSTEAD OF UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION citus_standin.refuse_modification()', view_oid);
    INSERT INTO citus_standin.distributed_table VALUES (view_oid, rel.oid, distribution_column);
    INSERT INTO pg_catalog.pg_dist_partition (logicalrelid, partmethod, partkey)
    VALUES (view_oid, 'h', distribution_column);

    -- Shards: equal hash ranges over int4, placed round-robin on the groups.
    range_width := (4294967296 / shards);
    FOR i IN 0 .. shards - 1 LOOP
        shard := nextval('pg_catalog.pg_dist_shardid_seq');
        INSERT INTO pg_catalog.pg_dist_shard
        VALUES (view_oid, shard, 't', NULL,
                (-2147483648 + i * range_width)::text,
                CASE WHEN i = shards - 1 THEN 2147483647
                     ELSE -2147483648 + (i + 1) * range_width - 1 END::text);
        INSERT INTO pg_catalog.pg_dist_placement (shardid, shardstate, shardlength, groupid)
        VALUES (shard, 1, 0, groups[1 + i % array_length(groups, 1)]);
    END LOOP;

    -- Shard tables on each worker primary: columns and NOT NULL, primary key, unique and
    -- check constraints of the original table.
    FOR node IN
        SELECT n.nodeid, array_agg(s.shardid ORDER BY s.shardid) AS shard_ids
          FROM pg_catalog.pg_dist_shard s
          JOIN pg_catalog.pg_dist_placement p USING (shardid)
          JOIN pg_catalog.pg_dist_node n ON n.groupid = p.groupid AND n.noderole = 'primary'
         WHERE s.logicalrelid = view_oid
         GROUP BY n.nodeid
    LOOP
        PERFORM citus_standin.lock_node_shared(node.nodeid);
        ddl := format('CREATE SCHEMA IF NOT EXISTS %I;', rel.nspname);
        FOREACH shard IN ARRAY node.shard_ids LOOP
            ddl := ddl || format('CREATE TABLE IF NOT EXISTS %s (%s);',
                citus_standin.shard_name(view_oid, shard),
                (SELECT string_agg(format('%I %s%s', a.attname,
                                          format_type(a.atttypid, a.atttypmod),
                                          CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END),
                                   ', ' ORDER BY a.attnum)
                   FROM pg_catalog.pg_attribute a
                  WHERE a.attrelid = rel.oid AND a.attnum > 0 AND NOT a.attisdropped)
                || coalesce((SELECT string_agg(', ' || pg_get_constraintdef(c.oid), '')
                               FROM pg_catalog.pg_constraint c
                              WHERE c.conrelid = rel.oid AND c.contype IN ('p', 'u', 'c')),
                            ''));
        END LOOP;
        PERFORM citus_standin.exec_on_node(node.nodeid, ddl);
    END LOOP;

    -- Rows already in the table move to the shards.
    EXECUTE format('INSERT INTO %s SELECT * FROM citus_standin.%I', view_oid, shell_name);
    EXECUTE format('DELETE FROM citus_standin.%I', shell_name);
END $$;

//! Server settings Citus needs, applied on every render of postgresql.conf on every member of a
//! Citus cluster, and the logical replication slots Citus owns (which must never be dropped).
//!
//! - `citus` first in `shared_preload_libraries` (Citus refuses to load otherwise);
//! - `max_prepared_transactions` 0 → `2 × max_connections` (Citus commits distributed
//!   transactions with two-phase commit);
//! - `wal_level = logical` (shard moves and splits use logical replication);
//! - `citus.local_hostname` = the host the agent itself uses to reach the server, so that
//!   Citus's connections to its own node pass the same authentication rules.

use std::collections::BTreeMap;

/// Name of the Citus library and extension.
pub const LIBRARY: &str = "citus";

/// A parameter whose value the Citus adjustments cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("postgresql parameter {name}: {reason}")]
pub struct GucError {
    pub name: String,
    pub reason: String,
}

/// Adjust rendered parameters for Citus. `params` maps lower-case parameter names to unquoted
/// values and must already hold the defaults (`max_connections`, `max_prepared_transactions`).
pub fn apply(params: &mut BTreeMap<String, String>, local_hostname: &str) -> Result<(), GucError> {
    let libraries =
        preload_libraries_with_citus(params.get("shared_preload_libraries").map(String::as_str));
    params.insert("shared_preload_libraries".into(), libraries);

    let prepared = match params.get("max_prepared_transactions") {
        None => 0,
        Some(v) => integer("max_prepared_transactions", v)?,
    };
    if prepared == 0 {
        let connections = match params.get("max_connections") {
            // Postgres' own default.
            None => 100,
            Some(v) => integer("max_connections", v)?,
        };
        params.insert(
            "max_prepared_transactions".into(),
            (connections * 2).to_string(),
        );
    }

    params.insert("wal_level".into(), "logical".into());
    params.insert("citus.local_hostname".into(), local_hostname.to_string());
    Ok(())
}

fn integer(name: &str, value: &str) -> Result<i64, GucError> {
    value.trim().parse().map_err(|_| GucError {
        name: name.to_string(),
        reason: format!("not an integer: {value:?}"),
    })
}

/// `shared_preload_libraries` with `citus` first and every other entry kept in its order.
/// Entries may be double-quoted (`"citus"`); empty entries are dropped.
pub fn preload_libraries_with_citus(current: Option<&str>) -> String {
    let others = current
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|lib| !lib.is_empty() && lib.trim_matches('"') != LIBRARY);
    std::iter::once(LIBRARY)
        .chain(others)
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether a replication slot on a primary belongs to Citus and must be kept: a logical slot in
/// the Citus database named `citus_shard_move_slot_<n>_<n>[_<n>]` with plugin `pgoutput`, or
/// `citus_shard_split_slot_<n>_<n>[_<n>]` with plugin `citus` (each `<n>` a number without
/// leading zero).
pub fn is_citus_slot(
    name: &str,
    slot_type: &str,
    plugin: Option<&str>,
    database: Option<&str>,
    citus_database: &str,
) -> bool {
    if slot_type != "logical" || database != Some(citus_database) {
        return false;
    }
    let Some(rest) = name.strip_prefix("citus_shard_") else {
        return false;
    };
    let (expected_plugin, numbers) = if let Some(n) = rest.strip_prefix("move_slot") {
        ("pgoutput", n)
    } else if let Some(n) = rest.strip_prefix("split_slot") {
        ("citus", n)
    } else {
        return false;
    };
    plugin == Some(expected_plugin) && numbered_suffix(numbers)
}

/// `_<n>_<n>` or `_<n>_<n>_<n>`, where `<n>` is `[1-9][0-9]*`.
fn numbered_suffix(text: &str) -> bool {
    let Some(rest) = text.strip_prefix('_') else {
        return false;
    };
    let parts: Vec<&str> = rest.split('_').collect();
    (2..=3).contains(&parts.len())
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !p.starts_with('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn citus_goes_first_and_user_order_is_kept() {
        let cases: &[(Option<&str>, &str)] = &[
            (None, "citus"),
            (Some(""), "citus"),
            (Some("citus"), "citus"),
            (Some("pg_stat_statements"), "citus,pg_stat_statements"),
            (
                Some("pg_stat_statements, citus ,auto_explain"),
                "citus,pg_stat_statements,auto_explain",
            ),
            (
                Some("auto_explain,pg_stat_statements"),
                "citus,auto_explain,pg_stat_statements",
            ),
            (Some("\"citus\",pg_cron,,"), "citus,pg_cron"),
        ];
        for (input, expected) in cases {
            assert_eq!(preload_libraries_with_citus(*input), *expected, "{input:?}");
        }
    }

    #[test]
    fn apply_sets_every_citus_parameter() {
        let mut p = params(&[
            ("max_connections", "150"),
            ("max_prepared_transactions", "0"),
            ("wal_level", "replica"),
            ("shared_preload_libraries", "pg_stat_statements"),
            ("citus.local_hostname", "elsewhere"),
        ]);
        apply(&mut p, "/var/run/postgresql").unwrap();
        assert_eq!(
            p,
            params(&[
                ("max_connections", "150"),
                ("max_prepared_transactions", "300"),
                ("wal_level", "logical"),
                ("shared_preload_libraries", "citus,pg_stat_statements"),
                ("citus.local_hostname", "/var/run/postgresql"),
            ])
        );
    }

    #[test]
    fn user_set_prepared_transactions_are_kept() {
        let mut p = params(&[
            ("max_connections", "100"),
            ("max_prepared_transactions", "64"),
        ]);
        apply(&mut p, "localhost").unwrap();
        assert_eq!(p["max_prepared_transactions"], "64");
        // Unset: derived from max_connections, Postgres' default when that is unset too.
        let mut p = BTreeMap::new();
        apply(&mut p, "localhost").unwrap();
        assert_eq!(p["max_prepared_transactions"], "200");
    }

    #[test]
    fn non_integer_values_are_named() {
        let mut p = params(&[
            ("max_connections", "lots"),
            ("max_prepared_transactions", "0"),
        ]);
        let e = apply(&mut p, "localhost").unwrap_err();
        assert_eq!(e.name, "max_connections");
        let mut p = params(&[("max_prepared_transactions", "x")]);
        let e = apply(&mut p, "localhost").unwrap_err();
        assert_eq!(
            e.to_string(),
            "postgresql parameter max_prepared_transactions: not an integer: \"x\""
        );
    }

    #[test]
    fn citus_slots_are_recognised() {
        let keep = |name: &str, kind: &str, plugin: &str, db: &str| {
            is_citus_slot(name, kind, Some(plugin), Some(db), "citus")
        };
        assert!(keep(
            "citus_shard_move_slot_1_2",
            "logical",
            "pgoutput",
            "citus"
        ));
        assert!(keep(
            "citus_shard_move_slot_10_2_33",
            "logical",
            "pgoutput",
            "citus"
        ));
        assert!(keep(
            "citus_shard_split_slot_1_2_3",
            "logical",
            "citus",
            "citus"
        ));
        // plugin must match the kind of slot
        assert!(!keep(
            "citus_shard_move_slot_1_2",
            "logical",
            "citus",
            "citus"
        ));
        assert!(!keep(
            "citus_shard_split_slot_1_2",
            "logical",
            "pgoutput",
            "citus"
        ));
        // other database, physical slot
        assert!(!keep(
            "citus_shard_move_slot_1_2",
            "logical",
            "pgoutput",
            "postgres"
        ));
        assert!(!keep(
            "citus_shard_move_slot_1_2",
            "physical",
            "pgoutput",
            "citus"
        ));
        // number shapes: 2 or 3 numbers, no leading zero, nothing else
        for name in [
            "citus_shard_move_slot_1",
            "citus_shard_move_slot_1_2_3_4",
            "citus_shard_move_slot_01_2",
            "citus_shard_move_slot_1__2",
            "citus_shard_move_slot_1_2_",
            "citus_shard_move_slot_1_x",
            "citus_shard_move_slot1_2",
            "citus_shard_copy_slot_1_2",
            "my_slot",
        ] {
            assert!(!keep(name, "logical", "pgoutput", "citus"), "{name}");
        }
        assert!(!is_citus_slot(
            "citus_shard_move_slot_1_2",
            "logical",
            None,
            Some("citus"),
            "citus"
        ));
    }
}

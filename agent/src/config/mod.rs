//! Configuration: Patroni's YAML keys and `PATRONI_*` environment variables (docs/configuration.md).
//!
//! Loading order (as Patroni): a config file or directory (`*.yml`/`*.yaml` merged alphabetically)
//! with `PATRONI_*` variables applied on top; without a path, the whole YAML from
//! `PATRONI_CONFIGURATION` (other variables then ignored) or else the variables alone.
//!
//! The text is parsed into a JSON tree first (YAML syntax errors carry line and column), the
//! environment overlay is merged into that tree, and only then is it deserialized into typed
//! structs, so that a wrong type names its dotted key (`restapi.listen: invalid type: ...`).
//! Unknown keys are ignored: Patroni files carry many settings Regent has no use for.
//!
//! Dynamic settings (`ttl`, `loop_wait`, `postgresql.use_slots`, ...) live in the DCS; see
//! [`DynamicConfig`].
//!
//! Modules: `types` (the keys as structs, with their defaults), `load` (file, environment, and
//! the merged tree into a [`Config`]), `env` (the `PATRONI_*` overlay), `validate` (the checks),
//! `error` ([`ConfigError`]), `value` (YAML parsing, merging, lenient scalars), `dynamic` (the
//! DCS settings) and `http` (the client for other members' REST APIs).

// The structs mirror Patroni's full key set; not every key has a consumer yet.
#![allow(dead_code)]

mod dynamic;
mod env;
mod error;
mod http;
mod load;
mod types;
mod validate;
mod value;

// The submodules' public items keep their `crate::config::` paths.
pub use dynamic::DynamicConfig;
pub use error::*;
pub use http::member_client;
#[cfg(test)]
use http::member_client_builder;
pub use load::*;
pub use types::*;
pub use validate::*;
pub(crate) use value::parse_bool_str;

#[cfg(test)]
mod tests;

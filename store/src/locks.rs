//! The advisory-lock ids that make cluster-wide work exclusive, in one place (each spells its name in ASCII).

/// Serializes migrations: when replicas start together, one migrates and the others wait.
pub const MIGRATION_LOCK: i64 = 0x686f_6f6b_6761_7465; // "hookgate"

/// Serializes claim rounds across the cluster (claims are short; this makes per-destination limits and FIFO exact
/// without races between nodes).
pub const CLAIM_LOCK: i64 = 0x686f_6f6b_636c_6169; // "hookclai"

/// Makes a janitor round a singleton.
pub const JANITOR_LOCK: i64 = 0x686f_6f6b_6a61_6e69; // "hookjani"

/// Makes a planner-statistics refresh a singleton.
pub const STATISTICS_LOCK: i64 = 0x686f_6f6b_7374_6174; // "hookstat"

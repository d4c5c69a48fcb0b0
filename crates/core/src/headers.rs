//! The names of the headers permgate itself sets, shared by the decision (which strips client
//! copies) and the data planes (which write them).

/// Prefix of every header permgate sets; client copies of any of them are removed.
pub const OWN_HEADER_PREFIX: &str = "x-permgate-";

/// Response headers of a trimmed bulk call: how many items were removed, and which.
pub const REMOVED_COUNT: &str = "x-permgate-removed-count";
pub const REMOVED_IDS: &str = "x-permgate-removed-ids";
/// Sent to the CRM beside the user header when the caller is a service principal (value
/// `service`); never sent for a person. Client copies are removed like every `x-permgate-*`.
pub const PRINCIPAL_HEADER: &str = "x-permgate-principal";

/// Most removed ids listed in the header (the count is exact).
pub const MAX_REMOVED_LISTED: usize = 200;

//! The record-scope configs and snapshot of tests/records.rs (the demo with record types, a
//! bulk reassign route), shared with the suites that need a trimmed bulk call.

use super::demo_config_text;

/// Lead N is owned by this user in the sample CRM (its documented formula).
pub fn owner(n: u32) -> &'static str {
    [
        "u-admin", "u-sm", "u-rep1", "u-rep2", "u-csr", "u-mm", "u-da", "u-member",
    ][(n as usize - 1) % 8]
}

pub fn snapshot() -> String {
    let owners: Vec<String> = (1..=40)
        .map(|n| format!(r#"{{"type":"lead","id":"{n}","owner":"{}"}}"#, owner(n)))
        .collect();
    let mut v: serde_json::Value = serde_json::from_str(permgate::demo::DEMO_SNAPSHOT).unwrap();
    v["roles"].as_array_mut().unwrap().extend([
        serde_json::json!({"id": "limited_rep", "permissions": ["lead.view@own+shared"]}),
        serde_json::json!({"id": "lead_manager", "permissions": ["lead.view@subordinates"]}),
    ]);
    for u in v["users"].as_array_mut().unwrap() {
        match u["id"].as_str() {
            Some("u-rep1") => u["roles"] = serde_json::json!(["limited_rep"]),
            Some("u-sm") => u["roles"] = serde_json::json!(["lead_manager"]),
            _ => {}
        }
    }
    v["records"] = serde_json::from_str(&format!(
        r#"{{"owners":[{}],"shares":[{{"type":"lead","id":"1","team":"sales-east"}}]}}"#,
        owners.join(",")
    ))
    .unwrap();
    serde_json::to_string_pretty(&v).unwrap()
}

pub fn config() -> String {
    let base = demo_config_text();
    let with_records = base.replacen(
        "path = \"/api/v1/leads/{id}\"\npermission = \"lead.view\"",
        "path = \"/api/v1/leads/{id}\"\npermission = \"lead.view\"\nrecords = [{ type = \"lead\", id = \"path:id\" }]",
        1,
    );
    assert_ne!(with_records, base);
    with_records + "\n[[record_type]]\nname = \"lead\"\nid = \"integer\"\n"
}

pub fn bulk_config(mode: &str) -> String {
    let text = config().replacen(
        "path = \"/api/v1/leads/bulk-reassign\"\npermission = \"lead.reassign\"",
        &format!("path = \"/api/v1/leads/bulk-reassign\"\npermission = \"lead.reassign\"\nbulk = {{ type = \"lead\", items = \"/ids\", mode = \"{mode}\", keys = [\"ids\", \"owner_id\"] }}\nnew_owner = {{ at = \"/owner_id\" }}"),
        1,
    );
    assert!(text.contains("bulk = {"));
    text
}

/// The manager may reassign leads of their own and their reports' (seed 004).
pub fn bulk_snapshot() -> String {
    snapshot().replacen(
        "\"lead.view@subordinates\"",
        "\"lead.view@subordinates\", \"lead.reassign@subordinates\"",
        1,
    )
}

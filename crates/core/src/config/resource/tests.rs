use super::*;

/// The demo config without its routes, with a lead record type of UUID ids.
fn base() -> String {
    let demo = crate::demo::DEMO_CONFIG;
    let head = &demo[..demo.find("[[route]]").unwrap()];
    format!("{head}\n[[record_type]]\nname = \"lead\"\nid = \"uuid\"\n")
}

fn parse(text: &str) -> Result<Config, Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("snapshot.json"), crate::demo::DEMO_SNAPSHOT).unwrap();
    Config::parse("c.toml", text, dir.path()).map_err(|e| e.iter().map(|e| e.to_string()).collect())
}

const RESOURCE: &str = r#"
[[resource]]
name = "leads"
path = "/api/leads/"
id = "uuid"
record_type = "lead"
permission_group = "lead"
permissions = { delete = "lead.reassign" }
unknown_record = "allow"
list = { items = "/results", item_id = "/id", counts = ["/count"] }
bulk = [
  { path = "bulk/", methods = ["PATCH"], action = "update", items = "/ids", keys = ["ids", "changes"] },
  { path = "bulk/", methods = ["DELETE"], action = "delete", items = "/ids" },
  { name = "bulk_reassign", path = "bulk-reassign/", methods = ["POST"], permission = "lead.reassign", items = "/ids", new_owner = { at = "/owner_id" } },
]

[[resource.sub]]
name = "comments"
path = "comments/"
id = "int"
actions = ["list", "create", "delete"]

[[resource.sub]]
name = "convert"
path = "convert/"
methods = ["POST"]
permission = "deal.create"
"#;

/// What [`RESOURCE`] means, written out as `[[route]]` blocks.
const HAND_WRITTEN: &str = r#"
[[route]]
name = "leads.list"
methods = ["GET"]
path = "/api/leads/"
permission = "lead.view"
list = { type = "lead", items = "/results", item_id = "/id", counts = ["/count"] }

[[route]]
name = "leads.create"
methods = ["POST"]
path = "/api/leads/"
permission = "lead.create"

[[route]]
name = "leads.read"
methods = ["GET"]
path = "/api/leads/{id:uuid}/"
permission = "lead.view"
records = [{ type = "lead", id = "path:id" }]
unknown_record = "allow"

[[route]]
name = "leads.update"
methods = ["PUT", "PATCH"]
path = "/api/leads/{id:uuid}/"
permission = "lead.update"
records = [{ type = "lead", id = "path:id" }]
unknown_record = "allow"

[[route]]
name = "leads.delete"
methods = ["DELETE"]
path = "/api/leads/{id:uuid}/"
permission = "lead.reassign"
records = [{ type = "lead", id = "path:id" }]
unknown_record = "allow"

[[route]]
name = "leads.bulk_update"
methods = ["PATCH"]
path = "/api/leads/bulk/"
permission = "lead.update"
bulk = { type = "lead", items = "/ids", keys = ["ids", "changes"] }

[[route]]
name = "leads.bulk_delete"
methods = ["DELETE"]
path = "/api/leads/bulk/"
permission = "lead.reassign"
bulk = { type = "lead", items = "/ids" }
allow_body = true

[[route]]
name = "leads.bulk_reassign"
methods = ["POST"]
path = "/api/leads/bulk-reassign/"
permission = "lead.reassign"
bulk = { type = "lead", items = "/ids" }
new_owner = { at = "/owner_id" }

[[route]]
name = "leads.comments.list"
methods = ["GET"]
path = "/api/leads/{id:uuid}/comments/"
permission = "lead.view"
records = [{ type = "lead", id = "path:id" }]
unknown_record = "allow"

[[route]]
name = "leads.comments.create"
methods = ["POST"]
path = "/api/leads/{id:uuid}/comments/"
permission = "lead.update"
records = [{ type = "lead", id = "path:id" }]
unknown_record = "allow"

[[route]]
name = "leads.comments.delete"
methods = ["DELETE"]
path = "/api/leads/{id:uuid}/comments/{comments_id:int}/"
permission = "lead.update"
records = [{ type = "lead", id = "path:id" }]
unknown_record = "allow"

[[route]]
name = "leads.convert"
methods = ["POST"]
path = "/api/leads/{id:uuid}/convert/"
permission = "deal.create"
records = [{ type = "lead", id = "path:id" }]
unknown_record = "allow"
"#;

/// Everything a route compiles to but where it was declared.
fn compiled(c: &Config) -> std::collections::BTreeMap<String, String> {
    c.routes
        .routes()
        .iter()
        .map(|r| {
            let v = &r.value;
            (
                v.name.clone(),
                format!(
                    "{:?} {:?} {:?} {:?} {} {} {} {:?} {}",
                    r.methods.names(),
                    r.pattern,
                    v.access,
                    v.inspect,
                    v.shadow,
                    v.allow_body,
                    v.passthrough,
                    v.allow_headers,
                    v.rate_limit.is_some()
                ),
            )
        })
        .collect()
}

const UUID: &str = "0b7e7c8a-3f2a-4d4e-9d7b-2a9e4f1c5d6e";

#[test]
fn a_resource_compiles_to_exactly_its_hand_written_routes() {
    let from_resource = parse(&(base() + RESOURCE)).unwrap();
    let by_hand = parse(&(base() + HAND_WRITTEN)).unwrap();
    assert_eq!(from_resource.routes.len(), 12);
    assert_eq!(compiled(&from_resource), compiled(&by_hand));
    // The same decisions, route for route (only the origin differs).
    // The demo's users, with one lead as the only record (the demo's own records are deals,
    // a type this config does not declare).
    let mut snapshot: serde_json::Value = serde_json::from_str(crate::demo::DEMO_SNAPSHOT).unwrap();
    snapshot["records"] = serde_json::json!({
        "owners": [{"type": "lead", "id": UUID, "owner": "u-rep1"}]
    });
    let snapshot_text = snapshot.to_string();
    let snapshot =
        crate::snapshot::Snapshot::build("s.json", &snapshot_text, &by_hand.catalog).unwrap();
    let upper = UUID.to_ascii_uppercase();
    let targets = [
        "/api/leads/".to_string(),
        format!("/api/leads/{UUID}/"),
        format!("/api/leads/{upper}/"),
        format!("/api/leads/{UUID}"),
        "/api/leads/bulk/".into(),
        "/api/leads/bulk-reassign/".into(),
        "/api/leads/7/".into(),
        format!("/api/leads/{UUID}/comments/"),
        format!("/api/leads/{UUID}/comments/12/"),
        format!("/api/leads/{UUID}/comments/x/"),
        format!("/api/leads/{UUID}/convert/"),
    ];
    let mut compared = 0;
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
        for target in &targets {
            for user in [None, Some("u-admin"), Some("u-rep1"), Some("u-member")] {
                let decide = |c: &Config| {
                    let mut j = crate::explain::explain(c, &snapshot, method, target, user).json;
                    if let Some(r) = j["route"].as_object_mut() {
                        r.remove("declared_at");
                        r.remove("resource");
                    }
                    j["config_hash"] = serde_json::Value::Null;
                    j
                };
                assert_eq!(
                    decide(&from_resource),
                    decide(&by_hand),
                    "{method} {target} {user:?}"
                );
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 5 * targets.len() * 4);
    // A literal sub-collection is never taken for an id, nor a non-UUID segment.
    let find = |m: http::Method, p: &str| {
        from_resource
            .routes
            .find(&m, p)
            .map(|r| r.value.name.clone())
    };
    assert_eq!(find(http::Method::GET, "/api/leads/bulk/"), None);
    assert_eq!(
        find(http::Method::PATCH, "/api/leads/bulk/").as_deref(),
        Some("leads.bulk_update")
    );
    assert_eq!(find(http::Method::GET, "/api/leads/7/"), None);
    assert_eq!(
        find(http::Method::GET, &format!("/api/leads/{UUID}/")).as_deref(),
        Some("leads.read")
    );
    let read = from_resource
        .routes
        .find(&http::Method::GET, &format!("/api/leads/{UUID}/"))
        .unwrap();
    let line = (base() + RESOURCE)
        .lines()
        .position(|l| l == "[[resource]]")
        .unwrap()
        + 1;
    assert_eq!(read.origin, format!("resource 'leads' at c.toml:{line}"));
    assert_eq!(read.value.resource.as_deref(), Some("leads"));
    let text = summary(&from_resource);
    assert!(
        text.starts_with("  resources:   1 (expanded to 12 of the 12 routes)\n"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")
                == "DELETE /api/leads/{id:uuid}/ leads.delete needs lead.reassign, checks the record"),
        "{text}"
    );
    assert_eq!(summary(&by_hand), "");
}

/// The errors of `text` (the base config plus it), and the 1-based line of `needle` in it.
fn errors(extra: &str) -> (Vec<String>, impl Fn(&str) -> usize) {
    let text = base() + extra;
    let errs = parse(&text).err().unwrap_or_default();
    let line = move |needle: &str| {
        text.lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} not in the config"))
            + 1
    };
    (errs, line)
}

fn has(errs: &[String], expected: &str) {
    assert!(
        errs.iter().any(|e| e.starts_with(expected)),
        "no error starting with {expected:?} in {errs:#?}"
    );
}

const LEADS: &str = "[[resource]]\nname = \"leads\"\npath = \"/api/leads/\"\nid = \"uuid\"\nrecord_type = \"lead\"\npermission_group = \"lead\"\n";

#[test]
fn bad_resources_are_located_errors() {
    // An unknown action: serde refuses it, at its line.
    let (errs, line) = errors(&format!("{LEADS}actions = [\"list\", \"erase\"]\n"));
    has(
        &errs,
        &format!("c.toml:{}: unknown variant `erase`", line("erase")),
    );
    // An unknown key, like everywhere else.
    let (errs, line) = errors(&format!("{LEADS}ids = \"uuid\"\n"));
    has(
        &errs,
        &format!("c.toml:{}: unknown field `ids`", line("ids =")),
    );
    // A bad id type.
    let (errs, line) = errors(&LEADS.replace("id = \"uuid\"", "id = \"UUID\""));
    has(
        &errs,
        &format!(
            "c.toml:{}: resource[0].id: 'UUID' is not uuid, int or regex:<pattern>",
            line("\"UUID\"")
        ),
    );
    let (errs, _) = errors(&LEADS.replace("id = \"uuid\"", "id = \"regex:[a-\""));
    has(&errs, "c.toml:");
    assert!(
        errs.iter()
            .any(|e| e.contains("resource[0].id: '[a-' is not a regex that compiles")),
        "{errs:?}"
    );
    // The id's type and the record type's disagree.
    let (errs, line) = errors(&LEADS.replace("id = \"uuid\"", "id = \"int\""));
    has(
        &errs,
        &format!(
            "c.toml:{}: resource[0].id: 'int' but record type 'lead' has uuid ids",
            line("id = \"int\"")
        ),
    );
    // A path without its leading slash.
    let (errs, line) = errors(&LEADS.replace("\"/api/leads/\"", "\"api/leads/\""));
    has(
        &errs,
        &format!(
            "c.toml:{}: resource[0].path: 'api/leads/': the collection path starts with '/'",
            line("api/leads/")
        ),
    );
    // An unknown permission, named with where it came from.
    let (errs, line) = errors(&LEADS.replace("group = \"lead\"", "group = \"leed\""));
    has(
        &errs,
        &format!("c.toml:{}: resource[0].permission_group: unknown permission 'leed.view' (from permission_group 'leed' + 'view'; not in the catalogue)", line("\"leed\"")),
    );
    assert_eq!(errs.len(), 4, "one error per permission: {errs:#?}");
    let (errs, line) = errors(&format!(
        "{LEADS}permissions = {{ delete = \"lead.erase\" }}\n"
    ));
    has(
        &errs,
        &format!(
            "c.toml:{}: resource[0].permissions.delete: unknown permission 'lead.erase'",
            line("lead.erase")
        ),
    );
    // No permission at all for an action.
    let (errs, _) = errors(&LEADS.replace("permission_group = \"lead\"\n", ""));
    assert!(
        errs.iter().any(|e| e.contains("resource[0]: action 'list' has no permission: set permission_group or permissions.list")),
        "{errs:?}"
    );
    // An undeclared record type; list and bulk without one.
    let (errs, line) = errors(&LEADS.replace("record_type = \"lead\"", "record_type = \"leed\""));
    has(
        &errs,
        &format!(
            "c.toml:{}: resource[0].record_type: unknown record type 'leed'",
            line("\"leed\"")
        ),
    );
    let no_type = LEADS.replace("record_type = \"lead\"\n", "");
    let (errs, line) = errors(&format!(
        "{no_type}list = {{ items = \"/results\" }}\nbulk = [{{ path = \"bulk/\", methods = [\"PATCH\"], action = \"update\", items = \"/ids\" }}]\n"
    ));
    has(
        &errs,
        &format!(
            "c.toml:{}: resource[0].list: list filtering needs the resource's record_type",
            line("list =")
        ),
    );
    has(
        &errs,
        &format!(
            "c.toml:{}: resource[0].bulk[0]: a bulk route trims by record",
            line("bulk =")
        ),
    );
    // Sub-routes: relative paths, one form at a time.
    let (errs, line) = errors(&format!(
        "{LEADS}\n[[resource.sub]]\nname = \"notes\"\npath = \"/notes/\"\n"
    ));
    has(
        &errs,
        &format!(
            "c.toml:{}: resource[0].sub[0].path: '/notes/': a path relative to the item path",
            line("\"/notes/\"")
        ),
    );
    let (errs, line) = errors(&format!(
        "{LEADS}\n[[resource.sub]]\nname = \"notes\"\npath = \"notes/\"\nmethods = [\"GET\"]\npermission = \"lead.view\"\nid = \"int\"\n"
    ));
    has(
        &errs,
        &format!(
            "c.toml:{}: resource[0].sub[0]: either one route",
            line("\"notes\"")
        ),
    );
    let (errs, _) = errors(&format!(
        "{LEADS}\n[[resource.sub]]\nname = \"notes\"\npath = \"notes/\"\nactions = [\"read\"]\n"
    ));
    assert!(
        errs.iter().any(|e| e
            .contains("resource[0].sub[0].actions: 'read' acts on one item: set the sub's 'id'")),
        "{errs:?}"
    );
    // Two resources of one name.
    let (errs, _) = errors(&format!("{LEADS}{LEADS}"));
    assert!(
        errs.iter()
            .any(|e| e.contains("resource[1].name: resource 'leads' is also declared at c.toml:")),
        "{errs:?}"
    );
}

#[test]
fn a_hand_written_route_on_an_expanded_one_is_refused_naming_both() {
    let route = "\n[[route]]\nname = \"my_read\"\nmethods = [\"GET\"]\npath = \"/api/leads/{id:uuid}/\"\npermission = \"lead.view\"\n";
    let (errs, line) = errors(&format!("{LEADS}{route}"));
    let resource_line = line("[[resource]]");
    has(
        &errs,
        &format!(
            "c.toml:{}: route: route '/api/leads/{{id:uuid}}/' conflicts with the route at resource 'leads' at c.toml:{resource_line}",
            line("name = \"my_read\"") - 1
        ),
    );
    // Its name too.
    let (errs, _) = errors(&format!(
        "{LEADS}\n[[route]]\nname = \"leads.read\"\nmethods = [\"GET\"]\npath = \"/other\"\npermission = \"lead.view\"\n"
    ));
    assert!(
        errs.iter()
            .any(|e| e
                .contains("route name 'leads.read' is also used at resource 'leads' at c.toml:")),
        "{errs:?}"
    );
    // Leaving the action out of the resource lets the hand-written route stand.
    let text = format!("{LEADS}actions = [\"list\", \"create\", \"update\", \"delete\"]\n{route}");
    let c = parse(&(base() + &text)).unwrap();
    let r = c
        .routes
        .find(&http::Method::GET, &format!("/api/leads/{UUID}/"))
        .unwrap();
    assert_eq!(
        (r.value.name.as_str(), r.value.resource.as_deref()),
        ("my_read", None)
    );
    assert_eq!(c.routes.len(), 5);
}

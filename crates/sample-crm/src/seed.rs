//! Deterministic seed data. Every value is a pure function of the record id and
//! [`CrmOptions::owners`], so tests can compute who owns what; the formulas are documented
//! in the parent module's doc comment and must stay in sync with it.

use serde_json::{json, Map, Value};

use super::store::{iso8601, Coll, Record, Store};
use super::CrmOptions;

pub(crate) const CUSTOMERS: u64 = 60;
pub(crate) const LEADS: u64 = 40;
pub(crate) const DEALS: u64 = 20;
pub(crate) const CAMPAIGNS: u64 = 8;
pub(crate) const THREADS: u64 = 30;
pub(crate) const CANNED_RESPONSES: u64 = 10;
pub(crate) const FOLLOW_UPS: u64 = 6;
pub(crate) const NOTES: u64 = 50;
pub(crate) const TASKS: u64 = 20;

/// 2024-01-01T00:00:00Z; seed timestamps are offsets from it.
const EPOCH_2024: u64 = 1_704_067_200;
const DAY: u64 = 86_400;

const FIRST_NAMES: [&str; 16] = [
    "Olivia", "Liam", "Emma", "Noah", "Ava", "Elijah", "Sophia", "Mateo", "Isabella", "Lucas",
    "Mia", "Amelia", "Ethan", "Harper", "Aiden", "Chloe",
];
// 15 last names against 16 first names: the pairs only repeat after 240 ids.
const LAST_NAMES: [&str; 15] = [
    "Smith", "Garcia", "Chen", "Patel", "Johnson", "Kim", "Nguyen", "Rossi", "Okafor", "Silva",
    "Novak", "Cohen", "Brown", "Tanaka", "Dubois",
];
const COMPANIES: [&str; 12] = [
    "Northwind Traders",
    "Globex Corporation",
    "Initech",
    "Umbrella Health",
    "Stark Logistics",
    "Wayne Foods",
    "Hooli",
    "Soylent Labs",
    "Vandelay Industries",
    "Pied Piper",
    "Cyberdyne Systems",
    "Tyrell Biotech",
];
const PRODUCTS: [&str; 5] = [
    "Annual license",
    "Onboarding package",
    "Premium support",
    "Seat expansion",
    "API add-on",
];
const TIME_ZONES: [&str; 8] = [
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "Europe/London",
    "Europe/Berlin",
    "Asia/Tokyo",
    "Australia/Sydney",
];
pub(crate) const LEAD_STATUSES: [&str; 6] =
    ["new", "contacted", "qualified", "proposal", "won", "lost"];
const LEAD_SOURCES: [&str; 5] = ["website", "referral", "trade_show", "cold_call", "partner"];
pub(crate) const DEAL_STAGES: [&str; 6] = [
    "prospecting",
    "qualification",
    "proposal",
    "negotiation",
    "closed_won",
    "closed_lost",
];
const CAMPAIGN_NAMES: [&str; 8] = [
    "Spring Sale",
    "Product Launch",
    "Webinar Invite",
    "Win-back",
    "Holiday Promo",
    "Onboarding Drip",
    "Renewal Reminder",
    "NPS Survey",
];
const CAMPAIGN_STATUSES: [&str; 4] = ["draft", "scheduled", "running", "completed"];
const THREAD_STATUSES: [&str; 4] = ["open", "pending", "snoozed", "closed"];
const CHANNELS: [&str; 4] = ["email", "sms", "chat", "phone"];
const PARENT_TYPES: [&str; 3] = ["lead", "customer", "deal"];
const PLANS: [&str; 4] = ["free", "starter", "pro", "enterprise"];

/// `(id, display name, role names, manager_id)` of the demo users.
pub(crate) const DEMO_TEAM: [(&str, &str, &str, Option<&str>); 8] = [
    ("u-admin", "Ada Admin", "admin", None),
    ("u-sm", "Sam Manager", "sales_manager", None),
    ("u-rep1", "Riley Rep", "sales_rep", Some("u-sm")),
    ("u-rep2", "Robin Rep", "sales_rep", Some("u-sm")),
    ("u-csr", "Casey Support", "customer_service", None),
    ("u-mm", "Morgan Marketing", "marketing_manager", None),
    ("u-da", "Dana Analyst", "data_analyst", None),
    ("u-member", "Max Member", "member", None),
];

/// `(id, name, description)` of the roles.
const ROLES: [(&str, &str, &str); 7] = [
    (
        "admin",
        "Admin",
        "Full access, including billing and team management",
    ),
    (
        "sales_manager",
        "Sales manager",
        "Manages the sales reps and all sales records",
    ),
    (
        "sales_rep",
        "Sales rep",
        "Works their own leads, deals and customers",
    ),
    (
        "customer_service",
        "Customer service",
        "Handles inbox threads",
    ),
    (
        "marketing_manager",
        "Marketing manager",
        "Runs campaigns and follow-ups",
    ),
    (
        "data_analyst",
        "Data analyst",
        "Read-only access to analytics and exports",
    ),
    ("member", "Member", "Basic access"),
];

/// Index of 1-based id `n` in a list of `len` items cycled from its first entry:
/// `(n - 1) % len`; `None` for an empty list.
pub(crate) fn cycle_index(len: usize, n: u64) -> Option<usize> {
    let len = u64::try_from(len).ok().filter(|&l| l > 0)?;
    usize::try_from(n.saturating_sub(1) % len).ok()
}

/// `items[(n - 1) % len]` for the non-empty constant tables above.
fn cycle(items: &[&'static str], n: u64) -> &'static str {
    cycle_index(items.len(), n)
        .and_then(|i| items.get(i))
        .copied()
        .unwrap_or("")
}

fn ts(days: u64, hour: u64) -> Value {
    Value::from(iso8601(EPOCH_2024 + days * DAY + hour * 3600))
}

fn object(value: Value) -> Record {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Owner of seed record `n`: `owners[(n - 1) % owners.len()]`, or null with no owners.
pub(crate) fn owner_of(owners: &[String], n: u64) -> Value {
    cycle_index(owners.len(), n)
        .and_then(|i| owners.get(i))
        .map_or(Value::Null, |owner| Value::from(owner.as_str()))
}

/// Creator of seed record `n`: the owner of record `n + 1`.
pub(crate) fn creator_of(owners: &[String], n: u64) -> Value {
    owner_of(owners, n.saturating_add(1))
}

/// Adds `owner_id`, `created_by`, `created_at` and `updated_at` to seed record `n`.
fn stamp(options: &CrmOptions, n: u64, mut record: Record) -> Record {
    record.insert("owner_id".into(), owner_of(&options.owners, n));
    record.insert("created_by".into(), creator_of(&options.owners, n));
    record.insert("created_at".into(), ts(n % 90, n % 9 + 8));
    record.insert("updated_at".into(), ts(n % 90 + 30, n % 9 + 9));
    record
}

fn person_name(n: u64, shift: u64) -> (&'static str, &'static str) {
    (
        cycle(&FIRST_NAMES, n + shift),
        cycle(&LAST_NAMES, n + shift),
    )
}

fn email_of(first: &str, last: &str) -> String {
    format!(
        "{}.{}@example.com",
        first.to_lowercase(),
        last.to_lowercase()
    )
}

/// Builds the whole seeded store.
pub(crate) fn seed(options: &CrmOptions) -> Store {
    let mut store = Store::default();
    for n in 1..=CUSTOMERS {
        store
            .coll_mut(Coll::Customers)
            .seed_int(n, stamp(options, n, customer(n)));
    }
    for n in 1..=LEADS {
        store
            .coll_mut(Coll::Leads)
            .seed_int(n, stamp(options, n, lead(n)));
    }
    for n in 1..=DEALS {
        store
            .coll_mut(Coll::Deals)
            .seed_int(n, stamp(options, n, deal(n)));
    }
    for n in 1..=CAMPAIGNS {
        store
            .coll_mut(Coll::Campaigns)
            .seed_int(n, stamp(options, n, campaign(n)));
    }
    for n in 1..=THREADS {
        let mut record = stamp(options, n, thread(n));
        // Threads are worked by whoever owns them.
        let owner = record.get("owner_id").cloned().unwrap_or(Value::Null);
        let messages = thread_messages(n, &owner);
        record.insert("assignee_id".into(), owner);
        store.coll_mut(Coll::Threads).seed_int(n, record);
        store.messages.insert(n, messages);
    }
    store.next_message_id = THREADS * 2 + 1;
    for n in 1..=CANNED_RESPONSES {
        store
            .coll_mut(Coll::CannedResponses)
            .seed_int(n, stamp(options, n, canned_response(n)));
    }
    for n in 1..=FOLLOW_UPS {
        store
            .coll_mut(Coll::FollowUps)
            .seed_int(n, stamp(options, n, follow_up(n)));
    }
    for n in 1..=NOTES {
        store
            .coll_mut(Coll::Notes)
            .seed_int(n, stamp(options, n, note(n)));
    }
    for n in 1..=TASKS {
        store
            .coll_mut(Coll::Tasks)
            .seed_int(n, stamp(options, n, task(n)));
    }
    seed_team(&mut store, options);
    seed_small_collections(&mut store, options);
    store.settings = settings();
    store.integrations = integrations();
    store
}

fn customer(n: u64) -> Record {
    let (first, last) = person_name(n, 0);
    let mut tags = Vec::new();
    if n % 3 == 0 {
        tags.push("vip");
    }
    if n % 4 == 0 {
        tags.push("newsletter");
    }
    if n % 7 == 0 {
        tags.push("churn-risk");
    }
    object(json!({
        "name": format!("{first} {last}"),
        "first_name": first,
        "last_name": last,
        "email": email_of(first, last),
        "phone": format!("+1-555-{:04}", 100 + n),
        "company": cycle(&COMPANIES, n),
        "zip": format!("{:05}", (n * 7919) % 90_000 + 10_000),
        "time_zone": cycle(&TIME_ZONES, n),
        "photo_url": format!("https://cdn.crm.example/photos/customers/{n}.jpg"),
        "properties": {
            "plan": cycle(&PLANS, n),
            "lifetime_value": n * 137,
            "industry": cycle(&["software", "retail", "healthcare", "logistics", "food"], n),
        },
        "subscribed": n % 5 != 0,
        "tags": tags,
    }))
}

fn lead(n: u64) -> Record {
    let (first, last) = person_name(n, 5);
    let company = cycle(&COMPANIES, n + 3);
    object(json!({
        "title": format!("{} for {company}", cycle(&PRODUCTS, n)),
        "name": format!("{first} {last}"),
        "email": email_of(first, last),
        "phone": format!("+1-555-{:04}", 300 + n),
        "company": company,
        "status": cycle(&LEAD_STATUSES, n),
        "source": cycle(&LEAD_SOURCES, n),
        "value": 1_000 + 500 * n,
        "currency": "USD",
    }))
}

fn deal(n: u64) -> Record {
    let company = cycle(&COMPANIES, n);
    object(json!({
        "name": format!("{company} - {}", cycle(&PRODUCTS, n)),
        "stage": cycle(&DEAL_STAGES, n),
        "amount": 2_500 * n,
        "currency": "USD",
        "customer_id": n,
        "lead_id": n,
        "close_date": ts(n * 7 + 60, 0),
        "probability": (n * 13) % 100,
    }))
}

/// Campaign `n` targets every customer whose id is congruent to `n` mod 8.
pub(crate) fn campaign_contacts(n: u64) -> Vec<u64> {
    (1..=CUSTOMERS).filter(|c| c % 8 == n % 8).collect()
}

fn campaign(n: u64) -> Record {
    let status = cycle(&CAMPAIGN_STATUSES, n);
    object(json!({
        "name": cycle(&CAMPAIGN_NAMES, n),
        "status": status,
        "kind": if n % 2 == 1 { "email" } else { "sms" },
        "subject": format!("{} - don't miss out", cycle(&CAMPAIGN_NAMES, n)),
        "contact_ids": campaign_contacts(n),
        "scheduled_at": if status == "draft" { Value::Null } else { ts(n * 5 + 20, 10) },
        "launched_at": if matches!(status, "running" | "completed") {
            ts(n * 5 + 20, 10)
        } else {
            Value::Null
        },
    }))
}

fn thread(n: u64) -> Record {
    let status = cycle(&THREAD_STATUSES, n);
    let mut tags = vec![];
    if n % 2 == 0 {
        tags.push("billing");
    }
    if n % 5 == 0 {
        tags.push("bug");
    }
    object(json!({
        "customer_id": n,
        "subject": format!("Question about order #{}", 10_000 + n * 17),
        "channel": cycle(&CHANNELS, n),
        "status": status,
        "tags": tags,
        "snoozed_until": if status == "snoozed" { ts(n + 120, 9) } else { Value::Null },
        "last_message_at": ts(n + 100, 15),
        "unread": n % 3 == 0,
    }))
}

/// Thread `n` has messages `2n - 1` (inbound, from its customer) and `2n` (the reply).
fn thread_messages(n: u64, assignee: &Value) -> Vec<Record> {
    vec![
        object(json!({
            "id": 2 * n - 1,
            "thread_id": n,
            "direction": "inbound",
            "author_id": null,
            "customer_id": n,
            "body": format!("Hi, I have a question about order #{}.", 10_000 + n * 17),
            "sent_at": ts(n + 100, 14),
        })),
        object(json!({
            "id": 2 * n,
            "thread_id": n,
            "direction": "outbound",
            "author_id": assignee,
            "customer_id": n,
            "body": "Thanks for reaching out! Let me look into that for you.",
            "sent_at": ts(n + 100, 15),
        })),
    ]
}

fn canned_response(n: u64) -> Record {
    let titles = [
        "Greeting",
        "Refund policy",
        "Shipping times",
        "Password reset",
        "Escalation",
        "Thanks",
        "Out of office",
        "Pricing",
        "Feature request",
        "Closing",
    ];
    let title = cycle(&titles, n);
    object(json!({
        "title": title,
        "shortcut": format!("/{}", title.to_lowercase().replace(' ', "-")),
        "body": format!("{title}: Hello {{{{first_name}}}}, thanks for contacting Acme Widgets."),
        "shared_with": [],
    }))
}

/// Follow-up `n` enrolls customers `n`, `n + 6` and `n + 12`.
fn follow_up(n: u64) -> Record {
    object(json!({
        "name": format!("Follow-up sequence {n}"),
        "status": if n % 3 == 0 { "paused" } else { "active" },
        "trigger": cycle(&["lead_created", "deal_won", "thread_closed"], n),
        "steps": [
            {"delay_days": 1, "channel": "email", "template": "intro"},
            {"delay_days": 3 + n, "channel": "sms", "template": "reminder"},
        ],
        "customer_ids": [n, n + 6, n + 12],
    }))
}

/// Parent of note/task `n`: type `[lead, customer, deal][(n - 1) % 3]`, id `(n - 1) / 3 + 1`.
fn parent_of(n: u64) -> Value {
    json!({"type": cycle(&PARENT_TYPES, n), "id": (n - 1) / 3 + 1})
}

fn note(n: u64) -> Record {
    object(json!({
        "parent": parent_of(n),
        "body": format!("Call notes #{n}: discussed {} and next steps.", cycle(&PRODUCTS, n)),
        "pinned": n % 10 == 0,
    }))
}

fn task(n: u64) -> Record {
    object(json!({
        "parent": parent_of(n),
        "title": cycle(&["Call back", "Send proposal", "Schedule demo", "Check in", "Send invoice"], n),
        "status": cycle(&["open", "in_progress", "done"], n),
        "priority": cycle(&["low", "normal", "high"], n),
        "due_date": ts(n * 3 + 150, 0),
    }))
}

/// The demo users, plus any extra owner from the options (as plain members).
fn seed_team(store: &mut Store, options: &CrmOptions) {
    let mut next_day = 0;
    for (id, name, role, manager) in DEMO_TEAM {
        let local = id.trim_start_matches("u-");
        let record = object(json!({
            "name": name,
            "email": format!("{local}@acme-widgets.example"),
            "roles": [role],
            "manager_id": manager,
            "active": true,
            "created_at": ts(next_day, 9),
        }));
        next_day += 1;
        store.coll_mut(Coll::TeamMembers).seed_str(id, record);
    }
    for owner in &options.owners {
        let taken = DEMO_TEAM.iter().any(|(demo, ..)| *demo == owner.as_str());
        if owner.is_empty() || taken {
            continue;
        }
        let record = object(json!({
            "name": owner,
            "email": format!("{owner}@acme-widgets.example"),
            "roles": ["member"],
            "manager_id": null,
            "active": true,
            "created_at": ts(next_day, 9),
        }));
        store.coll_mut(Coll::TeamMembers).seed_str(owner, record);
    }
    for (id, name, description) in ROLES {
        let members: Vec<&str> = DEMO_TEAM
            .iter()
            .filter(|(_, _, role, _)| *role == id)
            .map(|(user, ..)| *user)
            .collect();
        let record = object(json!({
            "name": name,
            "description": description,
            "member_ids": members,
        }));
        store.coll_mut(Coll::Roles).seed_str(id, record);
    }
}

fn seed_small_collections(store: &mut Store, options: &CrmOptions) {
    let tags = [
        ("vip", "#d4af37"),
        ("newsletter", "#1e90ff"),
        ("churn-risk", "#dc143c"),
        ("billing", "#2e8b57"),
        ("bug", "#8b0000"),
        ("feature-request", "#6a5acd"),
        ("enterprise", "#000080"),
        ("smb", "#708090"),
    ];
    for (n, (name, color)) in (1..).zip(tags) {
        let record = object(json!({"name": name, "color": color}));
        store
            .coll_mut(Coll::Tags)
            .seed_int(n, stamp(options, n, record));
    }
    let properties = [
        ("plan", "Plan", "enum"),
        ("lifetime_value", "Lifetime value", "number"),
        ("industry", "Industry", "text"),
        ("renewal_date", "Renewal date", "date"),
        ("account_manager", "Account manager", "user"),
    ];
    for (n, (key, label, kind)) in (1..).zip(properties) {
        let record =
            object(json!({"key": key, "label": label, "type": kind, "object": "customer"}));
        store
            .coll_mut(Coll::Properties)
            .seed_int(n, stamp(options, n, record));
    }
    let webhooks = [
        (
            "https://hooks.acme-widgets.example/crm/leads",
            vec!["lead.created", "lead.updated"],
        ),
        (
            "https://hooks.acme-widgets.example/crm/deals",
            vec!["deal.won"],
        ),
        (
            "https://zapier.example/hooks/catch/123/abc",
            vec!["customer.created"],
        ),
    ];
    for (n, (url, events)) in (1..).zip(webhooks) {
        let record = object(json!({"url": url, "events": events, "active": n != 3}));
        store
            .coll_mut(Coll::Webhooks)
            .seed_int(n, stamp(options, n, record));
    }
    // API tokens: metadata only. The CRM never stores or returns a usable secret.
    let tokens = [
        ("Zapier sync", vec!["customers:read", "leads:write"]),
        ("BI export", vec!["analytics:read"]),
        ("Website form", vec!["leads:write"]),
    ];
    for (n, (name, scopes)) in (1..).zip(tokens) {
        let record = object(json!({
            "name": name,
            "prefix": format!("crm_live_{n:04}"),
            "scopes": scopes,
            "last_used_at": ts(n + 170, 12),
        }));
        store
            .coll_mut(Coll::Tokens)
            .seed_int(n, stamp(options, n, record));
    }
}

/// Section names under `/api/v1/settings/{section}`.
pub(crate) const SETTINGS_SECTIONS: [&str; 6] = [
    "billing",
    "timezone",
    "away-messages",
    "call-forwarding",
    "url-shortening",
    "number",
];

fn settings() -> Record {
    object(json!({
        "company_name": "Acme Widgets Inc.",
        "locale": "en-US",
        "currency": "USD",
        "billing": {
            "plan": "business",
            "seats": 25,
            "billing_email": "billing@acme-widgets.example",
            "card_last4": "4242",
            "next_invoice_date": "2024-07-01",
        },
        "timezone": {
            "time_zone": "America/New_York",
            "business_hours": {"start": "09:00", "end": "17:00", "days": ["mon", "tue", "wed", "thu", "fri"]},
        },
        "away-messages": {
            "enabled": false,
            "message": "Thanks for your message! We're away right now and will reply during business hours.",
        },
        "call-forwarding": {"enabled": true, "forward_to": "+1-555-0100"},
        "url-shortening": {"enabled": true, "domain": "acme.link"},
        "number": {"phone_number": "+1-555-0199", "type": "local", "sms_enabled": true},
    }))
}

/// Integration names under `/api/v1/integrations/{name}`.
pub(crate) const INTEGRATIONS: [&str; 3] = ["slack", "calendly", "facebook"];

fn integrations() -> Record {
    object(json!({
        "slack": {"connected": true, "workspace": "acme-widgets", "channel": "#crm-alerts"},
        "calendly": {"connected": false, "scheduling_url": null},
        "facebook": {"connected": true, "page_id": "1234567890", "page_name": "Acme Widgets"},
    }))
}

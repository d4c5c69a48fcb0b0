//! The fast path on a snapshot with tenants and for record removals, against the source form
//! and a full build; and the indexed source form against the scanning one it replaced.

use super::*;
use crate::access::{check_assignee, check_record, RecordDecision};
use crate::records::tests::catalog;
use proptest::prelude::*;

const BASE: &str = r#"{
  "roles": [
    {"id": "rep_limited", "permissions": ["lead.view@own+shared", "lead.update@own+shared", "lead.reassign@subordinates", "task.view@own"]},
    {"id": "mgr_scoped", "permissions": ["lead.*@subordinates+shared"]},
    {"id": "rep_team", "permissions": ["lead.view@team+shared"]}
  ],
  "tenants": [{"id": "a"}, {"id": "b", "name": "Org B"}],
  "users": [
    {"id": "u", "memberships": [{"tenant": "a", "roles": ["admin"]}, {"tenant": "b", "roles": ["rep_limited"], "teams": ["east"], "manager": "m"}]},
    {"id": "m", "memberships": [{"tenant": "b", "roles": ["mgr_scoped"], "teams": ["east"]}]},
    {"id": "w", "memberships": [{"tenant": "a", "roles": ["rep_team"], "teams": ["west"]}]},
    {"id": "x", "memberships": [{"tenant": "a", "roles": ["rep_limited"], "manager": "w"}, {"tenant": "b", "roles": ["rep_team"], "teams": ["west"]}]},
    {"id": "loner"}
  ],
  "records": {
    "owners": [
      {"type": "lead", "id": 1, "owner": "w", "tenant": "a"},
      {"type": "lead", "id": 2, "owner": "u", "tenant": "b"},
      {"type": "lead", "id": 3, "owner": "x", "tenant": "b"},
      {"type": "lead", "id": 4, "tenant": "a"},
      {"type": "task", "id": 20, "owner": "x", "tenant": "b"}
    ],
    "shares": [
      {"type": "lead", "id": 2, "team": "east"},
      {"type": "lead", "id": 4, "user": "x"},
      {"type": "lead", "id": 1, "role": "rep_team"}
    ],
    "related": [
      {"type": "note", "id": 9, "parent_type": "lead", "parent_id": 1},
      {"type": "task", "id": 20, "parent_type": "lead", "parent_id": 2}
    ]
  }
}"#;

const USERS: &[&str] = &["u", "m", "w", "x", "loner", "new", "ghost"];
const TENANTS: &[&str] = &["a", "b", "c", "zz"];
const ROLES: &[&str] = &["admin", "rep_limited", "mgr_scoped", "rep_team", "nope"];
const TEAMS: &[&str] = &["east", "west", "north"];
const RECORDS: &[(&str, u64)] = &[
    ("lead", 1),
    ("lead", 2),
    ("lead", 3),
    ("lead", 4),
    ("lead", 5),
    ("note", 9),
    ("task", 20),
    ("note", 30),
];
const PERMS: &[&str] = &["lead.view", "lead.update", "lead.reassign", "task.view"];

fn pick(pool: &'static [&'static str]) -> impl Strategy<Value = String> {
    proptest::sample::select(pool).prop_map(str::to_string)
}

fn roles() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(pick(ROLES), 0..3)
}

fn teams() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(pick(TEAMS), 0..2)
}

/// A tenant as a change names it: usually one of the snapshot's, sometimes none.
fn tenant() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        6 => pick(TENANTS).prop_map(Some),
        1 => Just(None),
    ]
}

fn principal() -> impl Strategy<Value = (Option<String>, Option<String>, Option<String>)> {
    prop_oneof![
        pick(USERS).prop_map(|u| (Some(u), None, None)),
        pick(TEAMS).prop_map(|t| (None, Some(t), None)),
        pick(ROLES).prop_map(|r| (None, None, Some(r))),
    ]
}

fn record() -> impl Strategy<Value = (String, RawId)> {
    proptest::sample::select(RECORDS).prop_map(|(t, id)| (t.to_string(), RawId::Number(id)))
}

/// Changes on a snapshot with tenants: what the database source and the changes API send.
fn tenant_change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (pick(USERS), roles(), tenant()).prop_map(|(user, roles, tenant)| Change::SetRoles {
            user,
            roles,
            tenant
        }),
        (pick(USERS), proptest::option::of(pick(USERS)), tenant()).prop_map(
            |(user, manager, tenant)| Change::SetManager {
                user,
                manager,
                tenant
            }
        ),
        (pick(USERS), teams(), tenant()).prop_map(|(user, teams, tenant)| Change::SetTeams {
            user,
            teams,
            tenant
        }),
        (
            pick(USERS),
            pick(TENANTS),
            roles(),
            teams(),
            proptest::option::of(pick(USERS))
        )
            .prop_map(
                |(user, tenant, roles, teams, manager)| Change::SetMembership {
                    user,
                    tenant,
                    roles,
                    teams,
                    manager
                }
            ),
        (pick(USERS), pick(TENANTS))
            .prop_map(|(user, tenant)| Change::RemoveMembership { user, tenant }),
        prop_oneof![pick(TENANTS), Just("has space".to_string())].prop_map(|id| {
            Change::UpsertTenant {
                tenant: RawTenant { id, name: None },
            }
        }),
        pick(USERS).prop_map(|user| Change::Disable { user }),
        pick(USERS).prop_map(|user| Change::Enable { user }),
        (
            pick(USERS),
            proptest::collection::vec(
                (pick(TENANTS), roles(), proptest::option::of(pick(USERS))),
                0..3
            ),
            prop_oneof![4 => Just(Vec::new()), 1 => roles()],
            any::<bool>()
        )
            .prop_map(|(id, ms, roles, disabled)| Change::UpsertUser {
                user: RawUser {
                    id,
                    name: None,
                    email: None,
                    roles,
                    teams: Vec::new(),
                    manager: None,
                    api_keys: Vec::new(),
                    disabled,
                    memberships: ms
                        .into_iter()
                        .map(|(tenant, roles, manager)| RawMembership {
                            tenant,
                            roles,
                            teams: Vec::new(),
                            manager,
                        })
                        .collect(),
                },
            }),
        (record(), proptest::option::of(pick(USERS))).prop_map(|((record_type, id), owner)| {
            Change::SetOwner {
                record_type,
                id,
                owner,
            }
        }),
        (record(), principal()).prop_map(|((record_type, id), (user, team, role))| {
            Change::Share {
                record_type,
                id,
                user,
                team,
                role,
            }
        }),
        (record(), principal()).prop_map(|((record_type, id), (user, team, role))| {
            Change::Unshare {
                record_type,
                id,
                user,
                team,
                role,
            }
        }),
        (record(), proptest::option::of(pick(USERS)), tenant()).prop_map(
            |((record_type, id), owner, tenant)| Change::UpsertRecord {
                record_type,
                id,
                owner,
                parent: None,
                tenant,
            }
        ),
        record().prop_map(|(record_type, id)| Change::RemoveRecord { record_type, id }),
    ]
}

/// The source form's answer: the batch applied, checked and built.
fn slow(
    raw: &RawSnapshot,
    batch: &[Change],
    c: &Catalog,
) -> Result<(RawSnapshot, Snapshot), String> {
    let mut next = raw.clone();
    next.apply(batch, c.record_types())?;
    let roles = check_member_roles(batch, c, &next);
    if !roles.is_empty() {
        return Err(roles.join("; "));
    }
    let s = Snapshot::build("changed", &next.to_json(), c).map_err(|e| {
        e.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    Ok((next, s))
}

/// Everything a decision with tenants reads, by name, compared between two snapshots.
fn same_tenant_data(c: &Catalog, a: &Snapshot, b: &Snapshot) -> Result<(), TestCaseError> {
    let types = c.record_types();
    prop_assert_eq!(a.user_count(), b.user_count());
    prop_assert_eq!(a.membership_count(), b.membership_count());
    prop_assert_eq!(a.tenant_count(), b.tenant_count());
    prop_assert_eq!(a.records().stats().records, b.records().stats().records);
    prop_assert_eq!(a.records().stats().shares, b.records().stats().shares);
    let member = |s: &Snapshot, u: &str, t: &str| {
        s.user_index(u)
            .and_then(|p| s.tenant_index(t).and_then(|t| s.member(p, t)))
    };
    let reassign = c.permission("lead.reassign").unwrap();
    for id in USERS {
        let (pa, pb) = (a.user_index(id), b.user_index(id));
        prop_assert_eq!(pa.is_some(), pb.is_some(), "user {}", id);
        if let (Some(pa), Some(pb)) = (pa, pb) {
            prop_assert_eq!(a.user(pa).disabled, b.user(pb).disabled);
            prop_assert_eq!(
                &a.grant(a.user(pa)).roles_header,
                &b.grant(b.user(pb)).roles_header
            );
        }
        for t in TENANTS {
            let (ma, mb) = (member(a, id, t), member(b, id, t));
            prop_assert_eq!(ma.is_some(), mb.is_some(), "{} in {}", id, t);
            let (Some(ma), Some(mb)) = (ma, mb) else {
                continue;
            };
            let (ua, ub) = (a.user(ma), b.user(mb));
            prop_assert_eq!(&a.grant(ua).roles_header, &b.grant(ub).roles_header);
            prop_assert!(a.grant(ua).permissions == b.grant(ub).permissions);
            prop_assert_eq!(ua.disabled, ub.disabled);
            prop_assert_eq!(a.tenant_id(ua.tenant), b.tenant_id(ub.tenant));
            let mgr = |s: &Snapshot, m: Option<u32>| m.map(|m| s.user(m).id.to_string());
            prop_assert_eq!(mgr(a, ua.manager), mgr(b, ub.manager), "{} in {}", id, t);
            let names = |s: &Snapshot, u: &User| {
                let mut v: Vec<String> = u
                    .teams
                    .iter()
                    .map(|t| s.team_name(*t).to_string())
                    .collect();
                v.sort();
                v
            };
            prop_assert_eq!(names(a, ua), names(b, ub));
            for other in USERS {
                let (Some(oa), Some(ob)) = (member(a, other, t), member(b, other, t)) else {
                    continue;
                };
                prop_assert_eq!(
                    a.hierarchy().is_at_or_below(ma, oa),
                    b.hierarchy().is_at_or_below(mb, ob),
                    "{} above {} in {}",
                    id,
                    other,
                    t
                );
                prop_assert_eq!(
                    check_assignee(a, ma, reassign, oa),
                    check_assignee(b, mb, reassign, ob)
                );
            }
            for p in PERMS {
                let perm = c.permission(p).unwrap();
                for (rt, rid) in RECORDS {
                    let ty = types.get(rt).unwrap();
                    let Ok((_, rid)) = canonical(types, rt, &RawId::Number(*rid)) else {
                        continue;
                    };
                    let (da, db): (RecordDecision, RecordDecision) = (
                        check_record(a, ma, perm, ty, &rid),
                        check_record(b, mb, perm, ty, &rid),
                    );
                    prop_assert_eq!(da, db, "{} in {} {} {} {}", id, t, p, rt, rid);
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    /// Batches on a snapshot with tenants, one after another: the path the gateway takes
    /// (incremental unless [`Snapshot::needs_rebuild`] says otherwise) accepts and refuses
    /// what the source form and a full build do, and decides the same afterwards.
    #[test]
    fn with_tenants_incremental_equals_full_rebuild(
        batches in proptest::collection::vec(proptest::collection::vec(tenant_change(), 1..7), 1..5)
    ) {
        let c = catalog();
        let mut fast = Snapshot::build("s.json", BASE, &c).unwrap();
        let mut raw = RawSnapshot::parse(BASE).unwrap();
        for batch in &batches {
            let reference = slow(&raw, batch, &c);
            if fast.needs_rebuild(batch, &c) {
                // The gateway rebuilds: the reference is what it serves.
                if let Ok((r, s)) = reference {
                    raw = r;
                    fast = s;
                }
                continue;
            }
            let quick = fast.apply(batch, &c);
            prop_assert_eq!(
                quick.is_ok(),
                reference.is_ok(),
                "batch {:?}\nincremental: {:?}\nrebuild: {:?}",
                batch,
                quick.as_ref().err(),
                reference.as_ref().err()
            );
            if let (Ok(q), Ok((r, s))) = (quick, reference) {
                same_tenant_data(&c, &q.snapshot, &s)?;
                fast = q.snapshot;
                raw = r;
            }
        }
    }

    /// The indexed source form gives what the scanning one gave, change for change: the same
    /// error, or the same snapshot text; on a snapshot with tenants and without, structural
    /// changes included, over several batches replayed at once.
    #[test]
    fn indexed_replay_equals_the_scanning_one(
        tenanted in any::<bool>(),
        batches in proptest::collection::vec(
            proptest::collection::vec(prop_oneof![
                4 => tenant_change(),
                4 => super::equivalence::change(),
                1 => structural_change(),
            ], 1..7),
            1..5,
        )
    ) {
        let c = catalog();
        let types = c.record_types();
        let base = if tenanted { BASE } else { crate::records::tests::SNAPSHOT };
        let mut linear = RawSnapshot::parse(base).unwrap();
        let mut replayed: Vec<&[Change]> = Vec::new();
        for batch in &batches {
            let mut next = linear.clone();
            let want = next.apply_linear(batch, types);
            let mut one = linear.clone();
            let got = one.apply(batch, types);
            prop_assert_eq!(&got, &want, "batch {:?}", batch);
            if want.is_ok() {
                prop_assert_eq!(one.to_json(), next.to_json(), "batch {:?}", batch);
                linear = next;
                replayed.push(batch);
            }
        }
        // All the accepted batches in one replay: one index for all of them.
        let mut all = RawSnapshot::parse(base).unwrap();
        prop_assert_eq!(all.apply_all(&replayed, types), Ok(()));
        prop_assert_eq!(all.to_json(), linear.to_json());
    }
}

/// Changes that renumber (full build only), for the replay comparison.
fn structural_change() -> impl Strategy<Value = Change> {
    prop_oneof![
        pick(USERS).prop_map(|user| Change::RemoveUser { user }),
        (prop_oneof![Just("custom".to_string()), pick(ROLES)]).prop_map(|id| Change::UpsertRole {
            role: RawRole {
                id,
                name: None,
                description: None,
                permissions: vec!["lead.view@own".into()],
            },
        }),
        (prop_oneof![Just("custom".to_string()), pick(ROLES)])
            .prop_map(|role| Change::RemoveRole { role }),
        (record(), record(), tenant()).prop_map(|((record_type, id), (pt, pid), tenant)| {
            Change::UpsertRecord {
                record_type,
                id,
                owner: None,
                parent: Some(RecordRef {
                    record_type: pt,
                    id: pid,
                }),
                tenant,
            }
        }),
    ]
}

/// The cases the database source sends most, each through the fast path: a deletion, and a
/// membership change on a snapshot with tenants; refusals as the full build refuses them.
#[test]
fn deletions_and_tenant_batches_take_the_fast_path() {
    let c = catalog();
    let s = Snapshot::build("s.json", BASE, &c).unwrap();
    let parse = |j: &str| serde_json::from_str::<Vec<Change>>(j).unwrap();
    let lead = |s: &Snapshot, id: u64| {
        let t = c.record_types().get("lead").unwrap();
        s.records().find(t, &RecordId::Int(id))
    };
    let note = |s: &Snapshot, id: u64| {
        let t = c.record_types().get("note").unwrap();
        s.records().find(t, &RecordId::Int(id))
    };
    // A deletion: the lead and its note are gone, other chunks shared.
    let batch = parse(r#"[{"op":"remove_record","type":"lead","id":1}]"#);
    assert!(!s.needs_rebuild(&batch, &c));
    let next = s.apply(&batch, &c).unwrap().snapshot;
    assert!(lead(&next, 1).is_none() && note(&next, 9).is_none());
    assert!(lead(&next, 2).is_some());
    assert_eq!(
        next.records().stats().records,
        s.records().stats().records - 2
    );
    assert!(Arc::ptr_eq(&next.hierarchy, &s.hierarchy));
    // Added again: a new record, without the old one's shares or note.
    let again = next
        .apply(
            &parse(r#"[{"op":"upsert_record","type":"lead","id":1,"owner":"x","tenant":"a"}]"#),
            &c,
        )
        .unwrap()
        .snapshot;
    let found = lead(&again, 1).unwrap();
    assert!(!again.records().has_share(
        found.number,
        crate::records::Principal::Role(*again.role_idx.get("rep_team").unwrap())
    ));
    assert!(note(&again, 9).is_none());
    // A tenant batch: applied incrementally, decided as the full build decides.
    let batch = parse(
        r#"[{"op":"set_membership","user":"w","tenant":"b","roles":["mgr_scoped"]},
            {"op":"set_manager","user":"m","tenant":"b","manager":"w"},
            {"op":"remove_membership","user":"x","tenant":"a"},
            {"op":"upsert_record","type":"lead","id":5,"owner":"w","tenant":"b"}]"#,
    );
    assert!(!s.needs_rebuild(&batch, &c));
    let next = s.apply(&batch, &c).unwrap().snapshot;
    let (_, full) = slow(&RawSnapshot::parse(BASE).unwrap(), &batch, &c).unwrap();
    assert_eq!(next.membership_count(), full.membership_count());
    assert_eq!(next.user_count(), full.user_count());
    let b = next.tenant_index("b").unwrap();
    let w = next.member(next.user_index("w").unwrap(), b).unwrap();
    let m = next.member(next.user_index("m").unwrap(), b).unwrap();
    assert_eq!(next.user(m).manager, Some(w));
    assert_eq!(
        next.records().tenant_of(lead(&next, 5).unwrap().number),
        b,
        "a new record in its tenant"
    );
    assert!(next
        .member(
            next.user_index("x").unwrap(),
            next.tenant_index("a").unwrap()
        )
        .is_none());
    // Refusals, each as the source form refuses it.
    for (batch, says) in [
        (
            r#"[{"op":"set_roles","user":"u","tenant":"zz","roles":[]}]"#,
            "changes[0].tenant: unknown tenant 'zz'",
        ),
        (
            r#"[{"op":"set_roles","user":"w","tenant":"b","roles":[]}]"#,
            "changes[0]: user 'w' has no membership in tenant 'b'",
        ),
        (
            r#"[{"op":"set_manager","user":"u","tenant":"b","manager":"w"}]"#,
            "changes[0].manager: 'w' is not a member of tenant 'b'",
        ),
        (
            r#"[{"op":"remove_membership","user":"m","tenant":"b"}]"#,
            "manager 'm' is not a member of tenant 'b'",
        ),
        (
            // Another tenant than its parent's: refused here (it has no related objects of
            // its own, so no full build is needed to refuse it).
            r#"[{"op":"upsert_record","type":"note","id":9,"owner":"u","tenant":"b"}]"#,
            "changes[0].tenant: 'b' is not the parent's tenant 'a'",
        ),
        (
            r#"[{"op":"remove_record","type":"lead","id":404}]"#,
            "changes[0]: unknown record lead '404'",
        ),
        (
            r#"[{"op":"remove_record","type":"lead","id":1},{"op":"share","type":"note","id":9,"user":"w"}]"#,
            "changes[1]: unknown record note '9'",
        ),
    ] {
        let changes = parse(batch);
        let reference = slow(&RawSnapshot::parse(BASE).unwrap(), &changes, &c);
        assert!(reference.is_err(), "{batch}: the full build accepts it");
        if says.is_empty() {
            assert!(s.needs_rebuild(&changes, &c), "{batch}");
            continue;
        }
        assert!(!s.needs_rebuild(&changes, &c), "{batch}");
        let e = s.apply(&changes, &c).err().unwrap();
        assert!(e.iter().any(|m| m.contains(says)), "{batch}: {e:?}");
    }
    // A record of another tenant is refused to a member of this one, after the batch as
    // before it.
    let lead_view = c.permission("lead.view").unwrap();
    let t = c.record_types().get("lead").unwrap();
    let u_a = next
        .member(
            next.user_index("u").unwrap(),
            next.tenant_index("a").unwrap(),
        )
        .unwrap();
    assert_eq!(
        check_record(&next, u_a, lead_view, t, &RecordId::Int(5)),
        RecordDecision::Denied(crate::access::Refusal::OutOfScope)
    );
}

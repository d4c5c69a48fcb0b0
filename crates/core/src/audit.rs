//! Change audit: what every accepted or refused config or snapshot change did, for access
//! reviews (seed 003: role changes documented for audits).
//!
//! [`diff`] compares two snapshots: users added or removed, users whose roles changed (with the
//! before and after), users disabled or re-enabled, manager changes, custom roles added or
//! removed, and permissions granted or revoked per role. Lists are capped (the counts are not) so
//! a bulk change cannot flood the log.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;

use crate::snapshot::Snapshot;

/// Most entries kept per list in one diff.
pub const LIST_CAP: usize = 100;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Capped<T> {
    pub count: usize,
    pub items: Vec<T>,
}

impl<T> Default for Capped<T> {
    fn default() -> Self {
        Capped {
            count: 0,
            items: Vec::new(),
        }
    }
}

impl<T> Capped<T> {
    fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn push(&mut self, item: T) {
        self.count += 1;
        if self.items.len() < LIST_CAP {
            self.items.push(item);
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RoleChange {
    pub user: String,
    /// With tenants: the membership whose roles changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub before: Vec<String>,
    pub after: Vec<String>,
}

/// A user's membership of a tenant, with its roles (added: the new ones; removed: the last).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MembershipChange {
    pub user: String,
    pub tenant: String,
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PermissionChange {
    pub role: String,
    pub granted: Vec<String>,
    pub revoked: Vec<String>,
}

/// What changed between two snapshots.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct SnapshotDiff {
    pub users_added: Capped<String>,
    pub users_removed: Capped<String>,
    pub roles_changed: Capped<RoleChange>,
    pub users_disabled: Capped<String>,
    pub users_enabled: Capped<String>,
    pub managers_changed: Capped<String>,
    pub custom_roles_added: Capped<String>,
    pub custom_roles_removed: Capped<String>,
    pub role_permissions_changed: Capped<PermissionChange>,
    /// With tenants: memberships added to or removed from users (a membership's role change is
    /// in `roles_changed` with its `tenant`; its manager change in `managers_changed` as
    /// `<user> (tenant <id>)`).
    #[serde(skip_serializing_if = "Capped::is_empty")]
    pub memberships_added: Capped<MembershipChange>,
    #[serde(skip_serializing_if = "Capped::is_empty")]
    pub memberships_removed: Capped<MembershipChange>,
}

fn roles_of(s: &Snapshot, u: &crate::snapshot::User) -> Vec<String> {
    s.grant(u)
        .roles
        .iter()
        .map(|r| s.role_id(*r).to_string())
        .collect()
}

fn permission_names(
    catalog: &crate::catalog::Catalog,
    set: &crate::catalog::PermSet,
) -> BTreeSet<String> {
    catalog.names(set).into_iter().map(str::to_string).collect()
}

/// One user (or service principal) of `new` against `old`: `before` is its index in `old`.
fn diff_user(
    old: &Snapshot,
    new: &Snapshot,
    u: &crate::snapshot::User,
    before: Option<crate::snapshot::UserIdx>,
    d: &mut SnapshotDiff,
) {
    match before {
        None => {
            d.users_added.push(u.id.to_string());
            for (t, m) in memberships_of(new, u) {
                d.memberships_added.push(MembershipChange {
                    user: u.id.to_string(),
                    tenant: t.to_string(),
                    roles: roles_of(new, new.user(m)),
                });
            }
        }
        Some(oi) => {
            let ou = old.user(oi);
            let (before, after) = (roles_of(old, ou), roles_of(new, u));
            if before != after {
                d.roles_changed.push(RoleChange {
                    user: u.id.to_string(),
                    tenant: None,
                    before,
                    after,
                });
            }
            diff_memberships(old, new, ou, u, d);
            match (ou.disabled, u.disabled) {
                (false, true) => d.users_disabled.push(u.id.to_string()),
                (true, false) => d.users_enabled.push(u.id.to_string()),
                _ => {}
            }
            let manager = |s: &Snapshot, m: Option<u32>| m.map(|i| s.user(i).id.to_string());
            if manager(old, ou.manager) != manager(new, u.manager) {
                d.managers_changed.push(u.id.to_string());
            }
        }
    }
}

/// A person's memberships: (tenant id, the membership's index), in tenant order.
fn memberships_of<'s>(
    s: &'s Snapshot,
    u: &crate::snapshot::User,
) -> Vec<(&'s str, crate::snapshot::UserIdx)> {
    u.memberships
        .iter()
        .map(|(t, m)| (s.tenant_id(*t), *m))
        .collect()
}

/// One person's memberships in `old` (`ou`) against `new` (`u`): added, removed, roles and
/// manager changed per tenant.
fn diff_memberships(
    old: &Snapshot,
    new: &Snapshot,
    ou: &crate::snapshot::User,
    u: &crate::snapshot::User,
    d: &mut SnapshotDiff,
) {
    let (before, after) = (memberships_of(old, ou), memberships_of(new, u));
    let manager = |s: &Snapshot, m: Option<u32>| m.map(|i| s.user(i).id.to_string());
    for (t, m) in &after {
        let nm = new.user(*m);
        match before.iter().find(|(ot, _)| ot == t) {
            None => d.memberships_added.push(MembershipChange {
                user: u.id.to_string(),
                tenant: t.to_string(),
                roles: roles_of(new, nm),
            }),
            Some((_, om)) => {
                let om = old.user(*om);
                let (rb, ra) = (roles_of(old, om), roles_of(new, nm));
                if rb != ra {
                    d.roles_changed.push(RoleChange {
                        user: u.id.to_string(),
                        tenant: Some(t.to_string()),
                        before: rb,
                        after: ra,
                    });
                }
                if manager(old, om.manager) != manager(new, nm.manager) {
                    d.managers_changed.push(format!("{} (tenant {t})", u.id));
                }
            }
        }
    }
    for (t, om) in &before {
        if !after.iter().any(|(nt, _)| nt == t) {
            d.memberships_removed.push(MembershipChange {
                user: u.id.to_string(),
                tenant: t.to_string(),
                roles: roles_of(old, old.user(*om)),
            });
        }
    }
}

/// [`diff`] restricted to the users a batch of changes touched (the rest are shared, hence
/// unchanged): costs the batch, not the snapshot.
pub fn diff_users(old: Option<&Snapshot>, new: &Snapshot, touched: &[String]) -> SnapshotDiff {
    let mut d = SnapshotDiff::default();
    for id in touched {
        let Some(u) = new.user_index(id).map(|i| new.user(i)) else {
            continue;
        };
        match old {
            Some(old) => diff_user(old, new, u, old.user_index(id), &mut d),
            None => d.users_added.push(u.id.to_string()),
        }
    }
    d
}

/// Compare `old` (if any) with `new`; `catalog` names the permissions of both (a config reload
/// that changes the catalogue is audited as a config change).
pub fn diff(
    old: Option<&Snapshot>,
    new: &Snapshot,
    catalog: &crate::catalog::Catalog,
) -> SnapshotDiff {
    let mut d = SnapshotDiff::default();
    // Service principals are listed with the users (their ids are one namespace).
    let Some(old) = old else {
        for u in new.users().chain(new.services()) {
            d.users_added.push(u.id.to_string());
        }
        for r in new.roles().iter().filter(|r| r.custom) {
            d.custom_roles_added.push(r.id.clone());
        }
        return d;
    };
    for u in new.users() {
        diff_user(old, new, u, old.user_index(&u.id), &mut d);
    }
    for u in new.services() {
        diff_user(old, new, u, old.service_index(&u.id), &mut d);
    }
    for u in old.users() {
        if new.user_index(&u.id).is_none() {
            d.users_removed.push(u.id.to_string());
        }
    }
    for u in old.services() {
        if new.service_index(&u.id).is_none() {
            d.users_removed.push(u.id.to_string());
        }
    }
    let old_roles: HashMap<&str, &crate::snapshot::SnapshotRole> =
        old.roles().iter().map(|r| (r.id.as_str(), r)).collect();
    for r in new.roles() {
        match old_roles.get(r.id.as_str()) {
            None => d.custom_roles_added.push(r.id.clone()),
            Some(o) if o.permissions != r.permissions => {
                let (before, after) = (
                    permission_names(catalog, &o.permissions),
                    permission_names(catalog, &r.permissions),
                );
                d.role_permissions_changed.push(PermissionChange {
                    role: r.id.clone(),
                    granted: after.difference(&before).cloned().collect(),
                    revoked: before.difference(&after).cloned().collect(),
                });
            }
            Some(_) => {}
        }
    }
    for r in old.roles() {
        if !new.roles().iter().any(|n| n.id == r.id) {
            d.custom_roles_removed.push(r.id.clone());
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_what_changed() {
        let c = crate::demo::demo_catalog();
        let old = Snapshot::build("a", crate::demo::DEMO_SNAPSHOT, &c).unwrap();
        let text = crate::demo::DEMO_SNAPSHOT
            .replacen(
                "\"roles\": [\"customer_service_rep\"]",
                "\"roles\": [\"customer_service_rep\", \"sales_rep\"]",
                1,
            )
            .replacen(
                "\"permissions\": [\"campaign.manage\", \"campaign.delete\"]",
                "\"permissions\": [\"campaign.manage\"]",
                1,
            )
            .replacen(
                "\"roles\": [\"marketing_manager\"] }",
                "\"roles\": [\"marketing_manager\"], \"disabled\": true }",
                1,
            );
        assert_ne!(text, crate::demo::DEMO_SNAPSHOT);
        let new = Snapshot::build("b", &text, &c).unwrap();
        let d = diff(Some(&old), &new, &c);
        assert_eq!(d.roles_changed.count, 1);
        assert_eq!(d.roles_changed.items[0].user, "u-csr");
        assert_eq!(
            d.roles_changed.items[0].after,
            vec!["sales_rep", "customer_service_rep"]
        );
        assert_eq!(d.role_permissions_changed.items[0].role, "campaign_cleaner");
        assert_eq!(
            d.role_permissions_changed.items[0].revoked,
            vec!["campaign.delete"]
        );
        assert!(d.role_permissions_changed.items[0].granted.is_empty());
        assert_eq!(d.users_disabled.items, vec!["u-mm"]);
        assert_eq!(d.users_added.count, 0);
        let first = diff(None, &new, &c);
        assert_eq!(first.users_added.count, 9);
    }

    /// Service principals are audited with the users: added, given other roles, removed.
    #[test]
    fn diff_names_service_principals() {
        let c = crate::demo::demo_catalog();
        let with = |services: &str| {
            let mut v: serde_json::Value =
                serde_json::from_str(crate::demo::DEMO_SNAPSHOT).unwrap();
            v["services"] = serde_json::from_str(services).unwrap();
            Snapshot::build("s", &v.to_string(), &c).unwrap()
        };
        let none = with("[]");
        let one = with(r#"[{"id":"svc","roles":["member"]}]"#);
        let promoted = with(r#"[{"id":"svc","roles":["admin"]}]"#);
        assert_eq!(diff(Some(&none), &one, &c).users_added.items, ["svc"]);
        let d = diff(Some(&one), &promoted, &c);
        assert_eq!(d.roles_changed.items[0].user, "svc");
        assert_eq!(d.roles_changed.items[0].after, ["admin"]);
        assert_eq!(d.users_added.count, 0);
        assert_eq!(diff(Some(&one), &none, &c).users_removed.items, ["svc"]);
        assert_eq!(diff(None, &one, &c).users_added.count, 10);
    }

    /// With tenants, per-tenant roles are audited with their tenant: a membership added or
    /// removed, a membership's roles or manager changed.
    #[test]
    fn diff_names_memberships_with_their_tenant() {
        let c = crate::catalog::Catalog::builtin().unwrap();
        let build = |users: &str| {
            let text = format!(r#"{{"tenants":[{{"id":"a"}},{{"id":"b"}}],"users":{users}}}"#);
            Snapshot::build("s", &text, &c).unwrap()
        };
        let before = build(
            r#"[{"id":"u","memberships":[{"tenant":"a","roles":["admin"]},{"tenant":"b","roles":["sales_rep"]}]},
                {"id":"m","memberships":[{"tenant":"b","roles":["sales_manager"]}]}]"#,
        );
        let after = build(
            r#"[{"id":"u","memberships":[{"tenant":"b","roles":["sales_manager"],"manager":"m"}]},
                {"id":"m","memberships":[{"tenant":"b","roles":["sales_manager"]},{"tenant":"a","roles":["sales_rep"]}]}]"#,
        );
        let d = diff(Some(&before), &after, &c);
        assert_eq!(
            d.roles_changed.items,
            [RoleChange {
                user: "u".into(),
                tenant: Some("b".into()),
                before: vec!["sales_rep".into()],
                after: vec!["sales_manager".into()],
            }]
        );
        assert_eq!(
            d.memberships_removed.items,
            [MembershipChange {
                user: "u".into(),
                tenant: "a".into(),
                roles: vec!["admin".into()],
            }]
        );
        assert_eq!(
            d.memberships_added.items,
            [MembershipChange {
                user: "m".into(),
                tenant: "a".into(),
                roles: vec!["sales_rep".into()],
            }]
        );
        assert_eq!(d.managers_changed.items, ["u (tenant b)"]);
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["roles_changed"]["items"][0]["tenant"], "b");
        // Without tenants, nothing new appears in the record.
        let plain =
            Snapshot::build("s", r#"{"users":[{"id":"u","roles":["admin"]}]}"#, &c).unwrap();
        let json = serde_json::to_value(diff(Some(&plain), &plain, &c)).unwrap();
        assert!(json.get("memberships_added").is_none(), "{json}");
    }
}

//! The scanning implementation of [`RawSnapshot::apply`] (before `replay.rs` indexed the source
//! form), kept for the tests only: the reference the indexed replay is tested equal to
//! (`indexed_replay_equals_the_scanning_one`).

use super::*;

/// The scanning implementation [`RawSnapshot::apply`] had before it indexed the source form
/// (`changes/replay.rs`): the reference its results are tested equal to.
impl RawSnapshot {
    /// The tenant a change names, checked: required with tenants, refused without, and a
    /// tenant of the snapshot (as the batch has made it so far).
    fn tenant_named<'a>(
        &self,
        i: usize,
        tenanted: bool,
        tenant: &'a Option<String>,
    ) -> Result<Option<&'a str>, String> {
        match (tenanted, tenant) {
            (true, None) => Err(format!(
                "changes[{i}].tenant: missing (the snapshot has tenants: name the membership or the record's tenant)"
            )),
            (false, Some(_)) => Err(format!(
                "changes[{i}].tenant: the snapshot has no tenants"
            )),
            (true, Some(t)) if !self.tenants.iter().any(|x| &x.id == t) => {
                Err(format!("changes[{i}].tenant: unknown tenant '{t}'"))
            }
            (_, t) => Ok(t.as_deref()),
        }
    }

    /// User `u`'s membership of tenant `t`, which must exist.
    fn membership(&mut self, i: usize, u: usize, t: &str) -> Result<&mut RawMembership, String> {
        let user = &mut self.users[u];
        let id = user.id.clone();
        user.memberships
            .iter_mut()
            .find(|m| m.tenant == t)
            .ok_or_else(|| {
                format!(
                    "changes[{i}]: user '{id}' has no membership in tenant '{t}' (set_membership adds one)"
                )
            })
    }

    /// Apply a batch of changes, in order. An error names the change; nothing is half-applied
    /// because the caller works on a copy and validates the result with [`Snapshot::build`].
    /// Record references are matched by canonical id (`types`: the config's record types).
    pub(crate) fn apply_linear(
        &mut self,
        changes: &[Change],
        types: &RecordTypes,
    ) -> Result<(), String> {
        // With tenants or without is fixed for the batch (a snapshot gains or loses its tenants
        // only whole, with a config to match).
        let tenanted = !self.tenants.is_empty();
        // Managers named in memberships in this batch: (change, tenant, manager); each must be
        // a member of that tenant once the batch is applied.
        let mut member_managers: Vec<(usize, String, String)> = Vec::new();
        // Teams shared with in this batch: they must have members once the batch is applied.
        let mut shared_teams: Vec<(usize, String)> = Vec::new();
        // Users named as owners or sharees in this batch: they must exist once it is applied,
        // even if a later change in the batch overwrites the reference (as `Snapshot::apply`
        // judges them against the batch's final users).
        let mut named_users: Vec<(usize, String)> = Vec::new();
        // Custom roles removed in this batch: nobody may hold them once it is applied.
        let mut removed_roles: Vec<(usize, String)> = Vec::new();
        for (i, change) in changes.iter().enumerate() {
            let user = |raw: &mut RawSnapshot, id: &str| -> Result<usize, String> {
                raw.users
                    .iter()
                    .position(|u| u.id == id)
                    .ok_or_else(|| format!("changes[{i}]: unknown user '{id}'"))
            };
            match change {
                Change::SetRoles {
                    user: id,
                    roles,
                    tenant,
                } => {
                    let u = user(self, id)?;
                    match self.tenant_named(i, tenanted, tenant)? {
                        None => self.users[u].roles = roles.clone(),
                        Some(t) => self.membership(i, u, t)?.roles = roles.clone(),
                    }
                }
                Change::SetManager {
                    user: id,
                    manager,
                    tenant,
                } => {
                    let u = user(self, id)?;
                    match self.tenant_named(i, tenanted, tenant)? {
                        None => self.users[u].manager = manager.clone(),
                        Some(t) => {
                            if let Some(m) = manager {
                                member_managers.push((i, t.to_string(), m.clone()));
                            }
                            self.membership(i, u, t)?.manager = manager.clone();
                        }
                    }
                }
                Change::SetTeams {
                    user: id,
                    teams,
                    tenant,
                } => {
                    let u = user(self, id)?;
                    match self.tenant_named(i, tenanted, tenant)? {
                        None => self.users[u].teams = teams.clone(),
                        Some(t) => self.membership(i, u, t)?.teams = teams.clone(),
                    }
                }
                Change::SetMembership {
                    user: id,
                    tenant,
                    roles,
                    teams,
                    manager,
                } => {
                    let u = user(self, id)?;
                    let t = self
                        .tenant_named(i, tenanted, &Some(tenant.clone()))?
                        .unwrap_or_default()
                        .to_string();
                    if let Some(m) = manager {
                        member_managers.push((i, t.clone(), m.clone()));
                    }
                    let membership = RawMembership {
                        tenant: t,
                        roles: roles.clone(),
                        teams: teams.clone(),
                        manager: manager.clone(),
                    };
                    let list = &mut self.users[u].memberships;
                    match list.iter_mut().find(|m| m.tenant == membership.tenant) {
                        Some(m) => *m = membership,
                        None => list.push(membership),
                    }
                }
                Change::RemoveMembership { user: id, tenant } => {
                    let u = user(self, id)?;
                    self.tenant_named(i, tenanted, &Some(tenant.clone()))?;
                    let list = &mut self.users[u].memberships;
                    let before = list.len();
                    list.retain(|m| &m.tenant != tenant);
                    if list.len() == before {
                        return Err(format!(
                            "changes[{i}]: user '{id}' has no membership in tenant '{tenant}'"
                        ));
                    }
                }
                Change::UpsertTenant { tenant } => {
                    if !tenanted {
                        return Err(format!(
                            "changes[{i}]: the snapshot has no tenants (a snapshot gains tenants only whole, with [tenants] in the config)"
                        ));
                    }
                    if !crate::snapshot::is_valid_user_id(&tenant.id) {
                        return Err(format!(
                            "changes[{i}].tenant.id: '{}' is not a valid tenant id (1–256 visible ASCII characters, no spaces or commas)",
                            tenant.id.escape_debug()
                        ));
                    }
                    match self.tenants.iter_mut().find(|t| t.id == tenant.id) {
                        Some(t) => *t = tenant.clone(),
                        None => self.tenants.push(tenant.clone()),
                    }
                }
                Change::Disable { user: id } => {
                    let u = user(self, id)?;
                    self.users[u].disabled = true;
                }
                Change::Enable { user: id } => {
                    let u = user(self, id)?;
                    self.users[u].disabled = false;
                }
                Change::UpsertUser { user: new } => {
                    match self.users.iter().position(|u| u.id == new.id) {
                        Some(u) => self.users[u] = new.clone(),
                        None => self.users.push(new.clone()),
                    }
                }
                Change::RemoveUser { user: id } => {
                    let u = user(self, id)?;
                    self.users.remove(u);
                }
                Change::UpsertRole { role } => {
                    match self.roles.iter().position(|r| r.id == role.id) {
                        Some(r) => self.roles[r] = role.clone(),
                        None => self.roles.push(role.clone()),
                    }
                }
                Change::RemoveRole { role } => {
                    let r = self
                        .roles
                        .iter()
                        .position(|r| &r.id == role)
                        .ok_or_else(|| format!("changes[{i}]: unknown custom role '{role}'"))?;
                    self.roles.remove(r);
                    removed_roles.push((i, role.clone()));
                }
                Change::SetOwner {
                    record_type,
                    id,
                    owner,
                } => {
                    let target = canonical(types, record_type, id)
                        .map_err(|e| format!("changes[{i}]: {e}"))?;
                    if let Some(o) = owner {
                        named_users.push((i, o.clone()));
                    }
                    let records = self.records.get_or_insert_with(Default::default);
                    let same =
                        |t: &str, x: &RawId| canonical(types, t, x).ok() == Some(target.clone());
                    if let Some(o) = records
                        .owners
                        .iter_mut()
                        .find(|o| same(&o.record_type, &o.id))
                    {
                        o.owner = owner.clone();
                    } else if records.related.iter().any(|r| same(&r.record_type, &r.id)) {
                        // A related object declared only under its parent: declare its owner
                        // (and, with tenants, its parent's tenant, which it has).
                        let tenant = if tenanted {
                            raw_record_tenant(records, types, &target)
                        } else {
                            None
                        };
                        records.owners.push(RawOwner {
                            record_type: record_type.clone(),
                            id: id.clone(),
                            owner: owner.clone(),
                            tenant,
                        });
                    } else {
                        return Err(format!(
                            "changes[{i}]: unknown record {record_type} '{}'",
                            target.1
                        ));
                    }
                }
                Change::Share {
                    record_type,
                    id,
                    user,
                    team,
                    role,
                } => {
                    let who = named(i, user, team, role)?;
                    let target = canonical(types, record_type, id)
                        .map_err(|e| format!("changes[{i}]: {e}"))?;
                    let records = self.records.get_or_insert_with(Default::default);
                    let same =
                        |t: &str, x: &RawId| canonical(types, t, x).ok() == Some(target.clone());
                    let known = records.owners.iter().any(|o| same(&o.record_type, &o.id))
                        || records.related.iter().any(|r| same(&r.record_type, &r.id));
                    if !known {
                        return Err(format!(
                            "changes[{i}]: unknown record {record_type} '{}'",
                            target.1
                        ));
                    }
                    match who {
                        Named::Team(t) => shared_teams.push((i, t.to_string())),
                        Named::User(u) => named_users.push((i, u.to_string())),
                        Named::Role(_) => {}
                    }
                    records.shares.push(RawShare {
                        record_type: record_type.clone(),
                        id: id.clone(),
                        user: user.clone(),
                        team: team.clone(),
                        role: role.clone(),
                    });
                }
                Change::UpsertRecord {
                    record_type,
                    id,
                    owner,
                    parent,
                    tenant,
                } => {
                    let target = canonical(types, record_type, id)
                        .map_err(|e| format!("changes[{i}]: {e}"))?;
                    let tenant = self.tenant_named(i, tenanted, tenant)?.map(str::to_string);
                    let parent_target = match parent {
                        None => None,
                        Some(p) => Some(
                            canonical(types, &p.record_type, &p.id)
                                .map_err(|e| format!("changes[{i}]: parent: {e}"))?,
                        ),
                    };
                    if let Some(o) = owner {
                        named_users.push((i, o.clone()));
                    }
                    let records = self.records.get_or_insert_with(Default::default);
                    let same =
                        |t: &str, x: &RawId| canonical(types, t, x).ok() == Some(target.clone());
                    // Without a parent named, a related object keeps its parent, and so its
                    // parent's tenant (as the incremental path holds, change by change).
                    if let (None, Some(t)) = (&parent_target, &tenant) {
                        let of_parent = records
                            .related
                            .iter()
                            .find(|r| same(&r.record_type, &r.id))
                            .and_then(|r| canonical(types, &r.parent_type, &r.parent_id).ok())
                            .and_then(|pt| raw_record_tenant(records, types, &pt));
                        if let Some(of_parent) = of_parent {
                            if *t != of_parent {
                                return Err(format!(
                                    "changes[{i}].tenant: '{t}' is not the parent's tenant '{of_parent}'"
                                ));
                            }
                        }
                    }
                    if let Some(pt) = &parent_target {
                        if *pt == target {
                            return Err(format!("changes[{i}]: a record cannot be its own parent"));
                        }
                        let p = parent.as_ref().map(|p| (&p.record_type, &p.id));
                        let known =
                            |t: &str, x: &RawId| canonical(types, t, x).ok() == Some(pt.clone());
                        if !records.owners.iter().any(|o| known(&o.record_type, &o.id))
                            && !records.related.iter().any(|r| known(&r.record_type, &r.id))
                        {
                            return Err(format!(
                                "changes[{i}]: parent: unknown record {} '{}'",
                                p.map_or("", |p| p.0.as_str()),
                                pt.1
                            ));
                        }
                        if let (Some(t), Some(of_parent)) =
                            (&tenant, raw_record_tenant(records, types, pt))
                        {
                            if *t != of_parent {
                                return Err(format!(
                                    "changes[{i}].tenant: '{t}' is not the parent's tenant '{of_parent}'"
                                ));
                            }
                        }
                        records.related.retain(|r| !same(&r.record_type, &r.id));
                        if let Some((pt_type, pt_id)) = p {
                            records.related.push(RawRelated {
                                record_type: record_type.clone(),
                                id: id.clone(),
                                parent_type: pt_type.clone(),
                                parent_id: pt_id.clone(),
                            });
                        }
                    }
                    match records
                        .owners
                        .iter_mut()
                        .find(|o| same(&o.record_type, &o.id))
                    {
                        Some(o) => {
                            o.owner = owner.clone();
                            o.tenant = tenant;
                        }
                        None => records.owners.push(RawOwner {
                            record_type: record_type.clone(),
                            id: id.clone(),
                            owner: owner.clone(),
                            tenant,
                        }),
                    }
                }
                Change::RemoveRecord { record_type, id } => {
                    let target = canonical(types, record_type, id)
                        .map_err(|e| format!("changes[{i}]: {e}"))?;
                    let records = self.records.get_or_insert_with(Default::default);
                    let canon = |t: &str, x: &RawId| canonical(types, t, x).ok();
                    let is = |t: &str, x: &RawId| canon(t, x).as_ref() == Some(&target);
                    if !records.owners.iter().any(|o| is(&o.record_type, &o.id))
                        && !records.related.iter().any(|r| is(&r.record_type, &r.id))
                    {
                        return Err(format!(
                            "changes[{i}]: unknown record {record_type} '{}'",
                            target.1
                        ));
                    }
                    // Its related objects go with it (as the CRM's own delete cascades).
                    let mut gone = vec![target.clone()];
                    for r in &records.related {
                        if is(&r.parent_type, &r.parent_id) {
                            gone.extend(canon(&r.record_type, &r.id));
                        }
                    }
                    let forgotten =
                        |t: &str, x: &RawId| canon(t, x).is_some_and(|c| gone.contains(&c));
                    records
                        .related
                        .retain(|r| !forgotten(&r.record_type, &r.id));
                    records.owners.retain(|o| !forgotten(&o.record_type, &o.id));
                    records.shares.retain(|s| !forgotten(&s.record_type, &s.id));
                }
                Change::Unshare {
                    record_type,
                    id,
                    user,
                    team,
                    role,
                } => {
                    let who = named(i, user, team, role)?;
                    let target = canonical(types, record_type, id)
                        .map_err(|e| format!("changes[{i}]: {e}"))?;
                    let records = self.records.get_or_insert_with(Default::default);
                    let before = records.shares.len();
                    records.shares.retain(|s| {
                        let this = named(i, &s.user, &s.team, &s.role).ok();
                        !(this == Some(who)
                            && canonical(types, &s.record_type, &s.id).ok() == Some(target.clone()))
                    });
                    if records.shares.len() == before {
                        return Err(format!(
                            "changes[{i}]: {record_type} '{}' is not shared with {who}",
                            target.1
                        ));
                    }
                }
            }
        }
        for (i, u) in named_users {
            if !self.users.iter().any(|x| x.id == u) {
                return Err(format!("changes[{i}]: unknown user '{u}'"));
            }
        }
        for (i, t, m) in member_managers {
            let member = self
                .users
                .iter()
                .find(|x| x.id == m)
                .map(|x| x.memberships.iter().any(|ms| ms.tenant == t));
            match member {
                None => return Err(format!("changes[{i}].manager: unknown user '{m}'")),
                Some(false) => {
                    return Err(format!(
                        "changes[{i}].manager: '{m}' is not a member of tenant '{t}'"
                    ))
                }
                Some(true) => {}
            }
        }
        for (i, role) in removed_roles {
            if self.roles.iter().any(|r| r.id == role) {
                continue; // upserted again later in the batch
            }
            let holders: Vec<&str> = self
                .users
                .iter()
                .filter(|u| {
                    u.roles.contains(&role) || u.memberships.iter().any(|m| m.roles.contains(&role))
                })
                .map(|u| u.id.as_str())
                .collect();
            if let Some(first) = holders.first() {
                return Err(format!(
                    "changes[{i}]: custom role '{role}' is still held by {} user(s) ('{first}'{}); \
                     take it from them (set_roles) first",
                    holders.len(),
                    if holders.len() > 1 { ", …" } else { "" }
                ));
            }
        }
        for (i, t) in shared_teams {
            if !self
                .users
                .iter()
                .any(|u| u.teams.contains(&t) || u.memberships.iter().any(|m| m.teams.contains(&t)))
            {
                return Err(format!("changes[{i}]: team '{t}' has no members"));
            }
        }
        Ok(())
    }
}

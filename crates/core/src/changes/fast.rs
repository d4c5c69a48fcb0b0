//! [`Snapshot::apply`], the fast path of [`crate::changes`]: a batch applied to the compiled
//! snapshot, sharing every part it does not touch. Also with tenants (memberships are entries
//! of their own, recompiled with their person) and for record removals (the slot keeps its
//! key but no lookup finds it: [`crate::records::RecordStore::remove`]).
//!
//! Why one file (~1,000 lines): `Snapshot::apply` is one pass over a batch whose steps (users,
//! memberships, managers, records) share its local state; splitting it would pass that state
//! around, not simplify it.
//!
//! A membership a batch removes keeps its entry, detached: its person no longer lists it, so
//! no call reaches it, and no other entry may name it as manager (the batch is refused as a
//! full build refuses a manager outside the tenant). The next full build drops it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use super::{canonical, named, next_version, Applied, Change, Named, MAX_ERRORS};
use crate::catalog::Catalog;
use crate::hash::KeyedState;
use crate::hierarchy::{Hierarchy, NO_MANAGER};
use crate::ids::{RecordId, RecordTypeId};
use crate::records::Principal;
use crate::snapshot::{
    grant_for, is_valid_user_id, parse_key_digest, Grant, RawMembership, RawUser, Snapshot, User,
    UserIdx, NO_TENANT,
};

/// The role and team tables a batch may extend (copied on first write).
struct Tables {
    grants: Arc<Vec<Grant>>,
    grant_of: Arc<HashMap<Box<[u16]>, u32>>,
    teams: Arc<Vec<String>>,
    team_of: Arc<HashMap<String, u32, KeyedState>>,
    team_members: Arc<Vec<u32>>,
}

impl Tables {
    /// The grant of a list of role names; an unknown role is an error naming `who`.
    fn grant(
        &mut self,
        s: &Snapshot,
        catalog: &Catalog,
        roles: &[String],
        who: &str,
        errors: &mut Vec<String>,
    ) -> u32 {
        let mut combo = Vec::with_capacity(roles.len());
        for r in roles {
            match s.role_idx.get(r.as_str()) {
                Some(x) => combo.push(*x),
                None => errors.push(format!("changes: {who}: unknown role '{r}'")),
            }
        }
        combo.sort_unstable();
        combo.dedup();
        match self.grant_of.get(combo.as_slice()) {
            Some(g) => *g,
            None => grant_for(
                Arc::make_mut(&mut self.grants),
                Arc::make_mut(&mut self.grant_of),
                &s.roles,
                catalog,
                &combo,
            ),
        }
    }

    /// The team ids of a list of team names (new names get one), each counted as a member.
    fn join(&mut self, names: &[String]) -> Box<[u32]> {
        let mut ids = Vec::with_capacity(names.len());
        for t in names {
            let id = match self.team_of.get(t.as_str()) {
                Some(x) => *x,
                None => {
                    let x = self.teams.len() as u32;
                    Arc::make_mut(&mut self.teams).push(t.clone());
                    Arc::make_mut(&mut self.team_of).insert(t.clone(), x);
                    Arc::make_mut(&mut self.team_members).push(0);
                    x
                }
            };
            if let Some(m) = Arc::make_mut(&mut self.team_members).get_mut(id as usize) {
                *m += 1;
            }
            ids.push(id);
        }
        ids.into_boxed_slice()
    }

    /// An entry's teams no longer count it as a member.
    fn leave(&mut self, teams: &[u32]) {
        if teams.is_empty() {
            return;
        }
        let members = Arc::make_mut(&mut self.team_members);
        for t in teams {
            if let Some(m) = members.get_mut(*t as usize) {
                *m = m.saturating_sub(1);
            }
        }
    }
}

/// The tenant a change names, checked as the source form checks it: required with tenants,
/// refused without, and a tenant of the snapshot as the batch has made it so far.
fn tenant_named(
    s: &Snapshot,
    added: &[String],
    i: usize,
    tenant: &Option<String>,
) -> Result<Option<String>, String> {
    match (s.has_tenants(), tenant) {
        (true, None) => Err(format!(
            "changes[{i}].tenant: missing (the snapshot has tenants: name the membership or the record's tenant)"
        )),
        (false, Some(_)) => Err(format!(
            "changes[{i}].tenant: the snapshot has no tenants"
        )),
        (true, Some(t)) if !s.tenant_idx.contains_key(t.as_str()) && !added.contains(t) => {
            Err(format!("changes[{i}].tenant: unknown tenant '{t}'"))
        }
        (_, t) => Ok(t.clone()),
    }
}

/// User `who`'s membership of tenant `t` in source form, which must exist.
fn membership<'u>(
    i: usize,
    u: &'u mut RawUser,
    t: &str,
) -> Result<&'u mut RawMembership, Vec<String>> {
    let id = u.id.clone();
    u.memberships
        .iter_mut()
        .find(|m| m.tenant == t)
        .ok_or_else(|| {
            vec![format!(
            "changes[{i}]: user '{id}' has no membership in tenant '{t}' (set_membership adds one)"
        )]
        })
}

impl Snapshot {
    /// A user in source form (what [`crate::snapshot::RawSnapshot::apply`] would change), with
    /// their memberships on a snapshot with tenants.
    fn raw_user(&self, idx: UserIdx) -> RawUser {
        let u = self.user(idx);
        let roles = |u: &User| {
            self.grant(u)
                .roles
                .iter()
                .map(|r| self.role_id(*r).to_string())
                .collect()
        };
        let teams = |u: &User| {
            u.teams
                .iter()
                .map(|t| self.team_name(*t).to_string())
                .collect()
        };
        let manager = |u: &User| u.manager.map(|m| self.user(m).id.to_string());
        RawUser {
            id: u.id.to_string(),
            name: u.name.as_deref().map(str::to_string),
            email: None,
            roles: roles(u),
            teams: teams(u),
            manager: manager(u),
            api_keys: u
                .api_keys
                .iter()
                .map(|d| format!("sha256:{}", hex::encode(d)))
                .collect(),
            disabled: u.disabled,
            memberships: u
                .memberships
                .iter()
                .map(|(t, m)| {
                    let m = self.user(*m);
                    RawMembership {
                        tenant: self.tenant_id(*t).to_string(),
                        roles: roles(m),
                        teams: teams(m),
                        manager: manager(m),
                    }
                })
                .collect(),
        }
    }

    /// Does this batch need the source form and a full build? Yes for a structural change
    /// ([`Change::is_structural`]), when the records it adds do not fit in the free slots of
    /// their type's table, and when it moves a known record that has related objects to
    /// another tenant (they follow it only through a build, which also judges those declared
    /// as owners with a tenant of their own). A record without related objects moves here.
    pub fn needs_rebuild(&self, changes: &[Change], catalog: &Catalog) -> bool {
        if changes.iter().any(Change::is_structural) {
            return true;
        }
        let types = catalog.record_types();
        let mut adding: HashMap<RecordTypeId, usize> = HashMap::new();
        let mut seen: HashSet<(RecordTypeId, RecordId)> = HashSet::new();
        // Known records moved to another tenant, of a type others hang under.
        let mut moved: HashSet<u32> = HashSet::new();
        for change in changes {
            if let Change::UpsertRecord {
                record_type,
                id,
                tenant,
                ..
            } = change
            {
                // A bad reference is refused by the fast path itself, with its message.
                if let Ok((t, rid)) = canonical(types, record_type, id) {
                    match self.records.find(t, &rid) {
                        Some(found) => {
                            // (A tenant the snapshot does not know yet is one the batch adds,
                            // or an error either way.)
                            let elsewhere = tenant.as_deref().is_some_and(|x| {
                                self.tenant_index(x)
                                    .is_none_or(|x| x != self.records.tenant_of(found.number))
                            });
                            let is_parent = types.ids().any(|c| types.info(c).parents.contains(&t));
                            if elsewhere && is_parent {
                                moved.insert(found.number);
                            }
                        }
                        None => {
                            if seen.insert((t, rid)) {
                                *adding.entry(t).or_default() += 1;
                            }
                        }
                    }
                }
            }
        }
        if !moved.is_empty() && !self.records.children_of(&moved).is_empty() {
            return true;
        }
        adding.into_iter().any(|(t, n)| self.records.room(t) < n)
    }

    /// Apply a batch of non-structural changes, sharing every untouched part with `self`
    /// (module docs). Accepts and refuses exactly what [`crate::snapshot::RawSnapshot::apply`]
    /// followed by [`Snapshot::build`] would, and the result decides the same.
    pub fn apply<'c>(
        &self,
        changes: &'c [Change],
        catalog: &Catalog,
    ) -> Result<Applied, Vec<String>> {
        let tenanted = self.has_tenants();
        // Without tenants, a change naming one is refused (as the source form refuses it).
        for (i, change) in changes.iter().enumerate().filter(|_| !tenanted) {
            if let Some(e) = change.tenant_without_tenants(i) {
                return Err(vec![e]);
            }
        }
        let types = catalog.record_types();
        let mut errors: Vec<String> = Vec::new();
        // Users in source form, touched in this batch: (index, or None for a new user; form).
        let mut touched: Vec<(Option<UserIdx>, RawUser)> = Vec::new();
        let mut position: HashMap<String, usize> = HashMap::new();
        let mut record_ops: Vec<(usize, &Change)> = Vec::new();
        // Tenants the batch adds, in order.
        let mut added_tenants: Vec<String> = Vec::new();
        // With tenants: managers named in memberships (change, tenant, manager), and the roles
        // given to memberships (change, roles), checked once the batch is applied.
        let mut member_managers: Vec<(usize, String, String)> = Vec::new();
        let mut member_roles: Vec<(usize, &'c [String])> = Vec::new();
        for (i, change) in changes.iter().enumerate() {
            let mut load = |id: &str| -> Option<usize> {
                if let Some(p) = position.get(id) {
                    return Some(*p);
                }
                let idx = self.user_index(id)?;
                touched.push((Some(idx), self.raw_user(idx)));
                position.insert(id.to_string(), touched.len() - 1);
                Some(touched.len() - 1)
            };
            let id = match change {
                Change::SetRoles { user, .. }
                | Change::SetManager { user, .. }
                | Change::SetTeams { user, .. }
                | Change::SetMembership { user, .. }
                | Change::RemoveMembership { user, .. }
                | Change::Disable { user }
                | Change::Enable { user } => user,
                Change::UpsertUser { user } => {
                    match load(&user.id) {
                        Some(p) => touched[p].1 = user.clone(),
                        None => {
                            touched.push((None, user.clone()));
                            position.insert(user.id.clone(), touched.len() - 1);
                        }
                    }
                    continue;
                }
                Change::UpsertTenant { tenant } => {
                    if !is_valid_user_id(&tenant.id) {
                        return Err(vec![format!(
                            "changes[{i}].tenant.id: '{}' is not a valid tenant id (1–256 visible ASCII characters, no spaces or commas)",
                            tenant.id.escape_debug()
                        )]);
                    }
                    // A known tenant is renamed: the compiled snapshot holds no names.
                    if !self.tenant_idx.contains_key(tenant.id.as_str())
                        && !added_tenants.contains(&tenant.id)
                    {
                        added_tenants.push(tenant.id.clone());
                    }
                    continue;
                }
                Change::UpsertRecord {
                    record_type,
                    id,
                    parent: None,
                    tenant,
                    ..
                } => {
                    // In the order the source form checks them: the reference, then the
                    // tenant (as the batch has made the tenants so far).
                    canonical(types, record_type, id)
                        .map_err(|e| vec![format!("changes[{i}]: {e}")])?;
                    tenant_named(self, &added_tenants, i, tenant).map_err(|e| vec![e])?;
                    record_ops.push((i, change));
                    continue;
                }
                Change::SetOwner { .. }
                | Change::Share { .. }
                | Change::Unshare { .. }
                | Change::RemoveRecord { .. } => {
                    record_ops.push((i, change));
                    continue;
                }
                Change::RemoveUser { .. }
                | Change::UpsertRole { .. }
                | Change::RemoveRole { .. }
                | Change::UpsertRecord { .. } => {
                    return Err(vec![format!(
                        "changes[{i}]: a structural change needs a full build"
                    )]);
                }
            };
            let Some(p) = load(id) else {
                // The same message the source form gives, and the batch stops here as it does.
                return Err(vec![format!("changes[{i}]: unknown user '{id}'")]);
            };
            let u = &mut touched[p].1;
            let named_tenant =
                |t: &Option<String>| tenant_named(self, &added_tenants, i, t).map_err(|e| vec![e]);
            match change {
                Change::SetRoles { roles, tenant, .. } => match named_tenant(tenant)? {
                    None => u.roles = roles.clone(),
                    Some(t) => {
                        member_roles.push((i, roles.as_slice()));
                        membership(i, u, &t)?.roles = roles.clone();
                    }
                },
                Change::SetManager {
                    manager, tenant, ..
                } => match named_tenant(tenant)? {
                    None => u.manager = manager.clone(),
                    Some(t) => {
                        if let Some(m) = manager {
                            member_managers.push((i, t.clone(), m.clone()));
                        }
                        membership(i, u, &t)?.manager = manager.clone();
                    }
                },
                Change::SetTeams { teams, tenant, .. } => match named_tenant(tenant)? {
                    None => u.teams = teams.clone(),
                    Some(t) => membership(i, u, &t)?.teams = teams.clone(),
                },
                Change::SetMembership {
                    tenant,
                    roles,
                    teams,
                    manager,
                    ..
                } => {
                    let t = named_tenant(&Some(tenant.clone()))?.unwrap_or_default();
                    if let Some(m) = manager {
                        member_managers.push((i, t.clone(), m.clone()));
                    }
                    member_roles.push((i, roles.as_slice()));
                    let m = RawMembership {
                        tenant: t,
                        roles: roles.clone(),
                        teams: teams.clone(),
                        manager: manager.clone(),
                    };
                    match u.memberships.iter_mut().find(|x| x.tenant == m.tenant) {
                        Some(x) => *x = m,
                        None => u.memberships.push(m),
                    }
                }
                Change::RemoveMembership { tenant, .. } => {
                    named_tenant(&Some(tenant.clone()))?;
                    let before = u.memberships.len();
                    u.memberships.retain(|m| &m.tenant != tenant);
                    if u.memberships.len() == before {
                        return Err(vec![format!(
                            "changes[{i}]: user '{id}' has no membership in tenant '{tenant}'"
                        )]);
                    }
                }
                Change::Disable { .. } => u.disabled = true,
                Change::Enable { .. } => u.disabled = false,
                _ => {}
            }
        }

        // Tenants: those of the snapshot, then the batch's new ones.
        let mut tenant_ids = self.tenants.clone();
        let mut tenant_idx = self.tenant_idx.clone();
        for t in &added_tenants {
            let x = tenant_ids.len() as u32;
            Arc::make_mut(&mut tenant_ids).push(t.as_str().into());
            Arc::make_mut(&mut tenant_idx).insert(t.as_str().into(), x);
        }
        // The memberships' managers, against the batch's final memberships (the source form's
        // messages).
        let final_member = |id: &str, t: &str| -> Option<bool> {
            match position.get(id) {
                Some(p) => Some(touched[*p].1.memberships.iter().any(|m| m.tenant == t)),
                None => {
                    let idx = self.user_index(id)?;
                    Some(
                        self.tenant_index(t)
                            .is_some_and(|t| self.member(idx, t).is_some()),
                    )
                }
            }
        };
        for (i, t, m) in &member_managers {
            match final_member(m, t) {
                None => return Err(vec![format!("changes[{i}].manager: unknown user '{m}'")]),
                Some(false) => {
                    return Err(vec![format!(
                        "changes[{i}].manager: '{m}' is not a member of tenant '{t}'"
                    )])
                }
                Some(true) => {}
            }
        }
        for (i, roles) in &member_roles {
            for (k, r) in roles.iter().enumerate() {
                if !self.role_idx.contains_key(r.as_str()) {
                    errors.push(format!("changes[{i}].roles[{k}]: unknown role '{r}'"));
                }
            }
        }
        if !errors.is_empty() {
            errors.truncate(MAX_ERRORS);
            return Err(errors);
        }

        // Indices: existing users keep theirs; new ones follow, in order of appearance, then
        // new memberships.
        let first_new = self.users.len() as UserIdx;
        let mut next = first_new;
        for t in &mut touched {
            if t.0.is_none() {
                t.0 = Some(next);
                next += 1;
            }
        }
        let index_of = |id: &str| -> Option<UserIdx> {
            match position.get(id) {
                Some(p) => touched[*p].0,
                None => self.user_index(id),
            }
        };

        // Compile the touched users (and, with tenants, their memberships).
        let mut tables = Tables {
            grants: self.grants.clone(),
            grant_of: self.grant_of.clone(),
            teams: self.teams.clone(),
            team_of: self.team_of.clone(),
            team_members: self.team_members.clone(),
        };
        let mut users = self.users.clone();
        let mut by_id = self.by_id.clone();
        let mut api_keys = self.api_keys.clone();
        let mut manager_changed = next != first_new;
        // Keys first released by every touched user, then taken: a key may move between two
        // users of the same batch.
        for (idx, _) in &touched {
            let Some(old) = idx.and_then(|i| users.get(i as usize)) else {
                continue;
            };
            let i = idx.unwrap_or_default();
            for d in old.api_keys.iter() {
                if api_keys.get(d) == Some(i) {
                    api_keys.set(*d, None);
                }
            }
        }
        let mut compiled: Vec<(UserIdx, User)> = Vec::with_capacity(touched.len());
        // Memberships compiled: (entry, its manager's person id, tenant).
        let mut member_links: Vec<(UserIdx, Option<String>, u32)> = Vec::new();
        // The final memberships of the touched people, and the entries they dropped.
        let mut lists: HashMap<UserIdx, Box<[(u32, UserIdx)]>> = HashMap::new();
        let mut detached: Vec<UserIdx> = Vec::new();
        for (idx, raw) in &touched {
            let idx = idx.unwrap_or_default();
            let who = &raw.id;
            if idx >= first_new && self.services.contains_key(who.as_str()) {
                // What a full build says of a user and a service sharing an id.
                errors.push(format!(
                    "changes: '{who}' is a service's id (services change with a full snapshot)"
                ));
            }
            if idx >= first_new && !is_valid_user_id(who) {
                errors.push(format!(
                    "changes: '{}' is not a valid user id (1–256 visible ASCII characters, no spaces or commas)",
                    who.escape_debug()
                ));
                continue;
            }
            let old = self.users.get(idx as usize);
            if let Some(o) = old {
                tables.leave(&o.teams);
            }
            let person = format!("user '{who}'");
            let (grant, manager, team_ids) = if tenanted {
                if !raw.roles.is_empty() || !raw.teams.is_empty() || raw.manager.is_some() {
                    errors.push(format!(
                        "changes: user '{who}': with tenants, roles, teams and manager are per membership: write them in the user's memberships"
                    ));
                }
                (
                    tables.grant(self, catalog, &[], &person, &mut errors),
                    None,
                    Box::default(),
                )
            } else {
                if !raw.memberships.is_empty() {
                    errors.push(format!(
                        "changes: user '{who}': memberships need the snapshot's tenants section"
                    ));
                }
                let grant = tables.grant(self, catalog, &raw.roles, &person, &mut errors);
                let manager = match &raw.manager {
                    None => None,
                    Some(m) => match index_of(m) {
                        Some(x) => Some(x),
                        None => {
                            errors.push(format!(
                                "changes: user '{who}': manager: unknown user '{m}'"
                            ));
                            None
                        }
                    },
                };
                (grant, manager, tables.join(&raw.teams))
            };
            if old.is_none_or(|o| o.manager != manager) {
                manager_changed = true;
            }
            let mut digests = Vec::with_capacity(raw.api_keys.len());
            for k in &raw.api_keys {
                match parse_key_digest(k) {
                    None => errors.push(format!(
                        "changes: user '{who}': api key must be 'sha256:' followed by 64 hex digits"
                    )),
                    Some(d) => {
                        if let Some(other) = api_keys.get(&d) {
                            let other = match compiled.iter().find(|(i, _)| *i == other) {
                                Some((_, u)) => u.id.to_string(),
                                None => users
                                    .get(other as usize)
                                    .map_or(String::new(), |u| u.id.to_string()),
                            };
                            errors.push(format!(
                                "changes: user '{who}': the same API key is also held by '{other}'"
                            ));
                        } else {
                            api_keys.set(d, Some(idx));
                        }
                        digests.push(d);
                    }
                }
            }
            // Memberships: an existing one keeps its entry; a new one takes the next index;
            // one no longer listed is detached (module docs).
            let mut mine: Vec<(u32, UserIdx)> = Vec::new();
            if tenanted {
                let before: &[(u32, UserIdx)] = old.map_or(&[][..], |o| &o.memberships[..]);
                for (_, m) in before {
                    if let Some(e) = self.users.get(*m as usize) {
                        tables.leave(&e.teams);
                    }
                }
                for m in &raw.memberships {
                    let Some(t) = tenant_idx.get(m.tenant.as_str()).copied() else {
                        errors.push(format!(
                            "changes: user '{who}': unknown tenant '{}'",
                            m.tenant
                        ));
                        continue;
                    };
                    if mine.iter().any(|(x, _)| *x == t) {
                        errors.push(format!(
                            "changes: user '{who}' has a second membership of tenant '{}'",
                            m.tenant
                        ));
                        continue;
                    }
                    let entry = match before.iter().find(|(x, _)| *x == t) {
                        Some((_, e)) => *e,
                        None => {
                            next += 1;
                            manager_changed = true;
                            next - 1
                        }
                    };
                    let context = format!("user '{who}' in tenant '{}'", m.tenant);
                    let grant = tables.grant(self, catalog, &m.roles, &context, &mut errors);
                    mine.push((t, entry));
                    member_links.push((entry, m.manager.clone(), t));
                    compiled.push((
                        entry,
                        User {
                            id: who.as_str().into(),
                            name: None,
                            grant,
                            manager: None, // resolved once every membership is known
                            teams: tables.join(&m.teams),
                            disabled: raw.disabled,
                            api_keys: Box::default(),
                            service: false,
                            tenant: t,
                            person: idx,
                            memberships: Box::default(),
                        },
                    ));
                }
                mine.sort_unstable();
                for (t, e) in before {
                    if !mine.iter().any(|(x, _)| x == t) {
                        detached.push(*e);
                    }
                }
                lists.insert(idx, mine.clone().into_boxed_slice());
            }
            compiled.push((
                idx,
                User {
                    id: who.as_str().into(),
                    name: raw.name.as_deref().map(Into::into),
                    grant,
                    manager,
                    teams: team_ids,
                    disabled: raw.disabled,
                    api_keys: digests.into_boxed_slice(),
                    service: false,
                    tenant: NO_TENANT,
                    person: idx,
                    memberships: mine.into_boxed_slice(),
                },
            ));
        }
        // The memberships' managers: the manager's own membership of the tenant, in the
        // batch's final memberships.
        let member_of = |person: UserIdx, t: u32| -> Option<UserIdx> {
            match lists.get(&person) {
                Some(list) => list.iter().find(|(x, _)| *x == t).map(|(_, m)| *m),
                None if (person as usize) < self.users.len() => self.member(person, t),
                None => None,
            }
        };
        let mut links: HashMap<UserIdx, Option<UserIdx>> = HashMap::new();
        for (entry, name, t) in &member_links {
            let m = match name {
                None => None,
                Some(name) => {
                    let found = index_of(name).and_then(|p| member_of(p, *t));
                    if found.is_none() {
                        let tenant = tenant_ids.get(*t as usize).map_or("", |x| x);
                        errors.push(if index_of(name).is_some() {
                            format!(
                                "changes: tenant '{tenant}': manager '{name}' is not a member of tenant '{tenant}'"
                            )
                        } else {
                            format!("changes: tenant '{tenant}': manager: unknown user '{name}'")
                        });
                    }
                    found
                }
            };
            links.insert(*entry, m);
        }
        for (idx, u) in &mut compiled {
            if let Some(m) = links.get(idx) {
                u.manager = *m;
                if self
                    .users
                    .get(*idx as usize)
                    .is_none_or(|o| o.manager != *m)
                {
                    manager_changed = true;
                }
            }
        }
        if !errors.is_empty() {
            errors.truncate(MAX_ERRORS);
            return Err(errors);
        }
        // New entries are pushed in index order (people first, then memberships).
        compiled.sort_by_key(|(idx, _)| *idx);
        let mut managers = self.managers.clone();
        let touched_entries: Vec<UserIdx> = compiled.iter().map(|(i, _)| *i).collect();
        for (idx, u) in compiled {
            let m = u.manager.unwrap_or(NO_MANAGER);
            if idx >= first_new {
                if !u.is_membership() {
                    by_id.set(u.id.clone(), Some(idx));
                }
                users.push(u);
                Arc::make_mut(&mut managers).push(m);
            } else {
                if managers.get(idx as usize) != Some(&m) {
                    if let Some(x) = Arc::make_mut(&mut managers).get_mut(idx as usize) {
                        *x = m;
                    }
                }
                if let Some(slot) = users.get_mut(idx as usize) {
                    *slot = u;
                }
            }
        }
        // Detached memberships: no team, no manager; no entry may still name one as manager.
        if !detached.is_empty() {
            manager_changed = true;
            for d in &detached {
                if let Some(u) = users.get_mut(*d as usize) {
                    u.teams = Box::default();
                    u.manager = None;
                }
                if let Some(x) = Arc::make_mut(&mut managers).get_mut(*d as usize) {
                    *x = NO_MANAGER;
                }
            }
            // No entry names one when none did before (no report in the hierarchy) and no
            // entry changed here does: then the scan below is not needed.
            let named_before = detached.iter().any(|d| !self.hierarchy.is_leaf(*d));
            let mut sorted = detached.clone();
            sorted.sort_unstable();
            let named_now = touched_entries.iter().any(|k| {
                managers
                    .get(*k as usize)
                    .is_some_and(|m| sorted.binary_search(m).is_ok())
            });
            // A bitmap of the detached entries: the scan of two million managers below tests
            // each with one load, not a hash.
            let mut gone = vec![
                false;
                if named_before || named_now {
                    users.len()
                } else {
                    0
                }
            ];
            for d in &detached {
                if let Some(g) = gone.get_mut(*d as usize) {
                    *g = true;
                }
            }
            for (k, m) in managers.iter().enumerate().filter(|_| !gone.is_empty()) {
                if gone.get(*m as usize) == Some(&true) && errors.len() < MAX_ERRORS {
                    let (u, t) = users.get(k).map_or(("", ""), |u| {
                        (&*u.id, tenant_ids.get(u.tenant as usize).map_or("", |t| t))
                    });
                    let m = users.get(*m as usize).map_or("", |u| &*u.id);
                    errors.push(format!(
                        "changes: user '{u}' in tenant '{t}': manager '{m}' is not a member of tenant '{t}'"
                    ));
                }
            }
            if !errors.is_empty() {
                return Err(errors);
            }
        }

        // The manager relation must stay a forest: a new loop goes through a changed link, so
        // walking up from each touched entry finds it. Walks stop at entries already known to
        // reach a root.
        let hierarchy = if manager_changed {
            let n = users.len();
            let mut reaches_root: HashSet<UserIdx> = HashSet::new();
            for start in &touched_entries {
                let start = *start;
                let mut path = Vec::new();
                let mut cur = users.get(start as usize).and_then(|u| u.manager);
                let mut looped = false;
                while let Some(c) = cur {
                    if c == start || path.len() > n {
                        looped = true;
                        break;
                    }
                    if reaches_root.contains(&c) {
                        break;
                    }
                    path.push(c);
                    cur = users.get(c as usize).and_then(|u| u.manager);
                }
                if looped {
                    errors.push(format!(
                        "changes: the manager chain of '{}' loops back to itself",
                        users.get(start as usize).map_or("", |u| &*u.id)
                    ));
                } else {
                    reaches_root.extend(path);
                }
            }
            if !errors.is_empty() {
                return Err(errors);
            }
            // Entries added without a manager and leaves that lost theirs (a membership added
            // or removed, most often) keep the numbering; anything else, a new tour.
            let changed: Vec<UserIdx> = touched_entries
                .iter()
                .chain(&detached)
                .copied()
                .filter(|k| {
                    let k = *k as usize;
                    k < self.managers.len() && self.managers.get(k) != managers.get(k)
                })
                .collect();
            match self.hierarchy.with_new_roots(&managers, &changed) {
                Some(h) => Arc::new(h),
                None => Arc::new(Hierarchy::build_flat(&managers)),
            }
        } else {
            self.hierarchy.clone()
        };

        // Records, against the final users.
        let mut records = self.records.clone();
        let team_of = &tables.team_of;
        let team_members = &tables.team_members;
        // Whom a share names, and their index in the new snapshot (`None`: unknown; a team
        // being shared with must have members).
        let principal = |i: usize,
                         user: &'c Option<String>,
                         team: &'c Option<String>,
                         role: &'c Option<String>,
                         needs_members: bool| {
            let who = named(i, user, team, role)?;
            let p = match who {
                Named::User(u) => index_of(u).map(Principal::User),
                Named::Team(t) => team_of
                    .get(t)
                    .filter(|x| {
                        !needs_members || team_members.get(**x as usize).is_some_and(|m| *m > 0)
                    })
                    .map(|x| Principal::Team(*x)),
                Named::Role(r) => self.role_idx.get(r).map(|x| Principal::Role(*x)),
            };
            Ok::<_, String>((who, p))
        };
        // The related objects of the records this batch removes, or moves to another tenant
        // (their types may be parents): one pass over the parent map, only when there are any.
        // An upsert that keeps its record's tenant (an ordinary reassignment) needs none.
        let removing: HashSet<u32> = record_ops
            .iter()
            .filter_map(|(_, c)| {
                let (record_type, id, moves) = match c {
                    Change::RemoveRecord { record_type, id } => (record_type, id, None),
                    Change::UpsertRecord {
                        record_type,
                        id,
                        tenant,
                        ..
                    } if tenanted => (record_type, id, Some(tenant)),
                    _ => return None,
                };
                let (t, rid) = canonical(types, record_type, id).ok()?;
                if !types.ids().any(|c| types.info(c).parents.contains(&t)) {
                    return None;
                }
                let found = self.records.find(t, &rid)?;
                let stays = moves.is_some_and(|tenant| {
                    tenant.as_deref().and_then(|x| self.tenant_index(x))
                        == Some(self.records.tenant_of(found.number))
                });
                (!stays).then_some(found.number)
            })
            .collect();
        let children = self.records.children_of(&removing);
        for (i, change) in &record_ops {
            let (record_type, id) = match change {
                Change::SetOwner {
                    record_type, id, ..
                }
                | Change::UpsertRecord {
                    record_type, id, ..
                }
                | Change::Share {
                    record_type, id, ..
                }
                | Change::Unshare {
                    record_type, id, ..
                }
                | Change::RemoveRecord { record_type, id } => (record_type, id),
                _ => continue,
            };
            let (t, rid) = match canonical(types, record_type, id) {
                Ok(x) => x,
                Err(e) => {
                    errors.push(format!("changes[{i}]: {e}"));
                    continue;
                }
            };
            let owner_of = |owner: &Option<String>| match owner {
                None => Ok(None),
                Some(o) => index_of(o)
                    .map(Some)
                    .ok_or_else(|| format!("changes[{i}]: owner: unknown user '{o}'")),
            };
            // With tenants: the tenant an upsert names (checked known in the first pass).
            let tenant_of = |tenant: &Option<String>| {
                tenant
                    .as_deref()
                    .and_then(|x| tenant_idx.get(x).copied())
                    .unwrap_or(NO_TENANT)
            };
            let Some(found) = records.find(t, &rid) else {
                match change {
                    // A record the CRM just created: a free slot of its type's table.
                    Change::UpsertRecord { owner, tenant, .. } => match owner_of(owner) {
                        Ok(owner) => {
                            if !records.add(t, &rid, owner) {
                                errors.push(format!(
                                    "changes[{i}]: no room for another {record_type} before a \
                                     full build"
                                ));
                            } else if tenanted {
                                if let Some(f) = records.find(t, &rid) {
                                    records.set_tenant(f.number, tenant_of(tenant));
                                }
                            }
                        }
                        Err(e) => errors.push(e),
                    },
                    _ => errors.push(format!(
                        "changes[{i}]: unknown record {record_type} '{rid}'"
                    )),
                }
                continue;
            };
            match change {
                Change::UpsertRecord { owner, tenant, .. } => {
                    match owner_of(owner) {
                        Ok(owner) => records.set_owner(found.number, owner),
                        Err(e) => errors.push(e),
                    }
                    let to = tenant_of(tenant);
                    if tenanted && records.tenant_of(found.number) != to {
                        let name = tenant.as_deref().unwrap_or_default();
                        if let Some(p) = records.parent(found) {
                            // A related object stays in its parent's tenant.
                            let of_parent = tenant_ids
                                .get(records.tenant_of(p.number) as usize)
                                .map_or("", |x| x);
                            errors.push(format!(
                                "changes[{i}].tenant: '{name}' is not the parent's tenant '{of_parent}'"
                            ));
                        } else if children
                            .get(&found.number)
                            .into_iter()
                            .flatten()
                            .any(|c| records.has_parent(*c))
                        {
                            // Its related objects follow it only through a full build
                            // ([`Snapshot::needs_rebuild`] sends such a batch there).
                            errors.push(format!(
                                "changes[{i}]: moving a record with related objects to another \
                                 tenant needs a full build"
                            ));
                        } else {
                            records.set_tenant(found.number, to);
                        }
                    }
                }
                Change::SetOwner { owner, .. } => {
                    let owner = match owner {
                        None => None,
                        Some(o) => match index_of(o) {
                            Some(x) => Some(x),
                            None => {
                                errors.push(format!("changes[{i}]: owner: unknown user '{o}'"));
                                continue;
                            }
                        },
                    };
                    records.set_owner(found.number, owner);
                }
                Change::RemoveRecord { .. } => {
                    // Its related objects go with it, as the CRM's own delete cascades (a
                    // parent type has no parents: one level).
                    records.remove(found.number);
                    for c in children.get(&found.number).into_iter().flatten() {
                        // Still its related object (not removed, nor added again on its own,
                        // earlier in the batch).
                        if records.has_parent(*c) {
                            records.remove(*c);
                        }
                    }
                }
                Change::Share {
                    user, team, role, ..
                } => {
                    let (who, p) = match principal(*i, user, team, role, true) {
                        Ok(x) => x,
                        Err(e) => {
                            errors.push(e);
                            continue;
                        }
                    };
                    match p {
                        Some(p) => records.add_share(found.number, p),
                        None => errors.push(match who {
                            Named::Team(t) => format!("changes[{i}]: team '{t}' has no members"),
                            other => format!("changes[{i}]: unknown {other}"),
                        }),
                    }
                }
                Change::Unshare {
                    user, team, role, ..
                } => {
                    let (who, p) = match principal(*i, user, team, role, false) {
                        Ok(x) => x,
                        Err(e) => {
                            errors.push(e);
                            continue;
                        }
                    };
                    if !p.is_some_and(|p| records.remove_share(found.number, p)) {
                        errors.push(format!(
                            "changes[{i}]: {record_type} '{rid}' is not shared with {who}"
                        ));
                    }
                }
                _ => {}
            }
        }
        if !errors.is_empty() {
            errors.truncate(MAX_ERRORS);
            return Err(errors);
        }
        by_id.compact_if_large();
        api_keys.compact_if_large();
        let now = SystemTime::now();
        let users_touched = touched.iter().map(|(_, u)| u.id.clone()).collect();
        let new_people = touched
            .iter()
            .filter(|(i, _)| i.is_some_and(|i| i >= first_new))
            .count();
        let added_members = (next - first_new) as usize - new_people;
        Ok(Applied {
            snapshot: Snapshot {
                version: next_version(&self.version),
                loaded_at: now,
                produced_at: now,
                roles: self.roles.clone(),
                role_idx: self.role_idx.clone(),
                grants: tables.grants,
                grant_of: tables.grant_of,
                users,
                teams: tables.teams,
                team_of: tables.team_of,
                team_members: tables.team_members,
                by_id,
                api_keys,
                services: self.services.clone(),
                hierarchy,
                managers,
                records,
                tenants: tenant_ids,
                tenant_idx,
                membership_count: self.membership_count + added_members - detached.len(),
                detached: self.detached + detached.len(),
                build_phases: Arc::default(),
            },
            users_touched,
            record_changes: record_ops.len(),
        })
    }
}

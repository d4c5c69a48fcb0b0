//! [`RawSnapshot::apply`]: batches applied to the source form, for structural changes (then a
//! full build) and as the reference the fast path is tested against.
//!
//! The source form is indexed once per replay — users by id, record entries by canonical
//! (type, id), related objects by parent, the teams that have members, the tenants — so a
//! change costs a few hash probes, not a scan of every record: replaying the batches applied
//! since the last full load (`live.rs`) costs the records once, not once per change. An entry
//! a change removes is marked and dropped when the replay ends, keeping the order of the rest:
//! the result is the one the scanning implementation gave, change for change (tested against
//! it below).

use std::collections::{HashMap, HashSet};

use super::{canonical, named, Change};
use crate::ids::{RecordId, RecordTypeId, RecordTypes};
use crate::records::{RawId, RawOwner, RawRecords, RawRelated, RawShare};
use crate::snapshot::{RawMembership, RawSnapshot, RawUser};

type Key = (RecordTypeId, RecordId);

/// Positions of the live entries of one list, by key (in list order).
#[derive(Default)]
struct Positions {
    at: HashMap<Key, Vec<usize>>,
    dead: HashSet<usize>,
}

impl Positions {
    fn build<T>(list: &[T], key: impl Fn(&T) -> Option<Key>) -> Positions {
        let mut at: HashMap<Key, Vec<usize>> = HashMap::with_capacity(list.len());
        for (p, e) in list.iter().enumerate() {
            if let Some(k) = key(e) {
                at.entry(k).or_default().push(p);
            }
        }
        Positions {
            at,
            dead: HashSet::new(),
        }
    }

    /// The live positions of a key, in list order.
    fn live<'a>(&'a self, k: &Key) -> impl Iterator<Item = usize> + 'a {
        let dead = &self.dead;
        self.at
            .get(k)
            .into_iter()
            .flatten()
            .copied()
            .filter(move |p| !dead.contains(p))
    }

    fn first(&self, k: &Key) -> Option<usize> {
        self.live(k).next()
    }

    fn push(&mut self, k: Key, p: usize) {
        self.at.entry(k).or_default().push(p);
    }

    fn kill(&mut self, k: &Key) {
        let live: Vec<usize> = self.live(k).collect();
        self.dead.extend(live);
    }

    /// Drop the dead entries of `list`, keeping the order of the rest.
    fn compact<T>(&self, list: &mut Vec<T>) {
        if self.dead.is_empty() {
            return;
        }
        let mut p = 0;
        list.retain(|_| {
            p += 1;
            !self.dead.contains(&(p - 1))
        });
    }
}

/// The record section's index.
#[derive(Default)]
struct Records {
    owners: Positions,
    related: Positions,
    /// Related entries by their parent's key (positions in `related`).
    children: Positions,
    shares: Positions,
}

/// A replay of batches on the source form (module docs).
pub(crate) struct Replay<'r> {
    raw: &'r mut RawSnapshot,
    types: &'r RecordTypes,
    users: Option<HashMap<String, usize>>,
    dead_users: HashSet<usize>,
    /// Members per team name (users' and memberships' teams), once asked for.
    team_members: Option<HashMap<String, usize>>,
    tenants: Option<HashSet<String>>,
    records: Option<Records>,
}

impl<'r> Replay<'r> {
    pub(crate) fn new(raw: &'r mut RawSnapshot, types: &'r RecordTypes) -> Replay<'r> {
        Replay {
            raw,
            types,
            users: None,
            dead_users: HashSet::new(),
            team_members: None,
            tenants: None,
            records: None,
        }
    }

    fn canon(&self, t: &str, id: &RawId) -> Option<Key> {
        canonical(self.types, t, id).ok()
    }

    fn user_index(&mut self) -> &mut HashMap<String, usize> {
        let raw = &self.raw;
        let dead = &self.dead_users;
        self.users.get_or_insert_with(|| {
            let mut m = HashMap::with_capacity(raw.users.len());
            for (p, u) in raw.users.iter().enumerate() {
                if !dead.contains(&p) {
                    m.entry(u.id.clone()).or_insert(p);
                }
            }
            m
        })
    }

    fn position(&mut self, id: &str) -> Option<usize> {
        self.user_index().get(id).copied()
    }

    fn user_teams(u: &RawUser) -> impl Iterator<Item = &String> + '_ {
        u.teams
            .iter()
            .chain(u.memberships.iter().flat_map(|m| m.teams.iter()))
    }

    /// Count (`+1`) or uncount (`-1`) a user's teams, when the counts are kept.
    fn count_teams(&mut self, p: usize, sign: isize) {
        let (Some(counts), Some(u)) = (self.team_members.as_mut(), self.raw.users.get(p)) else {
            return;
        };
        for t in Self::user_teams(u) {
            let c = counts.entry(t.clone()).or_default();
            *c = c.saturating_add_signed(sign);
        }
    }

    /// Change user `p` (its team counts follow).
    fn edit<T>(&mut self, p: usize, f: impl FnOnce(&mut RawUser) -> T) -> T {
        self.count_teams(p, -1);
        let out = f(&mut self.raw.users[p]);
        self.count_teams(p, 1);
        out
    }

    fn has_members(&mut self, team: &str) -> bool {
        let raw = &self.raw;
        let dead = &self.dead_users;
        let counts = self.team_members.get_or_insert_with(|| {
            let mut m: HashMap<String, usize> = HashMap::new();
            for (p, u) in raw.users.iter().enumerate() {
                if !dead.contains(&p) {
                    for t in Self::user_teams(u) {
                        *m.entry(t.clone()).or_default() += 1;
                    }
                }
            }
            m
        });
        counts.get(team).is_some_and(|c| *c > 0)
    }

    fn known_tenant(&mut self, t: &str) -> bool {
        let raw = &self.raw;
        self.tenants
            .get_or_insert_with(|| raw.tenants.iter().map(|t| t.id.clone()).collect())
            .contains(t)
    }

    fn records(&mut self) -> &mut Records {
        if self.records.is_none() {
            let types = self.types;
            let c = |t: &str, id: &RawId| canonical(types, t, id).ok();
            let list = self.raw.records.get_or_insert_with(RawRecords::default);
            self.records = Some(Records {
                owners: Positions::build(&list.owners, |o| c(&o.record_type, &o.id)),
                related: Positions::build(&list.related, |r| c(&r.record_type, &r.id)),
                children: Positions::build(&list.related, |r| c(&r.parent_type, &r.parent_id)),
                shares: Positions::build(&list.shares, |s| c(&s.record_type, &s.id)),
            });
        }
        self.records.get_or_insert_with(Records::default)
    }

    fn list(&mut self) -> &mut RawRecords {
        self.raw.records.get_or_insert_with(RawRecords::default)
    }

    /// Is a record declared (an owner entry, or a related object)?
    fn known(&mut self, k: &Key) -> bool {
        let r = self.records();
        r.owners.first(k).is_some() || r.related.first(k).is_some()
    }

    /// The tenant of a known record: its owner entry's, else (a related object declared only
    /// under its parent) its parent's, up a bounded chain.
    fn record_tenant(&mut self, target: &Key) -> Option<String> {
        let mut at = target.clone();
        for _ in 0..8 {
            let r = self.records();
            let owner = r.owners.first(&at);
            let related = r.related.first(&at);
            let list = self.list();
            if let Some(o) = owner.and_then(|p| list.owners.get(p)) {
                if o.tenant.is_some() {
                    return o.tenant.clone();
                }
            }
            let r = related.and_then(|p| list.related.get(p))?;
            let (pt, pid) = (r.parent_type.clone(), r.parent_id.clone());
            at = self.canon(&pt, &pid)?;
        }
        None
    }

    /// The tenant of a related object's parent (`None`: not a related object, or a parent
    /// of no known tenant).
    fn parent_tenant(&mut self, target: &Key) -> Option<String> {
        let at = self.records().related.first(target)?;
        let r = self.list().related.get(at)?;
        let (pt, pid) = (r.parent_type.clone(), r.parent_id.clone());
        let parent = self.canon(&pt, &pid)?;
        self.record_tenant(&parent)
    }

    /// The tenant a change names, checked: required with tenants, refused without, and a
    /// tenant of the snapshot (as the batch has made it so far).
    fn tenant_named<'a>(
        &mut self,
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
            (true, Some(t)) if !self.known_tenant(t) => {
                Err(format!("changes[{i}].tenant: unknown tenant '{t}'"))
            }
            (_, t) => Ok(t.as_deref()),
        }
    }

    /// User `p`'s membership of tenant `t`, which must exist; `f` changes it.
    fn membership(
        &mut self,
        i: usize,
        p: usize,
        t: &str,
        f: impl FnOnce(&mut RawMembership),
    ) -> Result<(), String> {
        self.edit(p, |user| {
            let id = user.id.clone();
            match user.memberships.iter_mut().find(|m| m.tenant == t) {
                Some(m) => {
                    f(m);
                    Ok(())
                }
                None => Err(format!(
                    "changes[{i}]: user '{id}' has no membership in tenant '{t}' (set_membership adds one)"
                )),
            }
        })
    }

    /// Apply one batch, in order (the contract of [`RawSnapshot::apply`]).
    pub(crate) fn apply(&mut self, changes: &[Change]) -> Result<(), String> {
        let types = self.types;
        // With tenants or without is fixed for the batch (a snapshot gains or loses its tenants
        // only whole, with a config to match).
        let tenanted = !self.raw.tenants.is_empty();
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
            let user = |me: &mut Self, id: &str| -> Result<usize, String> {
                me.position(id)
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
                        None => self.edit(u, |x| x.roles = roles.clone()),
                        Some(t) => self.membership(i, u, t, |m| m.roles = roles.clone())?,
                    }
                }
                Change::SetManager {
                    user: id,
                    manager,
                    tenant,
                } => {
                    let u = user(self, id)?;
                    match self.tenant_named(i, tenanted, tenant)? {
                        None => self.edit(u, |x| x.manager = manager.clone()),
                        Some(t) => {
                            if let Some(m) = manager {
                                member_managers.push((i, t.to_string(), m.clone()));
                            }
                            self.membership(i, u, t, |m| m.manager = manager.clone())?;
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
                        None => self.edit(u, |x| x.teams = teams.clone()),
                        Some(t) => self.membership(i, u, t, |m| m.teams = teams.clone())?,
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
                    self.edit(u, |x| {
                        let list = &mut x.memberships;
                        match list.iter_mut().find(|m| m.tenant == membership.tenant) {
                            Some(m) => *m = membership,
                            None => list.push(membership),
                        }
                    });
                }
                Change::RemoveMembership { user: id, tenant } => {
                    let u = user(self, id)?;
                    self.tenant_named(i, tenanted, &Some(tenant.clone()))?;
                    let removed = self.edit(u, |x| {
                        let before = x.memberships.len();
                        x.memberships.retain(|m| &m.tenant != tenant);
                        x.memberships.len() != before
                    });
                    if !removed {
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
                    match self.raw.tenants.iter_mut().find(|t| t.id == tenant.id) {
                        Some(t) => *t = tenant.clone(),
                        None => {
                            self.raw.tenants.push(tenant.clone());
                            if let Some(known) = self.tenants.as_mut() {
                                known.insert(tenant.id.clone());
                            }
                        }
                    }
                }
                Change::Disable { user: id } => {
                    let u = user(self, id)?;
                    self.raw.users[u].disabled = true;
                }
                Change::Enable { user: id } => {
                    let u = user(self, id)?;
                    self.raw.users[u].disabled = false;
                }
                Change::UpsertUser { user: new } => match self.position(&new.id) {
                    Some(u) => self.edit(u, |x| *x = new.clone()),
                    None => {
                        self.raw.users.push(new.clone());
                        let p = self.raw.users.len() - 1;
                        self.user_index().insert(new.id.clone(), p);
                        self.count_teams(p, 1);
                    }
                },
                Change::RemoveUser { user: id } => {
                    let u = user(self, id)?;
                    self.count_teams(u, -1);
                    self.dead_users.insert(u);
                    self.user_index().remove(id.as_str());
                }
                Change::UpsertRole { role } => {
                    match self.raw.roles.iter().position(|r| r.id == role.id) {
                        Some(r) => self.raw.roles[r] = role.clone(),
                        None => self.raw.roles.push(role.clone()),
                    }
                }
                Change::RemoveRole { role } => {
                    let r = self
                        .raw
                        .roles
                        .iter()
                        .position(|r| &r.id == role)
                        .ok_or_else(|| format!("changes[{i}]: unknown custom role '{role}'"))?;
                    self.raw.roles.remove(r);
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
                    let r = self.records();
                    if let Some(p) = r.owners.first(&target) {
                        if let Some(o) = self.list().owners.get_mut(p) {
                            o.owner = owner.clone();
                        }
                    } else if r.related.first(&target).is_some() {
                        // A related object declared only under its parent: declare its owner
                        // (and, with tenants, its parent's tenant, which it has).
                        let tenant = if tenanted {
                            self.record_tenant(&target)
                        } else {
                            None
                        };
                        let list = self.list();
                        list.owners.push(RawOwner {
                            record_type: record_type.clone(),
                            id: id.clone(),
                            owner: owner.clone(),
                            tenant,
                        });
                        let p = list.owners.len() - 1;
                        self.records().owners.push(target, p);
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
                    if !self.known(&target) {
                        return Err(format!(
                            "changes[{i}]: unknown record {record_type} '{}'",
                            target.1
                        ));
                    }
                    match who {
                        super::Named::Team(t) => shared_teams.push((i, t.to_string())),
                        super::Named::User(u) => named_users.push((i, u.to_string())),
                        super::Named::Role(_) => {}
                    }
                    let list = self.list();
                    list.shares.push(RawShare {
                        record_type: record_type.clone(),
                        id: id.clone(),
                        user: user.clone(),
                        team: team.clone(),
                        role: role.clone(),
                    });
                    let p = list.shares.len() - 1;
                    self.records().shares.push(target, p);
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
                    // Without a parent named, a related object keeps its parent, and so its
                    // parent's tenant (as the incremental path holds, change by change).
                    if let (None, Some(t)) = (&parent_target, &tenant) {
                        if let Some(of_parent) = self.parent_tenant(&target) {
                            if *t != of_parent {
                                return Err(format!(
                                    "changes[{i}].tenant: '{t}' is not the parent's tenant '{of_parent}'"
                                ));
                            }
                        }
                    }
                    if let (Some(pt), Some(p)) = (&parent_target, parent) {
                        if *pt == target {
                            return Err(format!("changes[{i}]: a record cannot be its own parent"));
                        }
                        if !self.known(pt) {
                            return Err(format!(
                                "changes[{i}]: parent: unknown record {} '{}'",
                                p.record_type, pt.1
                            ));
                        }
                        if let (Some(t), Some(of_parent)) = (&tenant, self.record_tenant(pt)) {
                            if *t != of_parent {
                                return Err(format!(
                                    "changes[{i}].tenant: '{t}' is not the parent's tenant '{of_parent}'"
                                ));
                            }
                        }
                        self.records().related.kill(&target);
                        let list = self.list();
                        list.related.push(RawRelated {
                            record_type: record_type.clone(),
                            id: id.clone(),
                            parent_type: p.record_type.clone(),
                            parent_id: p.id.clone(),
                        });
                        let at = list.related.len() - 1;
                        let r = self.records();
                        r.related.push(target.clone(), at);
                        r.children.push(pt.clone(), at);
                    }
                    match self.records().owners.first(&target) {
                        Some(p) => {
                            if let Some(o) = self.list().owners.get_mut(p) {
                                o.owner = owner.clone();
                                o.tenant = tenant;
                            }
                        }
                        None => {
                            let list = self.list();
                            list.owners.push(RawOwner {
                                record_type: record_type.clone(),
                                id: id.clone(),
                                owner: owner.clone(),
                                tenant,
                            });
                            let p = list.owners.len() - 1;
                            self.records().owners.push(target, p);
                        }
                    }
                }
                Change::RemoveRecord { record_type, id } => {
                    let target = canonical(types, record_type, id)
                        .map_err(|e| format!("changes[{i}]: {e}"))?;
                    if !self.known(&target) {
                        return Err(format!(
                            "changes[{i}]: unknown record {record_type} '{}'",
                            target.1
                        ));
                    }
                    // Its related objects go with it (as the CRM's own delete cascades).
                    // (`children` holds positions in `related`: its marks are related's.)
                    let r = self.records();
                    let kids: Vec<usize> = r
                        .children
                        .at
                        .get(&target)
                        .into_iter()
                        .flatten()
                        .copied()
                        .filter(|p| !r.related.dead.contains(p))
                        .collect();
                    let mut gone = vec![target];
                    for p in kids {
                        let Some(r) = self.list().related.get(p) else {
                            continue;
                        };
                        let (t, x) = (r.record_type.clone(), r.id.clone());
                        gone.extend(self.canon(&t, &x));
                    }
                    let r = self.records();
                    for k in &gone {
                        r.related.kill(k);
                        r.owners.kill(k);
                        r.shares.kill(k);
                    }
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
                    let live: Vec<usize> = self.records().shares.live(&target).collect();
                    let list = self.list();
                    let matching: Vec<usize> = live
                        .into_iter()
                        .filter(|p| {
                            list.shares.get(*p).is_some_and(|s| {
                                named(i, &s.user, &s.team, &s.role).ok() == Some(who)
                            })
                        })
                        .collect();
                    if matching.is_empty() {
                        return Err(format!(
                            "changes[{i}]: {record_type} '{}' is not shared with {who}",
                            target.1
                        ));
                    }
                    self.records().shares.dead.extend(matching);
                }
            }
        }
        for (i, u) in named_users {
            if self.position(&u).is_none() {
                return Err(format!("changes[{i}]: unknown user '{u}'"));
            }
        }
        for (i, t, m) in member_managers {
            let member = self.position(&m).map(|p| {
                self.raw.users[p]
                    .memberships
                    .iter()
                    .any(|ms| ms.tenant == t)
            });
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
            if self.raw.roles.iter().any(|r| r.id == role) {
                continue; // upserted again later in the batch
            }
            let dead = &self.dead_users;
            let holders: Vec<&str> = self
                .raw
                .users
                .iter()
                .enumerate()
                .filter(|(p, u)| {
                    !dead.contains(p)
                        && (u.roles.contains(&role)
                            || u.memberships.iter().any(|m| m.roles.contains(&role)))
                })
                .map(|(_, u)| u.id.as_str())
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
            if !self.has_members(&t) {
                return Err(format!("changes[{i}]: team '{t}' has no members"));
            }
        }
        Ok(())
    }

    /// End the replay: the entries removed are dropped, the others keep their order.
    pub(crate) fn finish(self) {
        let mut p = 0;
        let dead = &self.dead_users;
        if !dead.is_empty() {
            self.raw.users.retain(|_| {
                p += 1;
                !dead.contains(&(p - 1))
            });
        }
        if let (Some(r), Some(list)) = (&self.records, self.raw.records.as_mut()) {
            r.owners.compact(&mut list.owners);
            r.related.compact(&mut list.related);
            r.shares.compact(&mut list.shares);
        }
    }
}

impl RawSnapshot {
    pub fn parse(text: &str) -> Result<RawSnapshot, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// Apply a batch of changes, in order. An error names the change; nothing is half-applied
    /// because the caller works on a copy and validates the result with
    /// [`crate::snapshot::Snapshot::build`]. Record references are matched by canonical id
    /// (`types`: the config's record types).
    pub fn apply(&mut self, changes: &[Change], types: &RecordTypes) -> Result<(), String> {
        self.apply_all(&[changes], types)
    }

    /// Apply batches one after another, indexing the source form once for all of them (module
    /// docs); the first error stops it, as applying them one by one would.
    pub fn apply_all(&mut self, batches: &[&[Change]], types: &RecordTypes) -> Result<(), String> {
        let mut replay = Replay::new(self, types);
        let mut out = Ok(());
        for b in batches {
            out = replay.apply(b);
            if out.is_err() {
                break;
            }
        }
        replay.finish();
        out
    }
}

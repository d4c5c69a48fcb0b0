//! The record decision: may this user reach this record, under the snapshot's owners, shares,
//! manager forest and record scopes — O(1) per record ([`crate::records`] holds the data).

use crate::catalog::PermId;
use crate::ids::{RecordId, RecordTypeId};
use crate::records::*;
use crate::scope::ScopeSet;
use crate::snapshot::{Snapshot, UserIdx, NO_TENANT};

/// What to do with a record the snapshot does not know (a route setting; deny by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownRecord {
    #[default]
    Deny,
    /// Allow when the caller holds the permission at all (e.g. records created after the last
    /// snapshot, on a route where the CRM checks ownership itself).
    Allow,
}

/// Which rule admitted a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    All,
    Own,
    Subordinate,
    Team,
    Shared,
}

/// Why a record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// None of the user's roles grants the permission.
    NoPermission,
    /// The permission is granted, but not over this record.
    OutOfScope,
}

/// The outcome of one record check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordDecision {
    /// Allowed; `through_parent` when a related object was reached through its parent.
    Allowed {
        via: Via,
        through_parent: bool,
    },
    Denied(Refusal),
    /// The record is not in the snapshot and the user's scope is not `all`: the route's
    /// [`UnknownRecord`] decides ([`RecordDecision::allows`]).
    Unknown,
}

impl RecordDecision {
    /// The final yes/no, with the route's setting for unknown records.
    pub fn allows(self, unknown: UnknownRecord) -> bool {
        match self {
            RecordDecision::Allowed { .. } => true,
            RecordDecision::Denied(_) => false,
            RecordDecision::Unknown => unknown == UnknownRecord::Allow,
        }
    }
}

/// The user's effective scope for a permission: the union over their roles (empty: not
/// granted).
pub fn scope_of(snapshot: &Snapshot, user: UserIdx, perm: PermId) -> ScopeSet {
    snapshot.grant(snapshot.user(user)).scopes.get(perm)
}

/// One caller checking records of one type under one permission: the scope, teams and roles
/// are read once, then each [`RecordCheck::check`] is a table probe and an interval test (plus
/// share and parent probes only for records that have them). Bulk trimming and list filtering
/// build one per call and check every item with it.
pub struct RecordCheck<'s> {
    snapshot: &'s Snapshot,
    /// The caller in the call's tenant (a membership with tenants; the person without).
    user: UserIdx,
    /// The person (or service) behind `user`: what record owners and user shares name.
    person: UserIdx,
    /// The call's tenant ([`NO_TENANT`] without tenants): a record of another is refused.
    tenant: u32,
    scope: ScopeSet,
    record_type: RecordTypeId,
    teams: &'s [u32],
    roles: &'s [u16],
}

impl<'s> RecordCheck<'s> {
    pub fn new(
        snapshot: &'s Snapshot,
        user: UserIdx,
        perm: PermId,
        record_type: RecordTypeId,
    ) -> RecordCheck<'s> {
        let u = snapshot.user(user);
        let grant = snapshot.grant(u);
        RecordCheck {
            snapshot,
            user,
            person: u.person,
            tenant: u.tenant,
            scope: grant.scopes.get(perm),
            record_type,
            teams: &u.teams,
            // A service principal owns nothing and is in no share: only an `all` scope reaches
            // records for it, not a share made to a role it holds.
            roles: if u.service { &[] } else { &grant.roles },
        }
    }

    /// The same check under one of the user's roles alone (that role's own scope for the
    /// permission, not the union): which role's scope covers a record, for `granted_by`.
    pub fn for_role(
        snapshot: &'s Snapshot,
        user: UserIdx,
        role: u16,
        perm: PermId,
        record_type: RecordTypeId,
    ) -> RecordCheck<'s> {
        let mut check = RecordCheck::new(snapshot, user, perm, record_type);
        check.scope = snapshot
            .roles()
            .get(usize::from(role))
            .map_or(ScopeSet::NONE, |r| r.scopes.get(perm));
        check
    }

    /// May the caller exercise the permission on this record? O(1) (module docs).
    pub fn check(&self, id: &RecordId) -> RecordDecision {
        if self.scope.is_empty() {
            return RecordDecision::Denied(Refusal::NoPermission);
        }
        if self.tenant != NO_TENANT {
            return self.check_in_tenant(id);
        }
        if self.scope.is_all() {
            return RecordDecision::Allowed {
                via: Via::All,
                through_parent: false,
            };
        }
        let store = self.snapshot.records();
        let Some(found) = store.find(self.record_type, id) else {
            return RecordDecision::Unknown;
        };
        if let Some(via) = self.admits(found) {
            return RecordDecision::Allowed {
                via,
                through_parent: false,
            };
        }
        if let Some(via) = store.parent(found).and_then(|p| self.admits(p)) {
            return RecordDecision::Allowed {
                via,
                through_parent: true,
            };
        }
        RecordDecision::Denied(Refusal::OutOfScope)
    }

    /// [`RecordCheck::check`] with tenants: the record must be known and of the call's
    /// tenant, whatever the scope (an `all` scope is all of the tenant's records); a record
    /// the snapshot does not know is left to the route's `unknown_record` setting.
    fn check_in_tenant(&self, id: &RecordId) -> RecordDecision {
        let store = self.snapshot.records();
        let Some(found) = store.find(self.record_type, id) else {
            return RecordDecision::Unknown;
        };
        if store.tenant_of(found.number) != self.tenant {
            return RecordDecision::Denied(Refusal::OutOfScope);
        }
        if self.scope.is_all() {
            return RecordDecision::Allowed {
                via: Via::All,
                through_parent: false,
            };
        }
        if let Some(via) = self.admits(found) {
            return RecordDecision::Allowed {
                via,
                through_parent: false,
            };
        }
        if let Some(via) = store.parent(found).and_then(|p| self.admits(p)) {
            return RecordDecision::Allowed {
                via,
                through_parent: true,
            };
        }
        RecordDecision::Denied(Refusal::OutOfScope)
    }

    /// [`RecordCheck::check`] settled with the route's setting for unknown records.
    pub fn allows(&self, id: &RecordId, unknown: UnknownRecord) -> bool {
        self.check(id).allows(unknown)
    }

    /// Which rule, if any, admits this record (its own owner and shares; not its parent).
    fn admits(&self, found: Found) -> Option<Via> {
        let (s, user, scope) = (self.snapshot, self.user, self.scope);
        if let Some(owner) = found.owner {
            if owner == self.person
                && scope.intersects(
                    ScopeSet::OWN
                        .union(ScopeSet::TEAM)
                        .union(ScopeSet::SUBORDINATES),
                )
            {
                return Some(Via::Own);
            }
            // The owner as a member of the call's tenant (the owner without tenants): the
            // manager forest and the teams are per tenant.
            if let Some(owner) = s.member(owner, self.tenant) {
                if scope.contains(ScopeSet::SUBORDINATES)
                    && s.hierarchy().is_at_or_below(user, owner)
                {
                    return Some(Via::Subordinate);
                }
                if scope.contains(ScopeSet::TEAM)
                    && s.user(owner).teams.iter().any(|t| self.teams.contains(t))
                {
                    return Some(Via::Team);
                }
            }
        }
        if scope.contains(ScopeSet::SHARED) && found.flags & HAS_SHARES != 0 {
            let store = s.records();
            let n = found.number;
            if store.is_shared(n, Principal::User(self.person))
                || self
                    .teams
                    .iter()
                    .any(|t| store.is_shared(n, Principal::Team(*t)))
                || self
                    .roles
                    .iter()
                    .any(|r| store.is_shared(n, Principal::Role(*r)))
            {
                return Some(Via::Shared);
            }
        }
        None
    }
}

/// May `user` exercise `perm` on this record? O(1): a table probe, the hierarchy's interval
/// test, and share probes (one per team and role of the user) only for shared records; see
/// [`crate::scope`] for the rules. The user is assumed known and enabled (the permission
/// decision has checked both). For many records, build one [`RecordCheck`].
pub fn check_record(
    snapshot: &Snapshot,
    user: UserIdx,
    perm: PermId,
    record_type: RecordTypeId,
    id: &RecordId,
) -> RecordDecision {
    RecordCheck::new(snapshot, user, perm, record_type).check(id)
}

/// May `user`, holding `perm` (a reassign permission), make `target` the owner of a record?
/// Within their scope only: any user with `all`; themselves or a report at any depth with
/// `subordinates`; themselves or a teammate with `team`; only themselves otherwise (seed 004:
/// one reassigns one's own and one's subordinates' records, to the same people).
pub fn check_assignee(
    snapshot: &Snapshot,
    user: UserIdx,
    perm: PermId,
    target: UserIdx,
) -> Result<(), Refusal> {
    let scope = scope_of(snapshot, user, perm);
    if scope.is_empty() {
        return Err(Refusal::NoPermission);
    }
    // With tenants, the new owner must be a member of the call's tenant (then decided as
    // that member); without, `target` itself.
    let Some(target) = snapshot.member(target, snapshot.user(user).tenant) else {
        return Err(Refusal::OutOfScope);
    };
    let ok = scope.is_all()
        || target == user
        || (scope.contains(ScopeSet::SUBORDINATES)
            && snapshot.hierarchy().is_at_or_below(user, target))
        || (scope.contains(ScopeSet::TEAM) && {
            let mine = &snapshot.user(user).teams;
            snapshot.user(target).teams.iter().any(|t| mine.contains(t))
        });
    if ok {
        Ok(())
    } else {
        Err(Refusal::OutOfScope)
    }
}

//! Record scopes: which records a permission reaches.
//!
//! # Layout
//!
//! - [`ScopeSet`]: a set of scope rules as a bitmask; a record is in scope when any rule
//!   admits it, so a user's effective scope is the union over their roles.
//! - [`PermScopes`]: a role's (or a role combination's) scope per permission, indexed by
//!   [`PermId`]; an empty set means the permission is not granted.
//! - [`split_pattern`]: the `@scope` suffix of a role's permission pattern.
//!
//! # Writing scopes in roles
//!
//! A role's permission pattern may end in `@` and a scope, in the catalogue's roles files and
//! in the snapshot's custom roles alike; without a suffix the scope is `all`, so every existing
//! role file keeps its meaning:
//!
//! ```toml
//! permissions = ["lead.view@subordinates+shared", "lead.update@own+shared", "deal.*@team", "campaign.*"]
//! ```
//!
//! | scope | a record is in scope when |
//! |---|---|
//! | `all` | always (the record need not be known to the snapshot) |
//! | `subordinates` | its owner is the user or one of their reports, at any depth |
//! | `team` | its owner is the user or shares a team with them |
//! | `own` | its owner is the user |
//! | `shared` | it is shared with the user, one of their teams, or one of their roles (seed 002: a role given to several users acts as a team) |
//!
//! Rules combine with `+` (`own+shared` is seed 002's limited sales rep; `subordinates+shared`
//! seed 004's limited access with a hierarchy). `all` combines with nothing. A related object
//! (a note, a task) is in scope when it is, or when its parent record is.
//!
//! One role grants each permission one scope: `["lead.*", "lead.delete@own"]` is an error, not
//! "everything on leads but delete only one's own", because the union would silently make it
//! `all`. Across roles the scopes are united (the widest wins).

use std::fmt;

use crate::perms::PermId;

/// A set of scope rules.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet(u8);

impl ScopeSet {
    /// Not granted.
    pub const NONE: ScopeSet = ScopeSet(0);
    pub const OWN: ScopeSet = ScopeSet(1);
    pub const SHARED: ScopeSet = ScopeSet(2);
    pub const TEAM: ScopeSet = ScopeSet(4);
    pub const SUBORDINATES: ScopeSet = ScopeSet(8);
    pub const ALL: ScopeSet = ScopeSet(16);

    const NAMES: [(&'static str, ScopeSet); 5] = [
        ("all", ScopeSet::ALL),
        ("subordinates", ScopeSet::SUBORDINATES),
        ("team", ScopeSet::TEAM),
        ("own", ScopeSet::OWN),
        ("shared", ScopeSet::SHARED),
    ];

    /// Parse `own`, `subordinates+shared`, … (module docs).
    pub fn parse(s: &str) -> Result<ScopeSet, String> {
        let mut set = ScopeSet::NONE;
        for part in s.split('+') {
            match ScopeSet::NAMES.iter().find(|(n, _)| *n == part) {
                Some((_, bit)) => set.0 |= bit.0,
                None => {
                    return Err(format!(
                        "'{part}' is not a scope (one of: all, subordinates, team, own, shared; \
                         combine with '+')"
                    ))
                }
            }
        }
        if set.contains(ScopeSet::ALL) && set != ScopeSet::ALL {
            return Err(format!(
                "'{s}': 'all' already covers every record; it combines with nothing"
            ));
        }
        Ok(set)
    }

    /// Does this set hold every rule of `other`?
    pub fn contains(self, other: ScopeSet) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Does this set hold any rule of `other`?
    pub fn intersects(self, other: ScopeSet) -> bool {
        self.0 & other.0 != 0
    }

    pub fn is_all(self) -> bool {
        self.0 & ScopeSet::ALL.0 != 0
    }

    pub fn union(self, other: ScopeSet) -> ScopeSet {
        ScopeSet(self.0 | other.0)
    }

    /// The rule names in this set, widest first (`["subordinates", "shared"]`).
    pub fn names(self) -> Vec<&'static str> {
        if self.is_all() {
            return vec!["all"];
        }
        ScopeSet::NAMES
            .iter()
            .filter(|(_, b)| self.0 & b.0 != 0)
            .map(|(n, _)| *n)
            .collect()
    }
}

impl fmt::Display for ScopeSet {
    /// The spelling [`ScopeSet::parse`] reads back (`none` for the empty set).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&self.names().join("+"))
    }
}

impl fmt::Debug for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScopeSet({self})")
    }
}

/// Split a role's permission pattern into the pattern and its scope (`all` without a suffix).
pub fn split_pattern(pattern: &str) -> Result<(&str, ScopeSet), String> {
    match pattern.split_once('@') {
        None => Ok((pattern, ScopeSet::ALL)),
        Some((p, s)) => ScopeSet::parse(s)
            .map(|set| (p, set))
            .map_err(|e| format!("'{pattern}': {e}")),
    }
}

/// A scope per permission, indexed by [`PermId`]. Empty where the permission is not granted.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PermScopes(Box<[ScopeSet]>);

impl PermScopes {
    /// Every permission of a catalogue of `len` permissions not granted.
    pub fn none(len: usize) -> PermScopes {
        PermScopes(vec![ScopeSet::NONE; len].into_boxed_slice())
    }

    /// The scope of `p` (empty: not granted).
    pub fn get(&self, p: PermId) -> ScopeSet {
        self.0.get(p.index()).copied().unwrap_or(ScopeSet::NONE)
    }

    /// Set the scope of `p`, growing the table if needed.
    pub fn set(&mut self, p: PermId, s: ScopeSet) {
        if p.index() >= self.0.len() {
            let mut v = self.0.to_vec();
            v.resize(p.index() + 1, ScopeSet::NONE);
            self.0 = v.into_boxed_slice();
        }
        self.0[p.index()] = s;
    }

    /// Unite with another table (a user holding both roles).
    pub fn union_with(&mut self, other: &PermScopes) {
        if other.0.len() > self.0.len() {
            let mut v = self.0.to_vec();
            v.resize(other.0.len(), ScopeSet::NONE);
            self.0 = v.into_boxed_slice();
        }
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a = a.union(*b);
        }
    }

    /// The granted permissions whose scope is not `all`.
    pub fn limited(&self) -> impl Iterator<Item = (usize, ScopeSet)> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty() && !s.is_all())
            .map(|(i, s)| (i, *s))
    }
}

impl fmt::Debug for PermScopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| !s.is_empty())
                    .map(|(i, s)| (i, *s)),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        for s in [
            "all",
            "own",
            "shared",
            "team",
            "subordinates",
            "own+shared",
            "subordinates+shared",
            "subordinates+team+own+shared",
        ] {
            let set = ScopeSet::parse(s).unwrap();
            assert_eq!(ScopeSet::parse(&set.to_string()), Ok(set), "{s}");
        }
        assert_eq!(
            ScopeSet::parse("shared+own").unwrap().to_string(),
            "own+shared"
        );
        for bad in ["", "mine", "all+own", "own+", "+own", "Own", "own shared"] {
            assert!(ScopeSet::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn patterns_split() {
        assert_eq!(split_pattern("lead.view"), Ok(("lead.view", ScopeSet::ALL)));
        assert_eq!(split_pattern("lead.*@own"), Ok(("lead.*", ScopeSet::OWN)));
        assert_eq!(
            split_pattern("lead.view@own+shared"),
            Ok(("lead.view", ScopeSet::OWN.union(ScopeSet::SHARED)))
        );
        let e = split_pattern("lead.view@everyone").unwrap_err();
        assert!(
            e.contains("lead.view@everyone") && e.contains("not a scope"),
            "{e}"
        );
    }

    #[test]
    fn union_is_the_widest() {
        let mut a = PermScopes::none(3);
        let mut b = PermScopes::none(3);
        let c = crate::catalog::Catalog::builtin().unwrap();
        let p = |i: usize| c.permission(&c.permissions()[i].id).unwrap();
        let (p0, p1) = (p(0), p(1));
        a.set(p0, ScopeSet::OWN);
        b.set(p0, ScopeSet::SUBORDINATES);
        b.set(p1, ScopeSet::ALL);
        a.union_with(&b);
        assert_eq!(a.get(p0), ScopeSet::OWN.union(ScopeSet::SUBORDINATES));
        assert!(a.get(p1).is_all());
        assert_eq!(a.limited().count(), 1);
        assert!(ScopeSet::NONE.is_empty() && !ScopeSet::NONE.contains(ScopeSet::NONE));
    }
}

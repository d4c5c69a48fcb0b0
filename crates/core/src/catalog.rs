//! The permission catalogue and the role presets, compiled into bitsets.
//!
//! Permissions are interned once, when the catalogue is built: a [`PermId`] is an index and a
//! [`PermSet`] a fixed-size bitset, so "does this user hold this permission" is one AND on the
//! request path. The catalogue ships as TOML in `config/catalog/` (embedded in the binary as the
//! default); a config may name other files.
//!
//! A role's permission pattern may carry a record scope (`"lead.view@own+shared"`, see
//! [`crate::scope`]); without one the scope is `all`. The catalogue also carries the config's
//! record types ([`RecordTypes`]), because the snapshot's records are validated against them
//! when the snapshot is built against the catalogue.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use crate::error::{line_of, ConfigError};
use crate::ids::RecordTypes;
pub use crate::perms::{is_valid_role_id, PermId, PermSet, MAX_PERMISSIONS};
use crate::scope::{split_pattern, PermScopes, ScopeSet};

/// The built-in catalogue files, embedded so `permgate demo` and a config without a `[catalog]`
/// section work from any directory.
pub const BUILTIN_PERMISSION_FILES: &[(&str, &str)] = &[
    (
        "config/catalog/sonar.toml",
        include_str!("../../../config/catalog/sonar.toml"),
    ),
    (
        "config/catalog/records.toml",
        include_str!("../../../config/catalog/records.toml"),
    ),
];
pub const BUILTIN_ROLE_FILES: &[(&str, &str)] = &[(
    "config/catalog/roles.toml",
    include_str!("../../../config/catalog/roles.toml"),
)];

/// One permission of the catalogue.
#[derive(Debug, Clone)]
pub struct Permission {
    pub id: String,
    pub group: String,
    pub name: String,
    pub description: String,
}

/// A role: a named set of permissions.
#[derive(Debug, Clone)]
pub struct Role {
    pub id: String,
    pub name: String,
    pub description: String,
    pub permissions: PermSet,
    /// The record scope of each permission (`all` unless the pattern said otherwise); empty
    /// exactly where `permissions` lacks the permission.
    pub scopes: PermScopes,
}

/// Permission patterns expanded with their scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopedPermissions {
    pub permissions: PermSet,
    pub scopes: PermScopes,
}

/// The compiled catalogue: permissions and preset roles.
#[derive(Debug, Clone)]
pub struct Catalog {
    permissions: Vec<Permission>,
    /// Each permission's id again, shared: a denial names it without copying it.
    shared_names: Vec<Arc<str>>,
    by_id: HashMap<String, PermId>,
    roles: Vec<Role>,
    record_types: RecordTypes,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPermissionFile {
    #[serde(default)]
    permission: Vec<Spanned<RawPermission>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPermission {
    id: String,
    group: String,
    name: String,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoleFile {
    #[serde(default)]
    role: Vec<Spanned<RawRole>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    id: String,
    name: String,
    #[serde(default)]
    description: String,
    permissions: Vec<String>,
}

/// Is `s` a valid dotted id (`campaign.delete`): lowercase words of `[a-z0-9_]` joined by dots.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

impl Catalog {
    /// Build from permission files and role files, given as `(label, text)`.
    /// Every problem is reported, each with its file and line; nothing is half-built.
    pub fn build(
        permission_files: &[(String, String)],
        role_files: &[(String, String)],
    ) -> Result<Catalog, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut catalog = Catalog {
            permissions: Vec::new(),
            shared_names: Vec::new(),
            by_id: HashMap::new(),
            roles: Vec::new(),
            record_types: RecordTypes::default(),
        };
        for (file, text) in permission_files {
            let raw: RawPermissionFile = match toml::from_str(text) {
                Ok(r) => r,
                Err(e) => {
                    errors.push(ConfigError::from_toml(file, text, &e));
                    continue;
                }
            };
            for entry in raw.permission {
                let line = line_of(text, entry.span().start);
                let p = entry.into_inner();
                let at = |field: &str, message: String| ConfigError {
                    file: file.clone(),
                    line: Some(line),
                    field: format!("permission.{field}"),
                    message,
                };
                if !is_valid_id(&p.id) {
                    errors.push(at("id", format!("'{}' is not a dotted lowercase id", p.id)));
                    continue;
                }
                if catalog.by_id.contains_key(&p.id) {
                    errors.push(at("id", format!("permission '{}' is defined twice", p.id)));
                    continue;
                }
                if catalog.permissions.len() >= MAX_PERMISSIONS {
                    errors.push(at(
                        "id",
                        format!("more than {MAX_PERMISSIONS} permissions in the catalogue"),
                    ));
                    continue;
                }
                let id = PermId(catalog.permissions.len() as u16);
                catalog.by_id.insert(p.id.clone(), id);
                catalog.shared_names.push(Arc::from(p.id.as_str()));
                catalog.permissions.push(Permission {
                    id: p.id,
                    group: p.group,
                    name: p.name,
                    description: p.description,
                });
            }
        }
        for (file, text) in role_files {
            let raw: RawRoleFile = match toml::from_str(text) {
                Ok(r) => r,
                Err(e) => {
                    errors.push(ConfigError::from_toml(file, text, &e));
                    continue;
                }
            };
            for entry in raw.role {
                let line = line_of(text, entry.span().start);
                let r = entry.into_inner();
                let at = |field: &str, message: String| ConfigError {
                    file: file.clone(),
                    line: Some(line),
                    field: format!("role.{field}"),
                    message,
                };
                if !is_valid_role_id(&r.id) {
                    errors.push(at("id", format!("'{}' is not a valid role id", r.id)));
                    continue;
                }
                if catalog.role(&r.id).is_some() {
                    errors.push(at("id", format!("role '{}' is defined twice", r.id)));
                    continue;
                }
                match catalog.expand_scoped(&r.permissions) {
                    Ok(g) => catalog.roles.push(Role {
                        id: r.id,
                        name: r.name,
                        description: r.description,
                        permissions: g.permissions,
                        scopes: g.scopes,
                    }),
                    Err(e) => errors.push(at("permissions", format!("role '{}': {e}", r.id))),
                }
            }
        }
        if errors.is_empty() {
            Ok(catalog)
        } else {
            Err(errors)
        }
    }

    /// The built-in catalogue (`config/catalog/`, embedded).
    pub fn builtin() -> Result<Catalog, Vec<ConfigError>> {
        let own = |files: &[(&str, &str)]| {
            files
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        Catalog::build(&own(BUILTIN_PERMISSION_FILES), &own(BUILTIN_ROLE_FILES))
    }

    /// Expand permission patterns: `*` (every permission), `group.*` (a whole group) or an
    /// exact id. An unknown id, or a pattern that matches nothing, is an error. Patterns here
    /// carry no scope (roles use [`Catalog::expand_scoped`]).
    pub fn expand<S: AsRef<str>>(&self, patterns: &[S]) -> Result<PermSet, String> {
        if let Some(p) = patterns.iter().find(|p| p.as_ref().contains('@')) {
            return Err(format!(
                "'{}': a scope suffix is allowed in role permissions only",
                p.as_ref()
            ));
        }
        self.expand_scoped(patterns).map(|g| g.permissions)
    }

    /// Expand a role's permission patterns, each with an optional `@scope` suffix
    /// ([`crate::scope`]). One role grants each permission one scope: two patterns that reach
    /// the same permission with different scopes are an error naming both.
    pub fn expand_scoped<S: AsRef<str>>(
        &self,
        patterns: &[S],
    ) -> Result<ScopedPermissions, String> {
        self.expand_scoped_at(patterns).map_err(|(_, e)| e)
    }

    /// [`Catalog::expand_scoped`], the error with the index of the pattern it is about (of two
    /// patterns in conflict, the later one).
    pub fn expand_scoped_at<S: AsRef<str>>(
        &self,
        patterns: &[S],
    ) -> Result<ScopedPermissions, (usize, String)> {
        let mut out = ScopedPermissions {
            permissions: PermSet::default(),
            scopes: PermScopes::none(self.permissions.len()),
        };
        // The pattern that first granted each permission, for conflict messages.
        let mut origin: Vec<Option<usize>> = vec![None; self.permissions.len()];
        for (k, full) in patterns.iter().enumerate() {
            let full = full.as_ref();
            let (pattern, scope) = split_pattern(full).map_err(|e| (k, e))?;
            let matched: Vec<PermId> = if pattern == "*" {
                (0..self.permissions.len())
                    .map(|i| PermId(i as u16))
                    .collect()
            } else if let Some(group) = pattern.strip_suffix(".*") {
                let m: Vec<PermId> = self
                    .permissions
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.group == group)
                    .map(|(i, _)| PermId(i as u16))
                    .collect();
                if m.is_empty() {
                    return Err((k, format!("no permission group '{group}' in the catalogue")));
                }
                m
            } else {
                match self.by_id.get(pattern) {
                    Some(id) => vec![*id],
                    None => return Err((k, format!("unknown permission '{pattern}'"))),
                }
            };
            for p in matched {
                let before = out.scopes.get(p);
                if !before.is_empty() && before != scope {
                    let first = origin[p.index()]
                        .and_then(|o| patterns.get(o))
                        .map(|o| o.as_ref().to_string())
                        .unwrap_or_default();
                    return Err((
                        k,
                        format!(
                            "'{full}' and '{first}' both grant '{}', with scopes '{scope}' and \
                             '{before}'; a role grants each permission one scope",
                            self.permission_name(p)
                        ),
                    ));
                }
                out.permissions.insert(p);
                out.scopes.set(p, scope);
                if origin[p.index()].is_none() {
                    origin[p.index()] = Some(k);
                }
            }
        }
        Ok(out)
    }

    /// The record types the config declares (`[[record_type]]`); empty by default.
    pub fn record_types(&self) -> &RecordTypes {
        &self.record_types
    }

    /// Attach the config's record types (the config does this once, after validating them).
    pub fn set_record_types(&mut self, types: RecordTypes) {
        self.record_types = types;
    }

    /// The scope per permission of a preset role, or `None` for an unknown role.
    pub fn role_scope(&self, role: &str, p: PermId) -> Option<ScopeSet> {
        self.role(role).map(|r| r.scopes.get(p))
    }

    pub fn permission(&self, id: &str) -> Option<PermId> {
        self.by_id.get(id).copied()
    }

    pub fn permission_info(&self, id: PermId) -> &Permission {
        &self.permissions[id.index()]
    }

    /// The dotted id of an interned permission.
    pub fn permission_name(&self, id: PermId) -> &str {
        &self.permissions[id.index()].id
    }

    /// The same id, shared (a clone is a reference count, not a copy).
    pub fn permission_shared(&self, id: PermId) -> Arc<str> {
        self.shared_names[id.index()].clone()
    }

    pub fn permissions(&self) -> &[Permission] {
        &self.permissions
    }

    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    pub fn role(&self, id: &str) -> Option<&Role> {
        self.roles.iter().find(|r| r.id == id)
    }

    /// The permission ids of a set, in catalogue order.
    pub fn names(&self, set: &PermSet) -> Vec<&str> {
        set.iter().map(|p| self.permission_name(p)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin() -> Catalog {
        Catalog::builtin().expect("the built-in catalogue is valid")
    }

    #[test]
    fn sonar_catalogue_has_the_56_permissions_of_the_seed() {
        let c = builtin();
        let sonar: Vec<_> = c
            .permissions()
            .iter()
            .filter(|p| {
                [
                    "company",
                    "customer",
                    "message",
                    "canned_response",
                    "follow_up",
                    "campaign",
                ]
                .contains(&p.group.as_str())
            })
            .collect();
        assert_eq!(sonar.len(), 56);
        let count = |g: &str| sonar.iter().filter(|p| p.group == g).count();
        assert_eq!(
            [
                count("company"),
                count("customer"),
                count("message"),
                count("canned_response"),
                count("follow_up"),
                count("campaign")
            ],
            [22, 13, 8, 4, 3, 6]
        );
        for id in [
            "campaign.delete",
            "customer.edit_phone_number",
            "company.manage_billing",
        ] {
            assert!(c.permission(id).is_some(), "{id}");
        }
    }

    #[test]
    fn sales_manager_is_exactly_seed_000() {
        let c = builtin();
        let sm = c.role("sales_manager").expect("preset");
        let has = |id: &str| sm.permissions.contains(c.permission(id).unwrap());
        for group in ["customer", "message", "canned_response", "follow_up"] {
            for p in c.permissions().iter().filter(|p| p.group == group) {
                assert!(has(&p.id), "sales manager lacks {}", p.id);
            }
        }
        for p in c.permissions().iter().filter(|p| p.group == "campaign") {
            assert_eq!(has(&p.id), p.id != "campaign.delete", "{}", p.id);
        }
        let company: Vec<_> = c
            .permissions()
            .iter()
            .filter(|p| p.group == "company" && has(&p.id))
            .map(|p| p.id.as_str())
            .collect();
        let mut expected = vec![
            "company.invite_users",
            "company.manage_properties",
            "company.manage_tags",
            "company.manage_roles_permissions",
            "company.view_all_threads",
            "company.search",
            "company.manage_billing",
        ];
        let mut got = company.clone();
        got.sort();
        expected.sort();
        assert_eq!(got, expected);
    }

    #[test]
    fn presets_exist_and_admin_holds_everything() {
        let c = builtin();
        for r in [
            "admin",
            "member",
            "sales_manager",
            "sales_rep",
            "customer_service_rep",
            "marketing_manager",
            "data_analyst",
        ] {
            assert!(c.role(r).is_some(), "{r}");
        }
        assert_eq!(
            c.role("admin").unwrap().permissions.len(),
            c.permissions().len()
        );
        let rep = c.role("sales_rep").unwrap();
        assert!(!rep
            .permissions
            .contains(c.permission("campaign.delete").unwrap()));
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let perms = (
            "p.toml".to_string(),
            "[[permission]]\nid = \"a.b\"\ngroup = \"a\"\nname = \"B\"\n\n[[permission]]\nid = \"a.b\"\ngroup = \"a\"\nname = \"B2\"\n".to_string(),
        );
        let roles = (
            "r.toml".to_string(),
            "[[role]]\nid = \"x\"\nname = \"X\"\npermissions = [\"a.c\"]\n".to_string(),
        );
        let errs = Catalog::build(&[perms], &[roles]).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].line, Some(6));
        assert!(errs[0].to_string().contains("p.toml:6"), "{}", errs[0]);
        assert!(errs[1].to_string().contains("unknown permission 'a.c'"));
        let bad = Catalog::build(
            &[(
                "p.toml".into(),
                "[[permission]]\nid = \"a.b\"\ngroup = \"a\"\nnam = \"B\"\n".into(),
            )],
            &[],
        )
        .unwrap_err();
        assert!(bad[0].to_string().contains("p.toml:"), "{}", bad[0]);
    }

    #[test]
    fn scoped_patterns() {
        let c = builtin();
        let view = c.permission("lead.view").unwrap();
        let del = c.permission("lead.delete").unwrap();
        let g = c
            .expand_scoped(&[
                "lead.view@own+shared",
                "lead.delete@subordinates",
                "campaign.*",
            ])
            .unwrap();
        assert_eq!(g.scopes.get(view), ScopeSet::OWN.union(ScopeSet::SHARED));
        assert_eq!(g.scopes.get(del), ScopeSet::SUBORDINATES);
        assert!(g
            .scopes
            .get(c.permission("campaign.delete").unwrap())
            .is_all());
        assert!(g
            .scopes
            .get(c.permission("lead.update").unwrap())
            .is_empty());
        assert!(g.permissions.contains(view) && g.permissions.contains(del));
        // Overlapping patterns with the same scope are fine; different scopes are an error.
        assert!(c.expand_scoped(&["lead.*@own", "lead.view@own"]).is_ok());
        let e = c.expand_scoped(&["lead.*", "lead.delete@own"]).unwrap_err();
        assert!(
            e.contains("'lead.delete@own' and 'lead.*'") && e.contains("one scope"),
            "{e}"
        );
        assert_eq!(
            c.expand_scoped_at(&["lead.*", "lead.delete@own"])
                .map(|_| ())
                .map_err(|(k, _)| k),
            Err(1)
        );
        assert!(c.expand_scoped(&["lead.view@mine"]).is_err());
        assert!(c.expand_scoped(&["lead.nope@own"]).is_err());
        // The error names the pattern it is about.
        assert_eq!(
            c.expand_scoped_at(&["lead.view", "x.y", "lead.*"])
                .map(|_| ())
                .unwrap_err(),
            (1, "unknown permission 'x.y'".to_string())
        );
        // Plain expansion refuses scopes (it has nowhere to keep them).
        assert!(c.expand(&["lead.view@own"]).is_err());
        // Every preset keeps scope `all` on everything it grants.
        for r in c.roles() {
            for p in r.permissions.iter() {
                assert!(
                    r.scopes.get(p).is_all(),
                    "{} {}",
                    r.id,
                    c.permission_name(p)
                );
            }
            assert_eq!(r.scopes.limited().count(), 0);
        }
    }

    #[test]
    fn scoped_role_file_errors_are_located() {
        let roles = (
            "r.toml".to_string(),
            "[[role]]\nid = \"x\"\nname = \"X\"\npermissions = [\"lead.view@own\"]\n\n[[role]]\nid = \"y\"\nname = \"Y\"\npermissions = [\"lead.*\", \"lead.view@own\"]\n".to_string(),
        );
        let own = |files: &[(&str, &str)]| {
            files
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        let errs = Catalog::build(&own(BUILTIN_PERMISSION_FILES), &[roles]).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0]
                .to_string()
                .starts_with("r.toml:6: role.permissions: role 'y'"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn patterns_expand() {
        let c = builtin();
        let all = c.expand(&["*"]).unwrap();
        assert_eq!(all.len(), c.permissions().len());
        let campaign = c.expand(&["campaign.*"]).unwrap();
        assert_eq!(campaign.len(), 6);
        assert!(c.expand(&["nope.*"]).is_err());
        assert!(c.expand(&["campaign.nope"]).is_err());
    }
}

//! One user of a snapshot text written as the generators write it (the database source,
//! `snapshot export`, a replayed source form: [`super::RawUser`]'s fields in their order, no
//! whitespace, strings without escapes), read at a glance into the form serde would make of
//! it. Anything else (another order, whitespace, an escape, a `null`, a number, a duplicate or
//! unknown key) is `None`, and serde reads that user and judges it. So this path accepts only
//! users serde accepts, with the same result; it exists because serde spent ~2,000–3,000
//! instructions per user (a million at the scale target), this ~300.

use std::borrow::Cow;

use super::{Few, MembershipForm, Name, UserForm};

struct At<'t> {
    s: &'t str,
    i: usize,
}

impl<'t> At<'t> {
    fn lit(&mut self, l: &[u8]) -> Option<()> {
        let end = self.i.checked_add(l.len())?;
        (self.s.as_bytes().get(self.i..end)? == l).then(|| self.i = end)
    }

    /// A string without escapes or control characters (serde refuses those raw; it decodes
    /// the escapes), the opening quote at the cursor.
    fn plain(&mut self) -> Option<Name<'t>> {
        let b = self.s.as_bytes();
        if b.get(self.i) != Some(&b'"') {
            return None;
        }
        let start = self.i + 1;
        let n = b
            .get(start..)?
            .iter()
            .position(|c| *c == b'"' || *c == b'\\' || *c < 0x20)?;
        if b.get(start + n) != Some(&b'"') {
            return None;
        }
        self.i = start + n + 1;
        Some(Name(Cow::Borrowed(self.s.get(start..start + n)?)))
    }

    /// `[]` or `["a","b"]`.
    fn list(&mut self) -> Option<Few<Name<'t>>> {
        self.lit(b"[")?;
        let mut out = Few::new();
        if self.lit(b"]").is_some() {
            return Some(out);
        }
        loop {
            out.push(self.plain()?);
            if self.lit(b",").is_none() {
                self.lit(b"]")?;
                return Some(out);
            }
        }
    }

    /// `{"tenant":"o1","roles":[..]}` with `teams` and `manager` optional, in that order.
    fn membership(&mut self) -> Option<MembershipForm<'t>> {
        self.lit(b"{\"tenant\":")?;
        let tenant = self.plain()?;
        self.lit(b",\"roles\":")?;
        let roles = self.list()?;
        let mut m = MembershipForm {
            tenant,
            roles,
            teams: Few::new(),
            manager: None,
        };
        if self.lit(b",\"teams\":").is_some() {
            m.teams = self.list()?;
        }
        if self.lit(b",\"manager\":").is_some() {
            m.manager = Some(self.plain()?);
        }
        self.lit(b"}")?;
        Some(m)
    }
}

/// The user whose `{` is at `at`, and the offset past its `}`; `None`: not in this form.
pub(super) fn user(s: &str, at: usize) -> Option<(UserForm<'_>, usize)> {
    let mut a = At { s, i: at };
    a.lit(b"{\"id\":")?;
    let mut u = UserForm {
        id: a.plain()?,
        name: None,
        _email: None,
        roles: None,
        teams: Few::new(),
        manager: None,
        api_keys: Vec::new(),
        disabled: false,
        memberships: None,
    };
    if a.lit(b",\"name\":").is_some() {
        u.name = Some(a.plain()?);
    }
    if a.lit(b",\"email\":").is_some() {
        u._email = Some(a.plain()?);
    }
    if a.lit(b",\"roles\":").is_some() {
        u.roles = Some(a.list()?);
    }
    if a.lit(b",\"teams\":").is_some() {
        u.teams = a.list()?;
    }
    if a.lit(b",\"manager\":").is_some() {
        u.manager = Some(a.plain()?);
    }
    if a.lit(b",\"api_keys\":").is_some() {
        u.api_keys = a.list()?.into_vec();
    }
    if a.lit(b",\"disabled\":").is_some() {
        u.disabled = match a.lit(b"true") {
            Some(()) => true,
            None => a.lit(b"false").map(|()| false)?,
        };
    }
    if a.lit(b",\"memberships\":").is_some() {
        a.lit(b"[")?;
        let mut ms = Few::new();
        if a.lit(b"]").is_none() {
            loop {
                ms.push(a.membership()?);
                if a.lit(b",").is_none() {
                    a.lit(b"]")?;
                    break;
                }
            }
        }
        u.memberships = Some(ms);
    }
    a.lit(b"}")?;
    Some((u, a.i))
}

#[cfg(test)]
mod tests {
    use super::super::{Chunks, UserForm};
    use super::user;

    /// Everything a user form holds, written out (the form has no `PartialEq`).
    fn shown(u: &UserForm<'_>) -> String {
        let names = |v: &[super::Name<'_>]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let ms = u.memberships.as_ref().map(|ms| {
            ms.iter()
                .map(|m| {
                    format!(
                        "{}|{:?}|{:?}|{:?}",
                        m.tenant,
                        names(&m.roles),
                        names(&m.teams),
                        m.manager.as_ref().map(|n| n.to_string())
                    )
                })
                .collect::<Vec<_>>()
        });
        format!(
            "{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{}|{:?}",
            u.id,
            u.name.as_ref().map(|n| n.to_string()),
            u._email.as_ref().map(|n| n.to_string()),
            u.roles.as_ref().map(|r| names(r)),
            names(&u.teams),
            u.manager.as_ref().map(|n| n.to_string()),
            names(&u.api_keys),
            u.disabled,
            ms
        )
    }

    #[test]
    fn a_user_it_reads_is_what_serde_reads() {
        let read = [
            r#"{"id":"u1"}"#,
            r#"{"id":"u1","roles":[]}"#,
            r#"{"id":"u1","roles":["a","b"],"teams":["t1"],"manager":"u0"}"#,
            r#"{"id":"u-é","name":"Zoë Ünal","email":"z@x","roles":["a"],"teams":["t1","t2"],"manager":"u0","api_keys":["sha256:00"],"disabled":true}"#,
            r#"{"id":"u1","disabled":false}"#,
            r#"{"id":"u1","roles":[],"memberships":[]}"#,
            r#"{"id":"u1","roles":[],"memberships":[{"tenant":"o1","roles":["a"]},{"tenant":"o2","roles":[],"teams":["t"],"manager":"m"}]}"#,
            r#"{"id":"u1","memberships":[{"tenant":"o1","roles":["a"],"manager":"m"}]}"#,
        ];
        for text in read {
            let (fast, end) = user(text, 0).unwrap_or_else(|| panic!("not read: {text}"));
            assert_eq!(end, text.len(), "{text}");
            let slow: UserForm<'_> = serde_json::from_str(text).unwrap();
            assert_eq!(shown(&fast), shown(&slow), "{text}");
        }
    }

    #[test]
    fn anything_else_is_left_to_serde() {
        let left = [
            r#"{ "id":"u1"}"#,
            r#"{"id":"u1" }"#,
            r#"{"id":"u\u0031"}"#,
            r#"{"id":"a\"b"}"#,
            "{\"id\":\"a\tb\"}",
            r#"{"id":1}"#,
            r#"{"id":"u1","name":null}"#,
            r#"{"id":"u1","manager":"m","roles":["a"]}"#,
            r#"{"id":"u1","name":"a","name":"b"}"#,
            r#"{"id":"u1","extra":1}"#,
            r#"{"id":"u1","disabled":1}"#,
            r#"{"id":"u1","disabled":truex}"#,
            r#"{"id":"u1","roles":["a",]}"#,
            r#"{"id":"u1","roles":["a" ,"b"]}"#,
            r#"{"id":"u1","memberships":[{"tenant":"o1"}]}"#,
            r#"{"id":"u1","memberships":[{"roles":[],"tenant":"o1"}]}"#,
            r#"{"id":"u1","memberships":[{"tenant":"o1","roles":[],"x":1}]}"#,
            r#"{"name":"x","id":"u1"}"#,
            r#"{"id":"u1""#,
            r#"{"id":"u1"#,
            "",
        ];
        for text in left {
            assert!(user(text, 0).is_none(), "read: {text}");
        }
    }

    #[test]
    fn users_past_a_chunk_are_all_kept_in_order() {
        let n = (1 << super::super::CHUNK_SHIFT) + 3;
        let text = format!(
            "[{}]",
            (0..n)
                .map(|i| format!(r#"{{"id":"u{i}"}}"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        let c: Chunks<UserForm<'_>> = serde_json::from_str(&text).unwrap();
        assert_eq!(c.len(), n);
        assert_eq!(c.iter().count(), n);
        assert_eq!(
            c.get(n - 1).map(|u| u.id.to_string()),
            Some(format!("u{}", n - 1))
        );
        assert!(c.get(n).is_none());
    }
}

#[cfg(test)]
mod same_snapshot {
    use crate::catalog::Catalog;
    use crate::snapshot::{RawSnapshot, Snapshot};

    /// A snapshot written compactly (read by [`super::user`]) and pretty (read by serde)
    /// builds the same users, memberships and managers.
    #[test]
    fn compact_and_pretty_texts_build_the_same_snapshot() {
        let source = r#"{"roles": [{"id": "r1", "permissions": ["lead.view"]}],
            "tenants": [{"id": "o1"}, {"id": "o2"}],
            "users": [
              {"id": "boss", "name": "B \"the\" Boss", "memberships": [
                 {"tenant": "o1", "roles": ["r1"], "teams": ["t1"]},
                 {"tenant": "o2", "roles": []}]},
              {"id": "rep", "email": "r@x", "disabled": true, "memberships": [
                 {"tenant": "o1", "roles": ["r1", "sales_rep"], "teams": ["t1", "t2"], "manager": "boss"}]},
              {"id": "anne", "name": "Ann\u00e9e", "api_keys": ["sha256:0000000000000000000000000000000000000000000000000000000000000001"],
               "memberships": [{"tenant": "o2", "roles": ["r1"], "manager": "boss"}]}
            ]}"#;
        let c = Catalog::builtin().unwrap();
        let raw: RawSnapshot = serde_json::from_str(source).unwrap();
        let compact = Snapshot::build("c.json", &raw.to_json(), &c).unwrap();
        let pretty =
            Snapshot::build("p.json", &serde_json::to_string_pretty(&raw).unwrap(), &c).unwrap();
        let seen = |s: &Snapshot| {
            let mut out = Vec::new();
            for id in ["boss", "rep", "anne"] {
                let p = s.user_index(id).unwrap();
                let u = s.user(p);
                out.push(format!(
                    "{id} {:?} {} {}",
                    u.name,
                    u.disabled,
                    u.api_keys.len()
                ));
                for t in ["o1", "o2"] {
                    let Some(m) = s.tenant_index(t).and_then(|t| s.member(p, t)) else {
                        out.push(format!("{id}@{t}: none"));
                        continue;
                    };
                    let mu = s.user(m);
                    let teams: Vec<&str> = mu.teams.iter().map(|t| s.team_name(*t)).collect();
                    out.push(format!(
                        "{id}@{t}: {} {:?} {:?}",
                        s.grant(mu).roles_header,
                        teams,
                        mu.manager.map(|m| s.user(m).id.to_string())
                    ));
                }
            }
            out
        };
        assert_eq!(seen(&compact), seen(&pretty));
        assert_eq!(seen(&compact).len(), 9);
        assert!(
            seen(&compact)
                .contains(&"rep@o1: sales_rep,r1 [\"t1\", \"t2\"] Some(\"boss\")".to_string())
                || seen(&compact)
                    .iter()
                    .any(|l| l.starts_with("rep@o1:") && l.contains("Some(\"boss\")"))
        );
    }
}

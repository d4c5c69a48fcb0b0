//! `permgate-bench snapshot`: the snapshot at scale, in this process (no network). Generates a
//! snapshot of N users (a 10-ary manager tree, 1 000 teams) and M leads with owners (1% shared
//! with a team, one note per 10 leads), then reports: the build time (median of `--runs`),
//! resident bytes per record entry, the time to apply batches of incremental changes to it
//! (each batch on the version the previous one produced), and a record check's cost on the
//! changed version. With `--tenants N` every user is a member of one of N tenants (their
//! roles, team and manager in that tenant: a 10-ary tree per tenant) and every lead belongs to
//! its owner's tenant; a record check then runs as the owner-tenant member of the caller.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use clap::Args;
use permgate::access::{check_record, UnknownRecord};
use permgate::catalog::Catalog;
use permgate::changes::Change;
use permgate::ids::{canonical_id, IdKind, RecordTypeSpec, RecordTypes};
use permgate::snapshot::Snapshot;

use crate::procstat;

#[derive(Args, Clone)]
pub struct SnapshotArgs {
    #[arg(long, default_value_t = 1_000_000)]
    users: usize,
    /// Record ownership entries (leads).
    #[arg(long, default_value_t = 10_000_000)]
    records: usize,
    /// Builds timed (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Batches applied, one after another.
    #[arg(long, default_value_t = 10)]
    batches: usize,
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Tenants (0: a snapshot without tenants). Users are spread over them round-robin.
    #[arg(long, default_value_t = 0)]
    tenants: usize,
}

fn catalog() -> Result<Catalog, String> {
    let none: Vec<String> = vec![];
    let parents = vec!["lead".to_string()];
    let (types, errs) = RecordTypes::build(&[
        RecordTypeSpec {
            name: "lead",
            id_kind: IdKind::Integer,
            parents: &none,
        },
        RecordTypeSpec {
            name: "note",
            id_kind: IdKind::Integer,
            parents: &parents,
        },
    ]);
    if !errs.is_empty() {
        return Err(format!("record types: {errs:?}"));
    }
    let mut c = Catalog::builtin().map_err(|e| format!("{e:?}"))?;
    c.set_record_types(types);
    Ok(c)
}

/// The snapshot text (the same shape as the records module's scale test).
fn generate(users: usize, records: usize, tenants: usize) -> String {
    let mut t = String::with_capacity(records * 60 + users * 90);
    t.push_str(r#"{"roles":[{"id":"rep_limited","permissions":["lead.view@subordinates+shared","lead.reassign@subordinates"]},{"id":"rep_team","permissions":["lead.view@team+shared"]}],"#);
    if tenants > 0 {
        t.push_str(r#""tenants":["#);
        for k in 0..tenants {
            if k > 0 {
                t.push(',');
            }
            let _ = write!(t, r#"{{"id":"o{k}"}}"#);
        }
        t.push_str("],");
    }
    t.push_str(r#""users":["#);
    for u in 0..users {
        if u > 0 {
            t.push(',');
        }
        if tenants > 0 {
            // The k-th member of tenant u % tenants; its manager the ((k - 1) / 10)-th.
            let (org, k) = (u % tenants, u / tenants);
            let _ = write!(
                t,
                r#"{{"id":"u{u}","memberships":[{{"tenant":"o{org}","roles":["rep_limited"],"teams":["t{}"]"#,
                u % 1000
            );
            if k > 0 {
                let _ = write!(t, r#","manager":"u{}""#, ((k - 1) / 10) * tenants + org);
            }
            t.push_str("}]}");
            continue;
        }
        let _ = write!(
            t,
            r#"{{"id":"u{u}","roles":["rep_limited"],"teams":["t{}"]"#,
            u % 1000
        );
        if u > 0 {
            let _ = write!(t, r#","manager":"u{}""#, (u - 1) / 10);
        }
        t.push('}');
    }
    t.push_str(r#"],"records":{"owners":["#);
    for i in 0..records {
        if i > 0 {
            t.push(',');
        }
        let owner = (i * 7919) % users;
        let _ = write!(t, r#"{{"type":"lead","id":"{i}","owner":"u{owner}""#);
        if tenants > 0 {
            let _ = write!(t, r#","tenant":"o{}""#, owner % tenants);
        }
        t.push('}');
    }
    t.push_str(r#"],"shares":["#);
    for i in (0..records).step_by(100) {
        if i > 0 {
            t.push(',');
        }
        let _ = write!(t, r#"{{"type":"lead","id":"{i}","team":"t{}"}}"#, i % 1000);
    }
    t.push_str(r#"],"related":["#);
    for i in (0..records).step_by(10) {
        if i > 0 {
            t.push(',');
        }
        let _ = write!(
            t,
            r#"{{"type":"note","id":"{i}","parent_type":"lead","parent_id":"{i}"}}"#
        );
    }
    t.push_str("]}}");
    t
}

/// A batch of `n` mixed changes (roles, managers, teams, disable/enable, new users, owners,
/// shares), different for each `round`; `managers: false` leaves the hierarchy alone.
fn batch(round: usize, n: usize, users: usize, records: usize, managers: bool) -> Vec<Change> {
    let mut rng = fastrand::Rng::with_seed(round as u64 + 7);
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        let user = format!("u{}", rng.usize(1..users));
        let lead = rng.usize(0..records).to_string();
        let change = match k % 10 {
            0 | 1 => format!(r#"{{"op":"set_roles","user":"{user}","roles":["rep_team"]}}"#),
            2 if managers => {
                // A new manager above the user in the tree (an ancestor's sibling subtree
                // would do too; an ancestor keeps it a forest).
                let u: usize = user[1..].parse().unwrap_or(1);
                let m = (u - 1) / 100;
                format!(r#"{{"op":"set_manager","user":"{user}","manager":"u{m}"}}"#)
            }
            2 | 3 => format!(
                r#"{{"op":"set_teams","user":"{user}","teams":["t{}","t{}"]}}"#,
                rng.usize(0..1000),
                rng.usize(0..1000)
            ),
            4 => format!(r#"{{"op":"disable","user":"{user}"}}"#),
            5 => format!(
                r#"{{"op":"upsert_user","user":{{"id":"new-{round}-{k}","roles":["rep_limited"],"teams":["t1"],"manager":"{user}"}}}}"#
            ),
            6..=8 => {
                format!(r#"{{"op":"set_owner","type":"lead","id":"{lead}","owner":"{user}"}}"#)
            }
            _ => format!(r#"{{"op":"share","type":"lead","id":"{lead}","user":"{user}"}}"#),
        };
        out.push(serde_json::from_str(&change).expect("a valid change"));
    }
    out
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

pub fn run(a: SnapshotArgs) -> Result<(), String> {
    let me = std::process::id();
    let c = catalog()?;
    let rss0 = procstat::rss(me).unwrap_or(0);
    let t0 = Instant::now();
    let text = generate(a.users, a.records, a.tenants);
    println!(
        "generated {} users{}, {} leads (+{} notes, {} shares): {:.0} MB of JSON in {:.1} s",
        a.users,
        if a.tenants > 0 {
            format!(" in {} tenants (one membership each)", a.tenants)
        } else {
            String::new()
        },
        a.records,
        a.records.div_ceil(10),
        a.records.div_ceil(100),
        text.len() as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    let mut builds = Vec::new();
    let mut snapshot = None;
    for _ in 0..a.runs.max(1) {
        drop(snapshot.take());
        let t = Instant::now();
        let s = Snapshot::build("scale.json", &text, &c).map_err(|e| format!("{:?}", &e[..1]))?;
        builds.push(t.elapsed());
        snapshot = Some(s);
    }
    let Some(mut s) = snapshot else {
        return Err("no build".into());
    };
    let peak = procstat::peak_rss(me).unwrap_or(0);
    drop(text);
    let rss1 = procstat::rss(me).unwrap_or(0);
    let st = s.records().stats();
    let mut sorted = builds.clone();
    sorted.sort();
    println!(
        "build: median {:.2} s (runs: {})",
        median(builds).as_secs_f64(),
        sorted
            .iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "resident: {:.1} B per record entry for the whole snapshot ({:.0} MB RSS growth: users, \
         hierarchy and records, the JSON text dropped; {} record entries); record tables alone \
         {:.1} B per record; peak RSS while building {:.0} MB",
        (rss1.saturating_sub(rss0)) as f64 / st.records as f64,
        (rss1.saturating_sub(rss0)) as f64 / 1e6,
        st.records,
        st.heap_bytes as f64 / st.records as f64,
        peak as f64 / 1e6
    );

    // The batches name no tenant: on a tenant snapshot they would be refused.
    let batch_kinds: &[bool] = if a.tenants > 0 {
        println!("apply batches: not run with --tenants (the batches name no tenant)");
        &[]
    } else {
        &[true, false]
    };
    for &managers in batch_kinds {
        let mut times = Vec::new();
        for round in 0..a.batches {
            let b = batch(
                round + usize::from(!managers) * 1000,
                a.batch_size,
                a.users,
                a.records,
                managers,
            );
            let t = Instant::now();
            let applied = s
                .apply(&b, &c)
                .map_err(|e| format!("batch {round}: {e:?}"))?;
            times.push(t.elapsed());
            // The previous version is dropped outside the timing, as the live state does once
            // requests in flight release it.
            s = applied.snapshot;
        }
        let max = times.iter().max().copied().unwrap_or_default();
        println!(
            "apply a batch of {} changes ({}): median {}, max {} over {} batches",
            a.batch_size,
            if managers {
                "with manager changes: the hierarchy is rebuilt"
            } else {
                "no manager change: the hierarchy is shared"
            },
            ms(median(times)),
            ms(max),
            a.batches
        );
    }

    // A record check on the changed version (chunked tables and users).
    let t = c.record_types().get("lead").ok_or("lead")?;
    let perm = c.permission("lead.view").ok_or("lead.view")?;
    let ids: Vec<_> = (0..1000)
        .filter_map(|i| {
            canonical_id(IdKind::Integer, &((i * 104_729) % a.records).to_string()).ok()
        })
        .collect();
    // The callers, as the principal that acts in their tenant (their membership with tenants).
    let callers: Vec<_> = (0..1009usize)
        .filter_map(|k| {
            let u = (k * 7_919 * 31) % a.users;
            let person = s.user_index(&format!("u{u}"))?;
            let tenant = match a.tenants {
                0 => permgate::snapshot::NO_TENANT,
                n => s.tenant_index(&format!("o{}", u % n))?,
            };
            s.member(person, tenant)
        })
        .collect();
    if callers.is_empty() {
        return Err("no caller found in the snapshot".into());
    }
    let n = 2_000_000usize;
    let t0 = Instant::now();
    let mut allowed = 0usize;
    for i in 0..n {
        let user = callers[i % callers.len()];
        if check_record(&s, user, perm, t, &ids[i % ids.len()]).allows(UnknownRecord::Deny) {
            allowed += 1;
        }
    }
    println!(
        "check_record on the changed version: {:.0} ns per check ({allowed} of {n} allowed)",
        t0.elapsed().as_nanos() as f64 / n as f64
    );
    Ok(())
}

//! `permgate-bench snapshot`: the snapshot at scale, in this process (no network). Generates a
//! snapshot of N users (a 10-ary manager tree, 1 000 teams) and M leads with owners (1% shared
//! with a team, one note per 10 leads), then reports: the build time (median of `--runs`),
//! resident bytes per record entry, the time to apply batches of incremental changes to it
//! (each batch on the version the previous one produced), and a record check's cost on the
//! changed version. With `--tenants N` every user is a member of one of N tenants (their
//! roles, team and manager in that tenant: a 10-ary tree per tenant) and every lead belongs to
//! its owner's tenant; a record check then runs as the owner-tenant member of the caller.
//!
//! Batches: without tenants, mixed batches (with and without manager changes); then, with or
//! without tenants, batches of deletions (`remove_record`, a tenth of the leads have a note
//! that goes with them) and, with tenants, batches that name tenants (membership roles and
//! teams, a second membership, a removed membership, new records in a tenant, owners, shares,
//! deletions). Each is timed on the path the gateway takes (`Snapshot::needs_rebuild`
//! decides; it is printed). With `--full-path`, one batch of each of the new kinds is also
//! timed through the source form and a full build — what the gateway did for them before they
//! took the incremental path: parse the last full load's text, replay the batches applied
//! since, serialize, build.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use clap::Args;
use permgate::access::{check_record, UnknownRecord};
use permgate::catalog::Catalog;
use permgate::changes::Change;
use permgate::ids::{canonical_id, IdKind, RecordTypeSpec, RecordTypes};
use permgate::records::RawId;
use permgate::snapshot::{RawSnapshot, Snapshot};

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
    /// Also time one deletion batch (and with tenants one tenant batch) through the source
    /// form and a full build (needs the snapshot's text again: several GB at 10M records).
    #[arg(long)]
    full_path: bool,
    /// Give the snapshot a version (as the database source does): no content hash is made.
    #[arg(long)]
    versioned: bool,
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
fn generate(users: usize, records: usize, tenants: usize, versioned: bool) -> String {
    let mut t = String::with_capacity(records * 60 + users * 90);
    t.push('{');
    if versioned {
        t.push_str(r#""version":"bench","#);
    }
    t.push_str(r#""roles":[{"id":"rep_limited","permissions":["lead.view@subordinates+shared","lead.reassign@subordinates"]},{"id":"rep_team","permissions":["lead.view@team+shared"]}],"#);
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

/// `n` deletions of distinct leads of the upper half of the ids (the other batches name the
/// lower half), different for each `round`.
fn deletions(round: usize, n: usize, records: usize) -> Vec<Change> {
    let half = (records / 2).max(1);
    (0..n)
        .map(|k| {
            // 104 729 is prime, so distinct indices give distinct leads (below `half`).
            let lead = half + ((round * n + k) * 104_729) % half;
            Change::RemoveRecord {
                record_type: "lead".into(),
                id: RawId::Text(lead.to_string()),
            }
        })
        .collect()
}

/// A batch of `n` changes on a snapshot with tenants, naming each user's tenant (user `uK` is
/// in tenant `o(K % tenants)`): membership roles and teams, a second membership in another
/// tenant, a removed membership (of a user with no reports: the upper half of the users, which
/// the other changes leave alone), a disabled user, a new lead in its owner's tenant, owners,
/// shares, a deletion; different for each `round`.
fn tenant_batch(
    round: usize,
    n: usize,
    users: usize,
    records: usize,
    tenants: usize,
) -> Vec<Change> {
    let mut rng = fastrand::Rng::with_seed(round as u64 + 4242);
    let half_users = (users / 2).max(2);
    let half_leads = (records / 2).max(1);
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        let u = rng.usize(1..half_users);
        let (user, org) = (format!("u{u}"), format!("o{}", u % tenants));
        let lead = rng.usize(0..half_leads).to_string();
        let change = match k % 10 {
            0 | 1 => format!(
                r#"{{"op":"set_roles","user":"{user}","tenant":"{org}","roles":["rep_team"]}}"#
            ),
            2 => format!(
                r#"{{"op":"set_teams","user":"{user}","tenant":"{org}","teams":["t{}","t{}"]}}"#,
                rng.usize(0..1000),
                rng.usize(0..1000)
            ),
            3 => format!(
                r#"{{"op":"set_membership","user":"{user}","tenant":"o{}","roles":["rep_limited"],"teams":["t7"]}}"#,
                (u + 1) % tenants
            ),
            4 => {
                // 7 919 is prime: distinct indices give distinct users of the upper half.
                let leaf = half_users + ((round * n + k) * 7_919) % (users - half_users).max(1);
                format!(
                    r#"{{"op":"remove_membership","user":"u{leaf}","tenant":"o{}"}}"#,
                    leaf % tenants
                )
            }
            5 => format!(r#"{{"op":"disable","user":"{user}"}}"#),
            6 => format!(
                r#"{{"op":"upsert_record","type":"lead","id":"{}","owner":"{user}","tenant":"{org}"}}"#,
                records + round * n + k
            ),
            7 => format!(r#"{{"op":"set_owner","type":"lead","id":"{lead}","owner":"{user}"}}"#),
            8 => format!(r#"{{"op":"share","type":"lead","id":"{lead}","user":"{user}"}}"#),
            _ => {
                let gone = half_leads + ((round * n + k) * 104_729) % half_leads;
                format!(r#"{{"op":"remove_record","type":"lead","id":"{gone}"}}"#)
            }
        };
        out.push(serde_json::from_str(&change).expect("a valid change"));
    }
    out
}

/// The source-form path for `batch` after `since`: parse the text, replay, serialize, build
/// (what the gateway's `apply_locked` does when `needs_rebuild` says so). Times each step.
fn full_path(
    text: &str,
    since: &[Vec<Change>],
    batch: &[Change],
    c: &Catalog,
) -> Result<String, String> {
    let t0 = Instant::now();
    let mut raw = RawSnapshot::parse(text)?;
    let parsed = t0.elapsed();
    let mut all: Vec<&[Change]> = since.iter().map(|b| &b[..]).collect();
    all.push(batch);
    let t1 = Instant::now();
    raw.apply_all(&all, c.record_types())?;
    let replayed = t1.elapsed();
    let t2 = Instant::now();
    let new_text = raw.to_json();
    drop(raw);
    let serialized = t2.elapsed();
    let t3 = Instant::now();
    let s = Snapshot::build("changed", &new_text, c).map_err(|e| format!("{:?}", &e[..1]))?;
    let built = t3.elapsed();
    drop(s);
    Ok(format!(
        "{:.1} s (parse {:.1} s, replay of {} batches {}, serialize {:.1} s, build {:.1} s)",
        t0.elapsed().as_secs_f64(),
        parsed.as_secs_f64(),
        all.len(),
        ms(replayed),
        serialized.as_secs_f64(),
        built.as_secs_f64()
    ))
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
    let text = generate(a.users, a.records, a.tenants, a.versioned);
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
    let ticks = procstat::clock_ticks();
    let mut cost = None;
    for _ in 0..a.runs.max(1) {
        drop(snapshot.take());
        let before = procstat::cpu_split(me, ticks);
        let t = Instant::now();
        let s = Snapshot::build("scale.json", &text, &c).map_err(|e| format!("{:?}", &e[..1]))?;
        let took = t.elapsed();
        builds.push(took);
        cost = before
            .zip(procstat::cpu_split(me, ticks))
            .map(|((u0, s0, f0), (u1, s1, f1))| (took, u1 - u0, s1 - s0, f1 - f0));
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
    // The last build's phases (the critical path, the build's own thread).
    println!(
        "build phases (last run): {}",
        s.build_phases()
            .iter()
            .map(|(name, d)| format!("{name} {:.0} ms", d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // The last build's CPU, both cores: what a second core could still take (wall × 2 less
    // user + system), and how much went to fresh pages (system time, minor faults).
    if let Some((wall, user, sys, faults)) = cost {
        println!(
            "build CPU (last run): user {:.2} s, system {:.2} s ({:.2} cores busy on average), \
             {faults} minor page faults",
            user.as_secs_f64(),
            sys.as_secs_f64(),
            (user + sys).as_secs_f64() / wall.as_secs_f64().max(1e-9)
        );
    }
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

    // The mixed batches name no tenant: on a tenant snapshot they would be refused (the
    // tenant batches below stand for them there).
    let batch_kinds: &[bool] = if a.tenants > 0 { &[] } else { &[true, false] };
    // Every batch applied since the build, for the source-form path's replay.
    let mut since: Vec<Vec<Change>> = Vec::new();
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
            since.push(b);
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

    // Deletions (and tenant batches), on the path the gateway takes; one of each kind also
    // through the source form with `--full-path`.
    // (what, batches, also through the source form with `--full-path`)
    let mut kinds: Vec<(String, Vec<Vec<Change>>, bool)> = vec![
        (
            "1 deletion (remove_record)".into(),
            (0..a.batches).map(|r| deletions(r, 1, a.records)).collect(),
            true,
        ),
        (
            format!("{} deletions (remove_record)", a.batch_size),
            (0..a.batches)
                .map(|r| deletions(r + 1000, a.batch_size, a.records))
                .collect(),
            false,
        ),
    ];
    if a.tenants > 0 {
        kinds.push((
            format!(
                "{} changes naming tenants (memberships, records, deletions)",
                a.batch_size
            ),
            (0..a.batches)
                .map(|r| tenant_batch(r, a.batch_size, a.users, a.records, a.tenants))
                .collect(),
            true,
        ));
    }
    let text = a
        .full_path
        .then(|| generate(a.users, a.records, a.tenants, a.versioned));
    for (what, batches, compare) in kinds {
        let mut times = Vec::new();
        let mut rebuilt = 0;
        let mut full = None;
        for b in batches {
            if s.needs_rebuild(&b, &c) {
                rebuilt += 1;
            }
            if full.is_none() && compare {
                if let Some(text) = &text {
                    full = Some(full_path(text, &since, &b, &c)?);
                }
            }
            let t = Instant::now();
            let applied = s
                .apply(&b, &c)
                .map_err(|e| format!("{what}: {:?}", &e[..e.len().min(3)]))?;
            times.push(t.elapsed());
            s = applied.snapshot;
            since.push(b);
        }
        let max = times.iter().max().copied().unwrap_or_default();
        let n = times.len();
        println!(
            "apply a batch of {what}: median {}, max {} over {n} batches ({})",
            ms(median(times)),
            ms(max),
            if rebuilt == 0 {
                "incremental: needs_rebuild said no to each".to_string()
            } else {
                format!("needs_rebuild said yes to {rebuilt}: the gateway would rebuild those")
            }
        );
        if let Some(f) = full {
            println!("  the same kind through the source form and a full build (before): {f}");
        }
    }
    drop(text);

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

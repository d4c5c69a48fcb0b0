//! `permgate demo`: the bundled sample CRM on loopback, the gateway in front of it with the demo
//! config (embedded: works from any directory), and ready-to-paste curl commands.

use std::path::PathBuf;

use crate::live::Overrides;

pub use permgate_core::demo::{
    demo_token, demo_token_in, DEMO_ANALYST_API_KEY, DEMO_AUDIENCE, DEMO_CONFIG, DEMO_ISSUER,
    DEMO_KID, DEMO_SECRET, DEMO_SNAPSHOT, DEMO_TENANT_CONFIG, DEMO_TENANT_SNAPSHOT,
};

/// Write the demo files, start the sample CRM, and return the config to serve with its
/// overrides (listen address, the CRM's address) and the gateway's socket, listening.
pub fn prepare(listen: &str) -> Result<(PathBuf, Overrides, std::net::TcpListener), String> {
    let address = listen
        .parse::<std::net::SocketAddr>()
        .map_err(|_| format!("--listen '{listen}' is not an IP:port address"))?;
    if address.port() == 0 {
        // The banner's curl lines name the port before the gateway listens.
        return Err(format!(
            "--listen '{listen}': the demo needs a port of its own (its curl lines name it), not 0"
        ));
    }
    // Bound before anything starts and before the banner names it: a port in use is an error
    // here, not after the banner (then the curl lines would name a gateway that is not there).
    let listener = std::net::TcpListener::bind(address)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| format!("the gateway cannot listen on {listen}: {e}"))?;
    let crm = start_sample_crm()?;
    let dir = std::env::temp_dir().join(format!("permgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let config_path = dir.join("permgate.toml");
    std::fs::write(&config_path, DEMO_CONFIG).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("snapshot.json"), DEMO_SNAPSHOT).map_err(|e| e.to_string())?;

    // The tenant stop's gateway: tenant-aware, beside the main one, in front of the same CRM.
    let tenant_config = dir.join("tenants.toml");
    std::fs::write(&tenant_config, DEMO_TENANT_CONFIG).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("tenants-snapshot.json"), DEMO_TENANT_SNAPSHOT)
        .map_err(|e| e.to_string())?;
    // Bound here, before the banner names it, and handed to the tenant gateway: a port only
    // checked free could be taken before that gateway's thread binds it (a flake seen in CI).
    let tenant_listener = tenant_listener(address)?;
    let tenant_listen = tenant_listener
        .local_addr()
        .map_err(|e| format!("the tenant gateway's socket: {e}"))?
        .to_string();
    start_tenant_gateway(&tenant_config, &tenant_listen, tenant_listener, crm)?;
    crate::print_stdout(&banner(listen, &tenant_listen, &crm.to_string()))
        .map_err(|e| format!("cannot write the banner: {e}"))?;
    Ok((
        config_path,
        Overrides {
            listen: Some(listen.to_string()),
            upstream: Some(crm),
            ..Overrides::default()
        },
        listener,
    ))
}

/// The tenant gateway's socket, listening: on the main one's port + 1 when it is free, else on
/// a free port of the same IP.
fn tenant_listener(main: std::net::SocketAddr) -> Result<std::net::TcpListener, String> {
    let any = std::net::SocketAddr::new(main.ip(), 0);
    let next = match main.port() {
        u16::MAX => any,
        p => std::net::SocketAddr::new(main.ip(), p + 1),
    };
    let listener = std::net::TcpListener::bind(next)
        .or_else(|first| {
            std::net::TcpListener::bind(any).map_err(|e| format!("{next}: {first}; {any}: {e}"))
        })
        .map_err(|e| format!("the tenant gateway cannot listen: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("the tenant gateway's socket: {e}"))?;
    Ok(listener)
}

/// Serve the demo's tenant-aware config (`config/demo/tenants.toml`) on `listener` (bound to
/// `listen`), in front of the sample CRM, on threads of its own for the life of the process
/// (the main gateway's signals end both: they are one process).
fn start_tenant_gateway(
    config: &std::path::Path,
    listen: &str,
    listener: std::net::TcpListener,
    crm: std::net::SocketAddr,
) -> Result<(), String> {
    let state = crate::live::State::load(
        config,
        Overrides {
            listen: Some(listen.to_string()),
            upstream: Some(crm),
            ..Overrides::default()
        },
    )
    .map_err(|errors| {
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        format!("the tenant gateway's config: {}", errors.join("; "))
    })?;
    let state = std::sync::Arc::new(state);
    crate::control::spawn(state.clone(), false)
        .map_err(|e| format!("the tenant gateway's control thread: {e}"))?;
    std::thread::Builder::new()
        .name("permgate-demo-tenants".into())
        .spawn(move || {
            // Its errors are logged by `run_on`; the main gateway goes on without it.
            let _ = crate::plane::run_on(state, Some(listener));
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Start the sample CRM on loopback, on a runtime and thread of its own (the gateway owns the
/// main thread), for the life of the process; its address.
#[cfg(feature = "demo")]
fn start_sample_crm() -> Result<std::net::SocketAddr, String> {
    // The sample CRM gets its own runtime on a thread of its own; the gateway owns the main thread.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("sample-crm".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                match crate::sample_crm::start(listener, crate::sample_crm::CrmOptions::default())
                    .await
                {
                    Ok(crm) => {
                        let _ = tx.send(Ok(crm.local_addr()));
                        // Keep the CRM (and this runtime) alive for the life of the process.
                        let _crm = crm;
                        std::future::pending::<()>().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        })
        .map_err(|e| e.to_string())?;
    rx.recv()
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("the sample CRM could not start: {e}"))
}

#[cfg(not(feature = "demo"))]
fn start_sample_crm() -> Result<std::net::SocketAddr, String> {
    Err(NO_DEMO.to_string())
}

/// What a build without the sample CRM says to `permgate demo` and `permgate sample-crm`.
#[cfg(not(feature = "demo"))]
pub const NO_DEMO: &str =
    "this build has no sample CRM (it was built without the cargo feature `demo`)";

/// `permgate sample-crm`: the sample CRM alone, until the process ends.
pub fn run_sample_crm(listen: std::net::SocketAddr) -> Result<(), String> {
    #[cfg(feature = "demo")]
    {
        let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        tracing::info!("sample CRM listening on {listen}");
        rt.block_on(crate::sample_crm::serve(
            listen,
            crate::sample_crm::CrmOptions::default(),
        ))
        .map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "demo"))]
    {
        let _ = listen;
        Err(NO_DEMO.to_string())
    }
}

/// One stop of the tour the demo prints: what it shows, what answer to expect, the command.
///
/// `expect` is checked by a test (tests/demo.rs runs `permgate demo` and every printed line):
/// a status, then optionally the error code, then claims separated by ", " — `names <perm>`
/// (the refusal's permission), `<n> items` (a filtered list's length), `<header>: <value>` (an
/// answer header), `denied_assignees: <a>,<b>` (the refusal's list). Keep prose in `shows`.
struct Step {
    shows: &'static str,
    expect: &'static str,
    curl: String,
}

/// The guided tour: each stop one curl line and what it shows (`tenants`: the tenant-aware
/// gateway's base URL).
fn tour(base: &str, tenants: &str) -> Vec<Step> {
    let rep = "-H \"Authorization: Bearer $REP\"";
    let json = "-H 'content-type: application/json'";
    let step = |shows, expect, curl: String| Step {
        shows,
        expect,
        curl,
    };
    vec![
        step(
            "Permissions: the rep's role may read customers",
            "200",
            format!("curl -i {base}/api/v1/customers/1 {rep}"),
        ),
        step(
            "...but not delete a campaign; the refusal names what is missing",
            "403 forbidden, names campaign.delete",
            format!("curl -i -X DELETE {base}/api/v1/campaigns/1 {rep}"),
        ),
        step(
            "Record scope: Robin reads his own deal",
            "200",
            format!("curl -i {base}/api/v1/deals/4 {rep}"),
        ),
        step(
            "...not Riley's (outside his scope: own + shared)",
            "403 record_forbidden",
            format!("curl -i {base}/api/v1/deals/3 {rep}"),
        ),
        step(
            "HEAD is decided like GET (curl -I: the status line only)",
            "403",
            format!("curl -I {base}/api/v1/deals/3 {rep}"),
        ),
        step(
            "A filtered list: the CRM answers its 20 deals, Robin gets his 3 and 1 shared with his team",
            "200, 4 items",
            format!("curl -i {base}/api/v1/deals {rep}"),
        ),
        step(
            "A bulk reassign, trimmed: deals 5 and 6 are not his team's, only 4 and 12 reach the CRM",
            "200, x-permgate-removed-ids: 5,6",
            format!(
                "curl -i -X POST {base}/api/v1/deals/bulk-reassign {rep} {json} -d '{{\"ids\":[4,12,5,6],\"owner_id\":\"u-rep1\"}}'"
            ),
        ),
        step(
            "Assignees, each checked: a task for a teammate and the admin (outside his team) is refused whole",
            "403 assignee_forbidden, denied_assignees: u-admin",
            format!(
                "curl -i -X POST {base}/api/v1/tasks {rep} {json} -d '{{\"title\":\"Call back\",\"assigned_to\":[\"u-rep1\",\"u-admin\"]}}'"
            ),
        ),
        // Tenants (issue 16 item 2), on the tenant-aware gateway: Robin is ADMIN in the org he
        // created and a rep at his employer's; the token's org_id picks the membership.
        step(
            "Tenants (the second gateway; the token's org_id is the call's org): Robin is ADMIN of the org he created and reads its deal 7",
            "200",
            format!("curl -i {tenants}/api/v1/deals/7 -H \"Authorization: Bearer $ROBIN_OWN\""),
        ),
        step(
            "...at his employer acme he is a rep: Riley's deal 3 is outside his scope there",
            "403 record_forbidden",
            format!("curl -i {tenants}/api/v1/deals/3 -H \"Authorization: Bearer $ROBIN_ACME\""),
        ),
        step(
            "...and his ADMIN role stops at his own org: deal 3 is acme's",
            "403 record_forbidden",
            format!("curl -i {tenants}/api/v1/deals/3 -H \"Authorization: Bearer $ROBIN_OWN\""),
        ),
        step(
            "An API key (the data analyst's)",
            "200",
            format!("curl -i {base}/api/v1/analytics -H \"x-api-key: $ANALYST_KEY\""),
        ),
        step(
            "No credentials",
            "401 missing_credentials",
            format!("curl -i {base}/api/v1/customers/1"),
        ),
        step(
            "A client's own identity header is removed: the CRM sees u-rep2, not u-admin",
            "200",
            format!("curl -i {base}/api/v1/customers/1 {rep} -H 'x-permgate-user: u-admin'"),
        ),
        step(
            "Dot segments are resolved before matching: this is DELETE /api/v1/campaigns/1",
            "403 forbidden, names campaign.delete",
            format!("curl -i --path-as-is -X DELETE '{base}/api/v1/x/../campaigns/1' {rep}"),
        ),
        step(
            "An encoded slash is ambiguous: refused, never guessed",
            "400 encoded_slash",
            format!("curl -i '{base}/api/v1/customers%2F1' {rep}"),
        ),
        step(
            "No route for this path: deny by default",
            "404 route_not_found",
            format!("curl -i {base}/api/v2/anything -H \"Authorization: Bearer $ADMIN\""),
        ),
    ]
}

/// The text the demo prints: who is who, and a tour of curl lines that work as pasted.
pub fn banner(listen: &str, tenant_listen: &str, crm: &str) -> String {
    let base = format!("http://{listen}");
    let tenants = format!("http://{tenant_listen}");
    let ttl = 12 * 3600;
    let mut s = format!(
        "\npermgate demo: gateway on {base}, sample CRM on http://{crm} (never expose it)\n\
         config and snapshot: config/demo/ (embedded); tokens below are valid for 12 hours\n\n\
         # 1. Paste these to get credentials (HS256 JWTs from the demo key, and an API key):\n"
    );
    for (var, user, who) in [
        ("ADMIN", "u-admin", "Ada, Admin: every permission, every record"),
        (
            "REP",
            "u-rep2",
            "Robin, sales rep limited to his own and shared deals (team sales-east, with Riley u-rep1)",
        ),
    ] {
        s.push_str(&format!(
            "export {var}='{}'   # {user}, {who}\n",
            demo_token(user, ttl)
        ));
    }
    s.push_str(&format!(
        "export ANALYST_KEY='{DEMO_ANALYST_API_KEY}'   # u-da, Dana, Data Analyst\n"
    ));
    for (var, org, who) in [
        (
            "ROBIN_OWN",
            "robin-co",
            "the org Robin created, where he is ADMIN",
        ),
        ("ROBIN_ACME", "acme", "Robin's employer, where he is a rep"),
    ] {
        s.push_str(&format!(
            "export {var}='{}'   # u-rep2 in {org}: {who} (tenant gateway)\n",
            demo_token_in("u-rep2", Some(org), ttl)
        ));
    }
    s.push_str(&format!(
        "# The tenant stops go to a second, tenant-aware gateway on {tenants} (config/demo/tenants.toml, embedded)\n"
    ));
    s.push_str("\n# 2. Then the tour: each line shows one thing → the answer to expect\n");
    for Step {
        shows,
        expect,
        curl,
    } in tour(&base, &tenants)
    {
        s.push_str(&format!("# {shows} → {expect}\n{curl}\n"));
    }
    s.push_str("\nEvery answer carries x-request-id; the same id is in the decision log line (JSON) printed below. Ctrl-C stops.\n\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_constants_match_the_demo_config() {
        let v: toml::Value = toml::from_str(DEMO_CONFIG).unwrap();
        let jwt = &v["identity"]["jwt"];
        assert_eq!(jwt["issuer"].as_str(), Some(DEMO_ISSUER));
        assert_eq!(jwt["audience"].as_str(), Some(DEMO_AUDIENCE));
        assert_eq!(jwt["keys"][0]["kid"].as_str(), Some(DEMO_KID));
        assert_eq!(jwt["keys"][0]["secret"].as_str(), Some(DEMO_SECRET));
        let digest = hex::encode(crate::identity::api_key_digest(DEMO_ANALYST_API_KEY));
        assert!(DEMO_SNAPSHOT.contains(&format!("sha256:{digest}")));
    }

    #[test]
    fn demo_config_and_snapshot_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("snapshot.json"), DEMO_SNAPSHOT).unwrap();
        let config =
            crate::config::Config::parse("permgate.toml", DEMO_CONFIG, dir.path()).unwrap();
        let s = crate::snapshot::Snapshot::build("snapshot.json", DEMO_SNAPSHOT, &config.catalog)
            .unwrap();
        assert!(config.routes.len() > 80);
        assert_eq!(s.user_count(), 9);
    }

    #[test]
    fn demo_tenant_config_and_snapshot_load_and_agree() {
        let dir = tempfile::tempdir().unwrap();
        let config =
            crate::config::Config::parse("tenants.toml", DEMO_TENANT_CONFIG, dir.path()).unwrap();
        let s = crate::snapshot::Snapshot::build(
            "tenants-snapshot.json",
            DEMO_TENANT_SNAPSHOT,
            &config.catalog,
        )
        .unwrap();
        assert_eq!(s.tenant_count(), 2);
        assert!(crate::live::tenants_mismatch(&config, &s, "demo").is_none());
        // The tour's tokens name the organisation.
        let v: toml::Value = toml::from_str(DEMO_TENANT_CONFIG).unwrap();
        assert_eq!(
            v["identity"]["jwt"]["keys"][0]["secret"].as_str(),
            Some(DEMO_SECRET)
        );
    }
}

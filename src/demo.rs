//! `permgate demo`: the bundled sample CRM on loopback, the gateway in front of it with the demo
//! config (embedded: works from any directory), and ready-to-paste curl commands.

use std::path::PathBuf;

use crate::live::Overrides;

pub use permgate_core::demo::{
    demo_token, DEMO_ANALYST_API_KEY, DEMO_AUDIENCE, DEMO_CONFIG, DEMO_ISSUER, DEMO_KID,
    DEMO_SECRET, DEMO_SNAPSHOT,
};

/// Write the demo files, start the sample CRM, and return the config to serve with its
/// overrides (listen address, the CRM's address).
pub fn prepare(listen: &str) -> Result<(PathBuf, Overrides), String> {
    let crm = start_sample_crm()?;
    let dir = std::env::temp_dir().join(format!("permgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let config_path = dir.join("permgate.toml");
    std::fs::write(&config_path, DEMO_CONFIG).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("snapshot.json"), DEMO_SNAPSHOT).map_err(|e| e.to_string())?;

    listen
        .parse::<std::net::SocketAddr>()
        .map_err(|_| format!("--listen '{listen}' is not an IP:port address"))?;
    crate::print_stdout(&banner(listen, &crm.to_string()))
        .map_err(|e| format!("cannot write the banner: {e}"))?;
    Ok((
        config_path,
        Overrides {
            listen: Some(listen.to_string()),
            upstream: Some(crm),
            ..Overrides::default()
        },
    ))
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

/// The text the demo prints: who is who, and curl lines that work as pasted.
pub fn banner(listen: &str, crm: &str) -> String {
    let base = format!("http://{listen}");
    let ttl = 12 * 3600;
    let mut s = String::new();
    s.push_str(&format!(
        "\npermgate demo: gateway on {base}, sample CRM on http://{crm} (never expose it)\n\
         config and snapshot: config/demo/ (embedded); tokens below are valid for 12 hours\n\n\
         # 1. Paste these to get credentials (HS256 JWTs from the demo key):\n"
    ));
    for (var, user, who) in [
        ("ADMIN", "u-admin", "Admin"),
        ("MANAGER", "u-sm", "Sales Manager"),
        ("REP", "u-rep1", "Sales Representative"),
        ("CSR", "u-csr", "Customer Service Representative"),
    ] {
        s.push_str(&format!(
            "export {var}='{}'   # {user}, {who}\n",
            demo_token(user, ttl)
        ));
    }
    s.push_str(&format!(
        "export ANALYST_KEY='{DEMO_ANALYST_API_KEY}'   # u-da, Data Analyst (API key)\n"
    ));
    let lines: [(&str, String); 14] = [
        ("Sales rep reads a customer → 200", format!("curl -i {base}/api/v1/customers/1 -H \"Authorization: Bearer $REP\"")),
        ("Sales rep deletes a campaign → 403, names campaign.delete", format!("curl -i -X DELETE {base}/api/v1/campaigns/1 -H \"Authorization: Bearer $REP\"")),
        ("Admin reads the same customer → 200", format!("curl -i {base}/api/v1/customers/1 -H \"Authorization: Bearer $ADMIN\"")),
        ("Admin deletes the campaign → 204", format!("curl -i -X DELETE {base}/api/v1/campaigns/1 -H \"Authorization: Bearer $ADMIN\"")),
        ("Sales manager views all threads → 200", format!("curl -i {base}/api/v1/threads -H \"Authorization: Bearer $MANAGER\"")),
        ("Sales manager deletes a campaign → 403 (seed 000: all campaign rights but delete)", format!("curl -i -X DELETE {base}/api/v1/campaigns/2 -H \"Authorization: Bearer $MANAGER\"")),
        ("Customer service sends a message → 200", format!("curl -i -X POST {base}/api/v1/threads/3/messages -H \"Authorization: Bearer $CSR\" -H 'content-type: application/json' -d '{{\"body\":\"Hello!\"}}'")),
        ("Customer service reassigns leads → 403, names lead.reassign", format!("curl -i -X POST {base}/api/v1/leads/bulk-reassign -H \"Authorization: Bearer $CSR\" -H 'content-type: application/json' -d '{{\"ids\":[1,2],\"owner_id\":\"u-csr\"}}'")),
        ("Analyst with an API key reads analytics → 200", format!("curl -i {base}/api/v1/analytics -H \"x-api-key: $ANALYST_KEY\"")),
        ("No credentials → 401", format!("curl -i {base}/api/v1/customers/1")),
        ("A spoofed identity header is removed before the CRM sees it → 200 as u-rep1", format!("curl -i {base}/api/v1/customers/1 -H \"Authorization: Bearer $REP\" -H 'x-permgate-user: u-admin'")),
        ("Dot segments are resolved before matching: /api/v1/x/../campaigns/1 is /api/v1/campaigns/1 → 403", format!("curl -i --path-as-is -X DELETE '{base}/api/v1/x/../campaigns/1' -H \"Authorization: Bearer $REP\"")),
        ("An encoded slash is ambiguous → 400", format!("curl -i '{base}/api/v1/customers%2F1' -H \"Authorization: Bearer $REP\"")),
        ("No route for this path → 404 (deny by default)", format!("curl -i {base}/api/v2/anything -H \"Authorization: Bearer $ADMIN\"")),
    ];
    s.push_str("\n# 2. Then try:\n");
    for (what, cmd) in lines {
        s.push_str(&format!("# {what}\n{cmd}\n"));
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
}

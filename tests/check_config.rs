//! `permgate check-config`: a summary for a good config, every error located for a bad one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may

mod common;

use std::process::Command;

use common::*;

fn check(path: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_permgate"))
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_demo_config_checks_out() {
    let (code, out, err) = check(&demo_config());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("routes:      88"), "{out}");
    assert!(out.contains("users:       9"), "{out}");
    assert!(out.contains("71 in the catalogue"), "{out}");
}

#[test]
fn a_broken_config_names_every_broken_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(demo_config()).unwrap();
    let broken = text
        .replacen(
            "permission = \"campaign.delete\"",
            "permission = \"campaign.destroy\"",
            1,
        )
        .replacen(
            "path = \"/api/v1/leads/{id}/convert\"",
            "path = \"/api/v1/leads/{lead}/convert\"\nregex = '('",
            1,
        )
        .replacen("alg = \"HS256\"", "alg = \"none\"", 1);
    std::fs::write(dir.path().join("c.toml"), &broken).unwrap();
    std::fs::write(
        dir.path().join("snapshot.json"),
        permgate::demo::DEMO_SNAPSHOT,
    )
    .unwrap();
    let (code, _, err) = check(&dir.path().join("c.toml"));
    assert_eq!(code, 1);
    let line_of = |needle: &str| broken.lines().position(|l| l.contains(needle)).unwrap() + 1;
    // The unknown permission: its own line is named.
    let permission_line = line_of("campaign.destroy");
    assert!(
        err.contains(&format!("c.toml:{permission_line}: route[")),
        "{err}"
    );
    assert!(
        err.contains("unknown permission 'campaign.destroy'"),
        "{err}"
    );
    assert!(
        err.contains("set exactly one of 'path' or 'regex'"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "c.toml:{}: identity.jwt.keys",
            line_of("[[identity.jwt.keys]]")
        )),
        "{err}"
    );
    assert!(err.contains("alg 'none'"), "{err}");
}

#[test]
fn a_syntax_error_and_an_unknown_field_are_located() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(demo_config()).unwrap();
    let broken = text.replacen("h2c = true", "h2c = true\nworkers = 4", 1);
    std::fs::write(dir.path().join("c.toml"), &broken).unwrap();
    let (code, _, err) = check(&dir.path().join("c.toml"));
    assert_eq!(code, 1);
    let line = broken
        .lines()
        .position(|l| l.starts_with("workers"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!("c.toml:{line}:")) && err.contains("unknown field `workers`"),
        "{err}"
    );
}

#[test]
fn a_bad_snapshot_is_located() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(demo_config(), dir.path().join("c.toml")).unwrap();
    let snap = permgate::demo::DEMO_SNAPSHOT.replacen(
        "\"roles\": [\"sales_rep\"], \"teams\"",
        "\"roles\": [\"sales_rpe\"], \"teams\"",
        1,
    );
    assert_ne!(snap, permgate::demo::DEMO_SNAPSHOT);
    std::fs::write(dir.path().join("snapshot.json"), &snap).unwrap();
    let (code, _, err) = check(&dir.path().join("c.toml"));
    assert_eq!(code, 1);
    let line = snap.lines().position(|l| l.contains("sales_rpe")).unwrap() + 1;
    assert!(
        err.contains(&format!("snapshot.json:{line}: users[")),
        "{err}"
    );
    assert!(err.contains("unknown role 'sales_rpe'"), "{err}");
}

#[test]
fn unsafe_settings_are_refused() {
    let base = std::fs::read_to_string(demo_config()).unwrap();
    let cases: Vec<(String, &str)> = vec![
        (base.replacen("roles_header = \"x-permgate-roles\"", "roles_header = \"x-permgate-user\"", 1), "each header needs its own name"),
        (base.replacen("user_header = \"x-permgate-user\"", "user_header = \"authorization\"", 1), "is reserved"),
        (base.replacen("header = \"x-api-key\"", "header = \"host\"", 1), "is reserved"),
        (base.clone() + "\n[identity.trusted_header]\nname = \"x-sso-user\"\ntrusted_cidrs = [\"0.0.0.0/0\"]\n", "trusts every address"),
        (base.replacen("regex = '/api/v1/reports/[0-9]{1,9}\\.json'", "regex = '/api/v1/reports/1)|(.*'", 1), "regex does not compile"),
        (base.replacen("path = \"/api/v1/analytics\"", "path = \"/api/v1/analytics\"\npriority = 3", 1), "orders regex routes only"),
        (base.replacen("name = \"analytics\"", "name = \"search\"", 1), "route name 'search' is also used"),
        (base.replacen("leeway_seconds = 30", "leeway_seconds = 999999", 1), "leeway"),
        (base.replacen("issuer = \"https://crm.example.test\"", "issuer = \"\"", 1), "must not be empty"),
    ];
    for (text, needle) in cases {
        assert_ne!(text, base, "the replacement for '{needle}' happened");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c.toml"), &text).unwrap();
        std::fs::write(
            dir.path().join("snapshot.json"),
            permgate::demo::DEMO_SNAPSHOT,
        )
        .unwrap();
        let (code, _, err) = check(&dir.path().join("c.toml"));
        assert_eq!(code, 1, "{needle}: {err}");
        assert!(err.contains(needle), "expected '{needle}' in: {err}");
    }
}

#[test]
fn bad_upstream_tls_files_are_located() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("snapshot.json"),
        permgate::demo::DEMO_SNAPSHOT,
    )
    .unwrap();
    std::fs::write(dir.path().join("ca.pem"), "not a certificate\n").unwrap();
    std::fs::write(dir.path().join("client.pem"), "not a certificate\n").unwrap();
    let text = demo_config_text().replacen(
        "pool_size = 1024",
        "pool_size = 1024\n\n[upstream.tls]\nsni = \"crm.internal\"\nca_file = \"ca.pem\"\ncert_file = \"client.pem\"",
        1,
    );
    let line = |needle: &str| text.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
    std::fs::write(dir.path().join("permgate.toml"), &text).unwrap();
    let (code, _, err) = check(&dir.path().join("permgate.toml"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(":{}: upstream.tls.ca_file:", line("ca_file")))
            && err.contains("holds no certificate"),
        "{err}"
    );
    assert!(
        err.contains(&format!(":{}: upstream.tls:", line("cert_file")))
            && err.contains("needs both cert_file and key_file"),
        "{err}"
    );
}

/// The Pingora engine is not in the default build: a config naming it is refused at its line,
/// and so is `serve --engine pingora` (nothing is started).
#[cfg(not(feature = "pingora"))]
#[test]
fn a_default_build_refuses_the_pingora_engine() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(demo_config()).unwrap().replacen(
        "threads = 1",
        "threads = 1\nengine = \"pingora\"",
        1,
    );
    std::fs::write(dir.path().join("c.toml"), &text).unwrap();
    std::fs::write(
        dir.path().join("snapshot.json"),
        permgate::demo::DEMO_SNAPSHOT,
    )
    .unwrap();
    let (code, _, err) = check(&dir.path().join("c.toml"));
    assert_eq!(code, 1, "{err}");
    let line = text
        .lines()
        .position(|l| l.starts_with("engine = \"pingora\""))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!(
            "c.toml:{line}: listen.engine: this build has no Pingora engine"
        )),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_permgate"))
        .args(["serve", "--config"])
        .arg(demo_config())
        .args(["--engine", "pingora", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("this build has no Pingora engine"));
}

/// No command panics when its stdout is a pipe the reader closed (`permgate check-config x |
/// head -1`): the output ends quietly and the command keeps its own exit status.
#[test]
fn no_command_panics_on_a_closed_stdout() {
    use std::process::Stdio;
    let demo = demo_config();
    let demo = demo.to_str().unwrap();
    let cases = repo().join("config/examples/scopes/policy-tests.toml");
    let commands: Vec<(Vec<&str>, i32)> = vec![
        (vec!["check-config", demo], 0),
        (
            vec![
                "explain",
                "--config",
                demo,
                "--user",
                "u-rep1",
                "GET",
                "/api/v1/customers/1",
            ],
            0,
        ),
        (
            vec![
                "explain",
                "--json",
                "--config",
                demo,
                "--user",
                "u-rep1",
                "DELETE",
                "/api/v1/campaigns/1",
            ],
            3,
        ),
        (vec!["test", cases.to_str().unwrap()], 0),
        (vec!["--help"], 0),
        (vec!["--version"], 0),
    ];
    for (args, want) in commands {
        let mut child = Command::new(env!("CARGO_BIN_EXE_permgate"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader leaves before the command writes anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(want), "{args:?}: {err}");
    }
}

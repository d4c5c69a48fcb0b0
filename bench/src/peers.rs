//! The processes a side-by-side run starts, and the files they read: the sample CRM upstream,
//! permgate with authorization and as a pure pass-through, nginx `proxy_pass`, and HAProxy as
//! an authorizing proxy (JWT + route map + grants map, the setup in shared/bench-peers).
//!
//! Everything listens on 127.0.0.1 only. Every process is our own child, stopped by its pid when
//! its [`Proc`] is dropped. Nothing is installed: a missing `nginx` or `haproxy` is skipped with
//! the command that installs it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

use crate::scenario::{generated_user, Credentials, SnapshotSpec};

/// A child process, stopped (SIGKILL, by pid) and reaped on drop.
pub struct Proc {
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Spawn `cmd`, its output going to `log`, and wait until `probe` accepts TCP connections.
    pub fn start(
        name: &str,
        mut cmd: Command,
        log: &Path,
        probe: SocketAddr,
    ) -> Result<Proc, String> {
        let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let mut p = Proc { child };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                let tail = std::fs::read_to_string(log).unwrap_or_default();
                let tail: String = tail
                    .lines()
                    .rev()
                    .take(8)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(format!(
                    "{name} exited at start ({status}); its log {}:\n{tail}",
                    log.display()
                ));
            }
            if TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_ok() {
                return Ok(p);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{name} did not listen on {probe} within 15 s (log: {})",
                    log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A process with workers (nginx with `worker_processes` > 1): its workers by pid too,
        // or they would outlive a killed master.
        let workers = crate::procstat::children(self.pid());
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in workers {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A free loopback port (bound, then released; the race is harmless on a quiet machine).
pub fn free_port() -> Result<SocketAddr, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr().map_err(|e| e.to_string())
}

/// An executable on PATH (or in the sbin folders a non-root PATH may lack).
pub fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// First line of `bin -v`-like output (version banner), for the report.
pub fn version_of(bin: &Path, arg: &str) -> String {
    Command::new(bin)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let s = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&s)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

// ---- identities -----------------------------------------------------------------------------

/// How to mint HS256 tokens the gateway (and HAProxy) accept.
#[derive(Debug, Clone)]
pub struct JwtKey {
    pub secret: String,
    pub kid: Option<String>,
    pub issuer: String,
    pub audience: String,
    pub ttl_secs: u64,
}

impl JwtKey {
    pub fn demo() -> JwtKey {
        JwtKey {
            secret: permgate::demo::DEMO_SECRET.to_string(),
            kid: Some(permgate::demo::DEMO_KID.to_string()),
            issuer: permgate::demo::DEMO_ISSUER.to_string(),
            audience: permgate::demo::DEMO_AUDIENCE.to_string(),
            ttl_secs: 3600,
        }
    }

    /// A token for `user`, with a `role` claim (HAProxy reads the role from the token; permgate
    /// ignores it and looks the user up in its snapshot).
    pub fn mint(&self, user: &str, role: &str) -> Result<String, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = json!({
            "sub": user, "role": role,
            "iss": self.issuer, "aud": self.audience,
            "iat": now, "nbf": now.saturating_sub(60), "exp": now + self.ttl_secs,
        });
        let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = self.kid.clone();
        encode(
            &header,
            &claims,
            &EncodingKey::from_secret(self.secret.as_bytes()),
        )
        .map_err(|e| format!("cannot mint a token: {e}"))
    }
}

fn bearer(token: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| "token is not a header value".to_string())
}

/// Tokens minted for generated users (`u-bench-<role>-NNNNN`) and named demo users.
pub struct MintedTokens {
    key: JwtKey,
    /// Demo users and their first role.
    named: BTreeMap<String, String>,
}

impl MintedTokens {
    pub fn new(key: JwtKey) -> MintedTokens {
        let mut named = BTreeMap::new();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(permgate::demo::DEMO_SNAPSHOT) {
            for u in v["users"].as_array().into_iter().flatten() {
                if let (Some(id), Some(role)) = (u["id"].as_str(), u["roles"][0].as_str()) {
                    named.insert(id.to_string(), role.to_string());
                }
            }
        }
        MintedTokens { key, named }
    }
}

impl Credentials for MintedTokens {
    fn for_role(&self, role: &str, count: usize) -> Result<Vec<HeaderValue>, String> {
        (0..count.max(1))
            .map(|i| bearer(&self.key.mint(&generated_user(role, i), role)?))
            .collect()
    }
    fn for_user(&self, user: &str) -> Result<HeaderValue, String> {
        let role = self.named.get(user).map(String::as_str).unwrap_or("member");
        bearer(&self.key.mint(user, role)?)
    }
}

/// Tokens read from a file: one `KEY TOKEN` per line, KEY a role id, `user:<id>`, or `*`
/// (any role). `#` starts a comment.
pub struct TokenFile {
    by_key: BTreeMap<String, Vec<HeaderValue>>,
}

impl TokenFile {
    pub fn load(path: &Path) -> Result<TokenFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut by_key: BTreeMap<String, Vec<HeaderValue>> = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, token) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| format!("{}:{}: expected 'KEY TOKEN'", path.display(), n + 1))?;
            by_key
                .entry(key.to_string())
                .or_default()
                .push(bearer(token.trim())?);
        }
        Ok(TokenFile { by_key })
    }
}

impl Credentials for TokenFile {
    fn for_role(&self, role: &str, _count: usize) -> Result<Vec<HeaderValue>, String> {
        self.by_key
            .get(role)
            .or_else(|| self.by_key.get("*"))
            .cloned()
            .ok_or_else(|| format!("the token file has no line for role '{role}' (nor '*')"))
    }
    fn for_user(&self, user: &str) -> Result<HeaderValue, String> {
        self.by_key
            .get(&format!("user:{user}"))
            .or_else(|| self.by_key.get("*"))
            .and_then(|v| v.first().cloned())
            .ok_or_else(|| format!("the token file has no line for 'user:{user}' (nor '*')"))
    }
}

// ---- permgate configs -----------------------------------------------------------------------

/// The demo snapshot plus generated users (`population`: role → count), as JSON text.
pub fn snapshot_with(population: &BTreeMap<String, usize>) -> Result<String, String> {
    snapshot_for(population, &SnapshotSpec::default())
}

/// [`snapshot_with`] plus what the scenarios add: custom roles, the generated users' teams, and
/// record owners.
pub fn snapshot_for(
    population: &BTreeMap<String, usize>,
    spec: &SnapshotSpec,
) -> Result<String, String> {
    let mut v: serde_json::Value =
        serde_json::from_str(permgate::demo::DEMO_SNAPSHOT).map_err(|e| e.to_string())?;
    v["version"] = json!("bench");
    let roles = v["roles"]
        .as_array_mut()
        .ok_or("demo snapshot has no roles")?;
    for r in &spec.roles {
        let name = if r.name.is_empty() { &r.id } else { &r.name };
        roles.push(json!({ "id": r.id, "name": name, "permissions": r.permissions }));
    }
    let users = v["users"]
        .as_array_mut()
        .ok_or("demo snapshot has no users")?;
    for (role, n) in population {
        let teams = spec.teams.get(role);
        for i in 0..*n {
            let mut user = json!({ "id": generated_user(role, i), "roles": [role] });
            if let Some(t) = teams {
                user["teams"] = json!(t);
            }
            users.push(user);
        }
    }
    let owners = spec.owners()?;
    if !owners.is_empty() {
        let owners: Vec<_> = owners
            .iter()
            .map(
                |((kind, id), owner)| json!({ "type": kind, "id": id.to_string(), "owner": owner }),
            )
            .collect();
        v["records"] = json!({ "owners": owners, "shares": [] });
    }
    serde_json::to_string(&v).map_err(|e| e.to_string())
}

/// Gateway tuning shared by both permgate variants.
#[derive(Debug, Clone)]
pub struct GatewayTuning {
    pub threads: usize,
    pub pool_size: usize,
    /// Terminate TLS with this certificate (`[listen.tls]`).
    pub tls: Option<TlsFiles>,
}

/// The test certificate every proxy terminates TLS with: a self-signed ECDSA P-256
/// certificate for `localhost` (the load generator trusts `cert`).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate, PEM.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8).
    pub key: PathBuf,
    /// Certificate then key in one file (HAProxy's `crt`).
    pub combined: PathBuf,
}

impl TlsFiles {
    /// Generate the certificate and key into `dir`.
    pub fn generate(dir: &Path) -> Result<TlsFiles, String> {
        let key = rcgen::KeyPair::generate().map_err(|e| format!("test key: {e}"))?;
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .and_then(|p| p.self_signed(&key))
            .map_err(|e| format!("test certificate: {e}"))?;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let files = TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            combined: dir.join("cert-and-key.pem"),
        };
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        for (path, text) in [
            (&files.cert, cert_pem.clone()),
            (&files.key, key_pem.clone()),
            (&files.combined, format!("{cert_pem}{key_pem}")),
        ] {
            std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(files)
    }
}

/// The demo config with our addresses and tuning; `authorize = false` swaps every route for
/// one public catch-all (canonicalization still runs; no identity, no permission).
pub fn permgate_config(
    listen: SocketAddr,
    upstream: SocketAddr,
    tuning: &GatewayTuning,
    authorize: bool,
    engine: &str,
) -> Result<String, String> {
    let mut t: toml::Table =
        toml::from_str(permgate::demo::DEMO_CONFIG).map_err(|e| e.to_string())?;
    let set =
        |t: &mut toml::Table, section: &str, key: &str, v: toml::Value| -> Result<(), String> {
            t.get_mut(section)
                .and_then(|s| s.as_table_mut())
                .ok_or_else(|| format!("demo config has no [{section}]"))?
                .insert(key.to_string(), v);
            Ok(())
        };
    set(&mut t, "listen", "address", listen.to_string().into())?;
    set(&mut t, "listen", "threads", (tuning.threads as i64).into())?;
    if let Some(tls) = &tuning.tls {
        let mut files = toml::Table::new();
        files.insert("cert_file".into(), tls.cert.display().to_string().into());
        files.insert("key_file".into(), tls.key.display().to_string().into());
        set(&mut t, "listen", "tls", toml::Value::Table(files))?;
    }
    // `hyper-nolane`: the hyper engine with every HTTP/1.1 connection on hyper's own server
    // (`listen.h1_lane = false`), to measure what the lane saves.
    let (engine, lane) = match engine {
        "hyper-nolane" => ("hyper", false),
        e => (e, true),
    };
    set(&mut t, "listen", "engine", engine.into())?;
    set(&mut t, "listen", "h1_lane", lane.into())?;
    set(&mut t, "upstream", "address", upstream.to_string().into())?;
    set(
        &mut t,
        "upstream",
        "pool_size",
        (tuning.pool_size as i64).into(),
    )?;
    set(&mut t, "snapshot", "path", "snapshot.json".into())?;
    // Like nginx's `access_log off` in its generated config: no per-request log lines, so the
    // comparison is like for like.
    let mut log = toml::Table::new();
    log.insert("target".into(), "off".into());
    t.insert("decision_log".into(), toml::Value::Table(log));
    if authorize {
        inspect_leads(&mut t)?;
    } else {
        let mut route = toml::Table::new();
        route.insert("name".into(), "passthrough".into());
        route.insert(
            "methods".into(),
            toml::Value::Array(
                ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
                    .map(toml::Value::from)
                    .to_vec(),
            ),
        );
        route.insert("path".into(), "/{*rest}".into());
        route.insert("public".into(), true.into());
        t.insert(
            "route".into(),
            toml::Value::Array(vec![toml::Value::Table(route)]),
        );
    }
    toml::to_string(&t).map_err(|e| e.to_string())
}

/// Record checks on leads, as in config/examples/scopes: `lead` ids are integers; the bulk
/// reassign is trimmed to the caller's leads (new owner in scope); the lead list is filtered.
/// Callers whose `lead.*` scope is `all` (every built-in role) keep every item.
fn inspect_leads(t: &mut toml::Table) -> Result<(), String> {
    let extra: toml::Table = toml::from_str(
        r#"
        [bulk_reassign]
        bulk = { type = "lead", items = "/ids", mode = "trim", keys = ["ids", "owner_id"] }
        new_owner = { at = "/owner_id" }
        [list]
        list = { type = "lead", items = "/items", item_id = "/id", counts = ["/total"] }
        [[record_type]]
        name = "lead"
        id = "integer"
        "#,
    )
    .map_err(|e| e.to_string())?;
    let routes = t
        .get_mut("route")
        .and_then(|r| r.as_array_mut())
        .ok_or("demo config has no routes")?;
    for (name, key) in [
        ("leads.bulk_reassign", "bulk_reassign"),
        ("leads.read", "list"),
    ] {
        let route = routes
            .iter_mut()
            .filter_map(|r| r.as_table_mut())
            .find(|r| r.get("name").and_then(|n| n.as_str()) == Some(name))
            .ok_or_else(|| format!("demo config has no route {name}"))?;
        if let Some(add) = extra.get(key).and_then(|a| a.as_table()) {
            route.extend(add.clone());
        }
    }
    // Beside the demo's own record types (deals).
    if let Some(toml::Value::Array(types)) = extra.get("record_type") {
        match t.get_mut("record_type") {
            Some(toml::Value::Array(have)) => have.extend(types.iter().cloned()),
            _ => {
                t.insert("record_type".into(), toml::Value::Array(types.clone()));
            }
        }
    }
    Ok(())
}

// ---- nginx ----------------------------------------------------------------------------------

/// nginx as a plain reverse proxy: `workers` worker processes (one: no master, so its pid is
/// the one we measure; more: a master and its workers, measured together, listening with
/// `reuseport` so the kernel spreads connections over them), no access log, upstream
/// keep-alive. `h2` is a second, HTTP/2-only (h2c) listener: nginx 1.22 cannot offer both
/// protocols on one cleartext port. With `tls`, both listeners are TLS (`ssl`; h2 by ALPN on
/// the second), with a shared session cache and session tickets (nginx's default) on.
pub fn nginx_config(
    dir: &Path,
    h1: SocketAddr,
    h2: SocketAddr,
    upstream: SocketAddr,
    max_conns: usize,
    workers: usize,
    tls: Option<&TlsFiles>,
) -> String {
    let d = dir.display();
    let workers = workers.max(1);
    let master = if workers > 1 { "on" } else { "off" };
    let reuse = if workers > 1 { " reuseport" } else { "" };
    let (ssl, ssl_conf) = match tls {
        Some(t) => (
            " ssl",
            format!(
                "  ssl_certificate {};\n  ssl_certificate_key {};\n  ssl_session_cache shared:SSL:10m;\n  ssl_session_tickets on;\n",
                t.cert.display(),
                t.key.display()
            ),
        ),
        None => ("", String::new()),
    };
    format!(
        "# generated by permgate-bench\n\
daemon off;\nmaster_process {master};\nworker_processes {workers};\nworker_rlimit_nofile {nofile};\n\
pid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
events {{ worker_connections {wc}; }}\n\
http {{\n  access_log off;\n\
  client_body_temp_path {d}/nginx-tmp/body;\n  proxy_temp_path {d}/nginx-tmp/proxy;\n\
  fastcgi_temp_path {d}/nginx-tmp/fastcgi;\n  uwsgi_temp_path {d}/nginx-tmp/uwsgi;\n  scgi_temp_path {d}/nginx-tmp/scgi;\n\
  keepalive_requests 1000000;\n  keepalive_timeout 60s;\n  http2_max_requests 1000000;\n\
  upstream crm {{ server {upstream}; keepalive 1024; keepalive_requests 1000000; }}\n{ssl_conf}\
  server {{\n    listen {h1}{ssl} backlog=4096{reuse};\n    listen {h2}{ssl} http2 backlog=4096{reuse};\n\
    location / {{ proxy_pass http://crm; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n",
        // Never above our own limit: nginx inherits it and cannot raise the hard one.
        nofile = (max_conns as u64 * 2 + 1000).min(crate::procstat::open_files_limit().unwrap_or(u64::MAX)),
        wc = max_conns * 2 + 500,
    )
}

// ---- HAProxy --------------------------------------------------------------------------------

/// Escape regex metacharacters of a literal path segment.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// HAProxy's `map_reg` returns the first regex that matches, so the routes are written most
/// specific first — the order in which permgate's trie picks: literal before `{param}` before
/// `{*rest}`, segment by segment; regex routes last, highest priority first. Keys are
/// `METHOD:path`. Public routes are left out (HAProxy then answers 403: no bench request uses
/// one).
pub fn haproxy_routes_map(config_toml: &str) -> Result<String, String> {
    let t: toml::Table = toml::from_str(config_toml).map_err(|e| e.to_string())?;
    let routes = t
        .get("route")
        .and_then(|r| r.as_array())
        .cloned()
        .unwrap_or_default();
    // (sort key, line)
    let mut templated: Vec<(Vec<u8>, String)> = Vec::new();
    let mut regexes: Vec<(i64, String)> = Vec::new();
    for r in &routes {
        let Some(perm) = r.get("permission").and_then(|p| p.as_str()) else {
            continue;
        };
        let methods: Vec<&str> = r
            .get("methods")
            .and_then(|m| m.as_array())
            .map(|a| a.iter().filter_map(|m| m.as_str()).collect())
            .unwrap_or_default();
        let m = format!("({})", methods.join("|"));
        if let Some(path) = r.get("path").and_then(|p| p.as_str()) {
            let mut key = Vec::new();
            let mut re = String::new();
            for seg in path.trim_start_matches('/').split('/') {
                re.push('/');
                if seg.starts_with("{*") {
                    key.push(2);
                    re.push_str(".+");
                } else if seg.starts_with('{') {
                    key.push(1);
                    re.push_str("[^/]+");
                } else {
                    key.push(0);
                    re.push_str(&regex_escape(seg));
                }
            }
            templated.push((key, format!("^{m}:{re}$ {perm}")));
        } else if let Some(regex) = r.get("regex").and_then(|p| p.as_str()) {
            let prio = r.get("priority").and_then(|p| p.as_integer()).unwrap_or(0);
            regexes.push((prio, format!("^{m}:{regex}$ {perm}")));
        }
    }
    templated.sort_by(|a, b| a.0.cmp(&b.0));
    regexes.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut out = String::from(
        "# generated by permgate-bench from the demo config: METHOD:path regex -> permission\n",
    );
    for (_, l) in templated {
        let _ = writeln!(out, "{l}");
    }
    for (_, l) in regexes {
        let _ = writeln!(out, "{l}");
    }
    Ok(out)
}

/// `role:permission 1` for every preset role of the built-in catalogue.
pub fn haproxy_grants_map() -> Result<String, String> {
    let catalog = permgate::catalog::Catalog::builtin().map_err(|e| format!("{e:?}"))?;
    let mut out = String::from(
        "# generated by permgate-bench from the built-in catalogue: role:permission\n",
    );
    for role in catalog.roles() {
        for p in catalog.names(&role.permissions) {
            let _ = writeln!(out, "{}:{p} 1", role.id);
        }
    }
    Ok(out)
}

/// HAProxy as the authorization proxy of shared/bench-peers/haproxy-authz.cfg: the same checks
/// (Bearer present, alg HS256, `jwt_verify`, `exp`, route → permission by `map_reg`,
/// role:permission by `map`), with our ports and secret; the route key carries the method
/// because our routes differ by method. `plain` is a frontend without checks. Both frontends
/// also get an HTTP/2-only (h2c) listener. `threads`: `nbthread`. With `tls`, every listener
/// is TLS (`ssl crt`, ALPN `http/1.1` on the first and `h2` on the second), with HAProxy's
/// defaults for resumption (session cache and TLS tickets on).
#[allow(clippy::too_many_arguments)]
pub fn haproxy_config(
    dir: &Path,
    authz: (SocketAddr, SocketAddr),
    plain: (SocketAddr, SocketAddr),
    upstream: SocketAddr,
    secret: &str,
    max_conns: usize,
    threads: usize,
    tls: Option<&TlsFiles>,
) -> String {
    let d = dir.display();
    let (ssl1, ssl2, h2) = match tls {
        Some(t) => {
            let crt = format!(" ssl crt {}", t.combined.display());
            (format!("{crt} alpn http/1.1"), format!("{crt} alpn h2"), "")
        }
        None => (String::new(), String::new(), " proto h2"),
    };
    format!(
        "# generated by permgate-bench from shared/bench-peers/haproxy-authz.cfg\n\
global\n  nbthread {threads}\n  maxconn {max_conns}\n\
  # HAProxy reserves 2 fds per connection; 10,000 idle ones fit a 20,000 limit anyway.\n\
  no strict-limits\n\
defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
  option http-keep-alive\n  http-reuse always\n\
frontend fe\n  bind {a1}{ssl1}\n  bind {a2}{h2}{ssl2}\n\
  http-request set-var(txn.bearer) http_auth_bearer\n\
  http-request deny deny_status 401 unless {{ var(txn.bearer) -m found }}\n\
  http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_header_query('$.alg') -m str HS256 }}\n\
  http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_verify(\"HS256\",\"{secret}\") -m int 1 }}\n\
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')\n\
  http-request set-var(txn.now) date\n\
  http-request deny deny_status 401 if {{ var(txn.exp),sub(txn.now) -m int lt 0 }}\n\
  http-request set-var(txn.role) var(txn.bearer),jwt_payload_query('$.role')\n\
  http-request set-var(txn.path) path\n\
  http-request set-var(txn.perm) method,concat(:,txn.path),map_reg({d}/routes.map)\n\
  http-request deny deny_status 403 unless {{ var(txn.perm) -m found }}\n\
  http-request set-var(txn.key) var(txn.role),concat(:,txn.perm)\n\
  http-request deny deny_status 403 unless {{ var(txn.key),map({d}/grants.map) -m found }}\n\
  http-request del-header X-User-Id\n\
  default_backend be\n\
frontend plain\n  bind {p1}{ssl1}\n  bind {p2}{h2}{ssl2}\n  default_backend be\n\
backend be\n  server s1 {upstream} maxconn 1000\n",
        a1 = authz.0,
        a2 = authz.1,
        p1 = plain.0,
        p2 = plain.1,
        threads = threads.max(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_map_puts_literals_first() {
        let map = haproxy_routes_map(permgate::demo::DEMO_CONFIG).unwrap();
        let pos = |needle: &str| {
            map.find(needle)
                .unwrap_or_else(|| panic!("{needle} missing"))
        };
        assert!(
            pos("^(POST):/api/v1/customers/bulk-delete$")
                < pos("^(POST):/api/v1/customers/[^/]+/subscribe$")
        );
        assert!(pos("^(GET):/api/v1/customers/[^/]+$ company.view_customer_management_list") > 0);
        assert!(map.trim_end().ends_with("company.access_analytics"));
    }

    #[test]
    fn grants_cover_presets() {
        let g = haproxy_grants_map().unwrap();
        assert!(g.contains("sales_rep:company.view_customer_management_list 1"));
        assert!(!g.contains("sales_rep:campaign.delete 1"));
        assert!(g.contains("admin:campaign.delete 1"));
    }

    #[test]
    fn configs_generate() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let tuning = GatewayTuning {
            threads: 1,
            pool_size: 64,
            tls: None,
        };
        let on = permgate_config(a, a, &tuning, true, "hyper").unwrap();
        let off = permgate_config(a, a, &tuning, false, "hyper").unwrap();
        assert!(on.matches("[[route]]").count() > 80);
        assert_eq!(off.matches("[[route]]").count(), 1);
        let s = snapshot_with(&BTreeMap::from([("sales_rep".to_string(), 3)])).unwrap();
        assert!(s.contains("u-bench-sales_rep-00002"));
        // Record checks on leads only where authorizing.
        assert!(on.contains("name = \"lead\"") && !off.contains("name = \"lead\""));
        let t: toml::Table = toml::from_str(&on).unwrap();
        let route = |name: &str| {
            t["route"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"].as_str() == Some(name))
                .unwrap()
                .clone()
        };
        assert_eq!(
            route("leads.bulk_reassign")["bulk"]["mode"].as_str(),
            Some("trim")
        );
        assert_eq!(
            route("leads.read")["list"]["items"].as_str(),
            Some("/items")
        );
    }

    /// `--threads 2` and `--tls` reach every proxy's config: permgate `threads` and
    /// `[listen.tls]`, nginx two workers under a master with `ssl` listeners, HAProxy
    /// `nbthread 2` with `ssl crt` binds.
    #[test]
    fn threads_and_tls_reach_every_peer() {
        let dir = std::env::temp_dir().join(format!("permgate-bench-peers-{}", std::process::id()));
        let tls = TlsFiles::generate(&dir).unwrap();
        let combined = std::fs::read_to_string(&tls.combined).unwrap();
        assert!(combined.contains("BEGIN CERTIFICATE") && combined.contains("PRIVATE KEY"));
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let tuning = GatewayTuning {
            threads: 2,
            pool_size: 64,
            tls: Some(tls.clone()),
        };
        let t: toml::Table =
            toml::from_str(&permgate_config(a, a, &tuning, true, "hyper").unwrap()).unwrap();
        assert_eq!(t["listen"]["threads"].as_integer(), Some(2));
        assert_eq!(
            t["listen"]["tls"]["cert_file"].as_str(),
            Some(tls.cert.display().to_string().as_str())
        );
        let n = nginx_config(&dir, a, a, a, 100, 2, Some(&tls));
        assert!(n.contains("master_process on;") && n.contains("worker_processes 2;"));
        assert_eq!(n.matches(" ssl backlog=4096 reuseport;").count(), 1);
        assert_eq!(n.matches(" ssl http2 backlog=4096 reuseport;").count(), 1);
        assert!(n.contains("ssl_certificate_key"));
        let n1 = nginx_config(&dir, a, a, a, 100, 1, None);
        assert!(n1.contains("master_process off;") && n1.contains("worker_processes 1;"));
        assert!(!n1.contains("ssl") && !n1.contains("reuseport"));
        let h = haproxy_config(&dir, (a, a), (a, a), a, "s", 100, 2, Some(&tls));
        assert!(h.contains("nbthread 2\n"));
        assert_eq!(h.matches(" ssl crt ").count(), 4);
        assert!(!h.contains("proto h2"));
        let h1 = haproxy_config(&dir, (a, a), (a, a), a, "s", 100, 1, None);
        assert!(h1.contains("nbthread 1\n") && h1.matches("proto h2").count() == 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn snapshot_additions() {
        let spec = SnapshotSpec {
            roles: vec![crate::scenario::RoleSpec {
                id: "team_rep".into(),
                name: String::new(),
                permissions: vec!["lead.view@team".into()],
            }],
            teams: BTreeMap::from([("team_rep".to_string(), vec!["east".to_string()])]),
            records: vec![crate::scenario::RecordsSpec {
                kind: "lead".into(),
                ids: "1..3".into(),
                owners: vec!["u-rep1".into(), "u-admin".into()],
            }],
        };
        let s = snapshot_for(&BTreeMap::from([("team_rep".to_string(), 2)]), &spec).unwrap();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        let role = v["roles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == "team_rep");
        assert_eq!(role.unwrap()["name"], "team_rep");
        let user = v["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["id"] == "u-bench-team_rep-00001")
            .unwrap();
        assert_eq!(user["teams"], json!(["east"]));
        assert_eq!(
            v["records"]["owners"],
            json!([
                {"type": "lead", "id": "1", "owner": "u-rep1"},
                {"type": "lead", "id": "2", "owner": "u-admin"},
                {"type": "lead", "id": "3", "owner": "u-rep1"},
            ])
        );
    }
}

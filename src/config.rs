//! Loading the config. The core compiles it ([`permgate_core::config`], re-exported here);
//! this adds what only the server build knows: whether it has the engine the config names, and
//! whether the database driver takes the URL.

use std::path::Path;

pub use permgate_core::config::*;

/// Read and compile the config file at `path` (relative paths inside resolve from its folder),
/// with the server's checks.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError::new(
            &file,
            None,
            "",
            format!("cannot read: {e}"),
        )]
    })?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    parse(&file, &text, base)
}

/// Compile config text (`base` resolves the relative paths it names), with the server's checks.
pub fn parse(file: &str, text: &str, base: &Path) -> Result<Config, Vec<ConfigError>> {
    let compiled = Config::parse(file, text, base);
    let mut errors = server_checks(file, text);
    match compiled {
        Ok(config) if errors.is_empty() => Ok(config),
        Ok(_) => Err(errors),
        Err(mut e) => {
            e.append(&mut errors);
            Err(e)
        }
    }
}

/// What the core cannot check: the engines this build has, the database driver's URL syntax.
/// Read from the TOML itself, so they are reported even beside the core's errors.
fn server_checks(file: &str, text: &str) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let Ok(table) = toml::from_str::<toml::Table>(text) else {
        return errors; // the core reported it
    };
    let get = |table_path: &[&str], key: &str| -> Option<&toml::Value> {
        let mut t = &table;
        for k in table_path {
            t = t.get(*k)?.as_table()?;
        }
        t.get(key)
    };
    if !cfg!(feature = "pingora")
        && get(&["listen"], "engine").and_then(toml::Value::as_str) == Some("pingora")
    {
        errors.push(ConfigError::new(
            file,
            locate(text, "listen.engine"),
            "listen.engine",
            "this build has no Pingora engine (it is built only with the cargo feature \
             `pingora`); use \"hyper\", the default",
        ));
    }
    if let Some(url) = get(&["snapshot", "database"], "url").and_then(toml::Value::as_str) {
        // A URL without the scheme is the core's error already.
        let schemed = url.starts_with("postgres://") || url.starts_with("postgresql://");
        if schemed && url.parse::<tokio_postgres::Config>().is_err() {
            errors.push(ConfigError::new(
                file,
                locate(text, "snapshot.database.url"),
                "snapshot.database.url",
                "must be a postgres:// URL (postgres://user:password@host:port/dbname)",
            ));
        }
        // The URL's own sslmode is not how TLS is asked for here: say so, not a silent
        // plain connection or a failing one.
        let tls = get(&["snapshot", "database"], "tls").and_then(toml::Value::as_str);
        let asks_tls = url
            .parse::<tokio_postgres::Config>()
            .is_ok_and(|c| c.get_ssl_mode() == tokio_postgres::config::SslMode::Require);
        if asks_tls && tls.is_none_or(|t| t == "off") {
            errors.push(ConfigError::new(
                file,
                locate(text, "snapshot.database.url"),
                "snapshot.database.url",
                "sslmode in the URL is not followed: set snapshot.database.tls = \"require\" \
                 or \"verify-full\" (with ca_file)",
            ));
        }
    }
    errors
}

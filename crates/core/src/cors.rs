//! CORS for browser front ends on another origin (`[cors]`), free of any I/O: which origins,
//! methods and headers are allowed, the answer to a preflight, and the headers every answer to
//! an allowed origin carries (the gateway's own refusals too, so a page can read a 401).
//!
//! CORS is not access control: it only tells a browser which pages may read an answer. A call
//! from an origin that is not allowed is decided as any other; its answer just carries no CORS
//! header.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS,
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::Method;
use serde::Deserialize;
use toml::Spanned;

use crate::error::{line_of, locate, ConfigError};
use crate::headers::HeaderSet;
use crate::reject::Rejection;

/// The error code of a refused preflight.
pub const FORBIDDEN_CODE: &str = "cors_forbidden";

/// The longest `max_age_seconds` (a day; browsers cap it lower anyway).
const MAX_AGE_LIMIT: u32 = 86_400;

/// `[cors]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    #[serde(default)]
    allowed_origins: Vec<Spanned<String>>,
    #[serde(default)]
    allowed_methods: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    allowed_headers: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    exposed_headers: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    allow_credentials: bool,
    #[serde(default = "default_max_age")]
    max_age_seconds: u32,
    #[serde(default)]
    mode: Option<Spanned<String>>,
}

fn default_max_age() -> u32 {
    600
}

/// The methods allowed when `allowed_methods` is not set.
pub const DEFAULT_METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];
/// The request headers allowed when `allowed_headers` is not set.
pub const DEFAULT_HEADERS: [&str; 2] = ["authorization", "content-type"];

/// Who answers a preflight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The gateway, on any path, without a route and without forwarding anything.
    Gateway,
    /// The CRM: a preflight is forwarded without credentials and without a route.
    Crm,
}

/// `[cors]`, validated.
#[derive(Debug, Clone)]
pub struct Cors {
    pub mode: Mode,
    /// Exact origins (`scheme://host[:port]`, lowercase).
    origins: Vec<Box<[u8]>>,
    /// `"*"`: any origin (only without credentials); the origin is echoed.
    any_origin: bool,
    methods: Vec<Method>,
    allow_methods: HeaderValue,
    headers: HeaderSet,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

const TRUE: HeaderValue = HeaderValue::from_static("true");
const VARY_ORIGIN: HeaderValue = HeaderValue::from_static("Origin");

/// Is an origin as configured well formed: `http(s)://host[:port]`, nothing after?
fn origin_ok(o: &str) -> Result<(), &'static str> {
    let rest = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
        .ok_or("an origin is http:// or https:// then a host (\"https://app.example.com\")")?;
    if rest.is_empty() {
        return Err("the origin has no host");
    }
    if rest.contains(['/', '?', '#', '@', ' ', '*']) {
        return Err("an origin is scheme://host[:port], with no path, slash, query or wildcard");
    }
    if let Some((_, port)) = rest.rsplit_once(':').filter(|_| !rest.ends_with(']')) {
        if port.parse::<u16>().is_err() {
            return Err("the origin's port is not a number");
        }
    }
    Ok(())
}

/// A list of names as one header value (`a, b, c`).
fn joined<'a>(names: impl Iterator<Item = &'a str>) -> Option<HeaderValue> {
    let s = names.collect::<Vec<_>>().join(", ");
    if s.is_empty() {
        None
    } else {
        HeaderValue::from_str(&s).ok()
    }
}

impl RawCors {
    /// Validate `[cors]`; `request_id_header` is exposed by default.
    pub fn build(
        &self,
        file: &str,
        text: &str,
        request_id_header: &str,
    ) -> Result<Cors, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let at = |s: &Spanned<String>, field: &str| {
            if s.span().end > 0 {
                Some(line_of(text, s.span().start))
            } else {
                locate(text, field)
            }
        };
        let mode = match self.mode.as_ref().map(|m| (m, m.get_ref().as_str())) {
            None | Some((_, "gateway")) => Mode::Gateway,
            Some((_, "crm")) => Mode::Crm,
            Some((m, other)) => {
                errors.push(ConfigError::new(
                    file,
                    at(m, "cors.mode"),
                    "cors.mode",
                    format!("'{other}' is not a mode: \"gateway\" or \"crm\""),
                ));
                Mode::Gateway
            }
        };
        let mut origins = Vec::new();
        let mut any_origin = false;
        for o in &self.allowed_origins {
            let v = o.get_ref();
            if v == "*" {
                any_origin = true;
                if self.allow_credentials {
                    errors.push(ConfigError::new(
                        file,
                        at(o, "cors.allowed_origins"),
                        "cors.allowed_origins",
                        "\"*\" with allow_credentials = true would let every web site act with the user's credentials: list the origins",
                    ));
                }
                continue;
            }
            if v == "null" {
                errors.push(ConfigError::new(
                    file,
                    at(o, "cors.allowed_origins"),
                    "cors.allowed_origins",
                    "\"null\" is the origin of sandboxed frames and local files, which any site can produce: not allowed",
                ));
                continue;
            }
            match origin_ok(v) {
                Ok(()) => origins.push(v.to_ascii_lowercase().into_bytes().into_boxed_slice()),
                Err(why) => errors.push(ConfigError::new(
                    file,
                    at(o, "cors.allowed_origins"),
                    "cors.allowed_origins",
                    format!("'{v}': {why}"),
                )),
            }
        }
        if self.allowed_origins.is_empty() {
            errors.push(ConfigError::new(
                file,
                locate(text, "cors.allowed_origins"),
                "cors.allowed_origins",
                "[cors] needs at least one origin (\"https://app.example.com\")",
            ));
        }
        let mut methods = Vec::new();
        match &self.allowed_methods {
            None => methods.extend(DEFAULT_METHODS.map(|m| Method::from_bytes(m.as_bytes()))),
            Some(list) => {
                for m in list {
                    match Method::from_bytes(m.get_ref().as_bytes()) {
                        Ok(method) if m.get_ref() != "*" => methods.push(Ok(method)),
                        _ => errors.push(ConfigError::new(
                            file,
                            at(m, "cors.allowed_methods"),
                            "cors.allowed_methods",
                            format!("'{}' is not a method name", m.get_ref()),
                        )),
                    }
                }
            }
        }
        let methods: Vec<Method> = methods.into_iter().flatten().collect();
        let names = |list: &Option<Vec<Spanned<String>>>,
                     default: &[&'static str],
                     field: &str,
                     errors: &mut Vec<ConfigError>| {
            let mut out = Vec::new();
            match list {
                None => out.extend(default.iter().map(|d| HeaderName::from_static(d))),
                Some(list) => {
                    for n in list {
                        match HeaderName::from_bytes(n.get_ref().as_bytes()) {
                            Ok(h) => out.push(h),
                            Err(_) => errors.push(ConfigError::new(
                                file,
                                at(n, field),
                                field,
                                format!("'{}' is not a header name", n.get_ref()),
                            )),
                        }
                    }
                }
            }
            out
        };
        let headers = names(
            &self.allowed_headers,
            &DEFAULT_HEADERS,
            "cors.allowed_headers",
            &mut errors,
        );
        let mut exposed = names(
            &self.exposed_headers,
            &[],
            "cors.exposed_headers",
            &mut errors,
        );
        if self.exposed_headers.is_none() {
            exposed = [
                request_id_header,
                crate::headers::REMOVED_COUNT,
                crate::headers::REMOVED_IDS,
                "retry-after",
            ]
            .iter()
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        }
        if self.max_age_seconds > MAX_AGE_LIMIT {
            errors.push(ConfigError::new(
                file,
                locate(text, "cors.max_age_seconds"),
                "cors.max_age_seconds",
                format!("at most {MAX_AGE_LIMIT} (a day)"),
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Cors {
            mode,
            origins,
            any_origin,
            allow_methods: joined(methods.iter().map(Method::as_str))
                .unwrap_or(HeaderValue::from_static("GET")),
            methods,
            allow_headers: joined(headers.iter().map(HeaderName::as_str)),
            headers: HeaderSet::new(headers),
            expose_headers: joined(exposed.iter().map(HeaderName::as_str)),
            credentials: self.allow_credentials,
            max_age: HeaderValue::from(self.max_age_seconds),
        })
    }
}

/// Is this a CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`?
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(ORIGIN)
        && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// Is this a CORS header (`Access-Control-*`), which the gateway alone sets on a forwarded
/// answer?
pub fn is_cors_header(name: &str) -> bool {
    name.len() > 15 && name.as_bytes()[..15].eq_ignore_ascii_case(b"access-control-")
}

impl Cors {
    /// The request's `Origin` when it is allowed (exactly one, matched byte for byte after
    /// lowercasing; any when `"*"` is configured).
    pub fn allowed_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let mut all = headers.get_all(ORIGIN).iter();
        let origin = all.next()?;
        if all.next().is_some() {
            return None;
        }
        let bytes = origin.as_bytes();
        let known = self
            .origins
            .iter()
            .any(|o| o.len() == bytes.len() && o.eq_ignore_ascii_case(bytes));
        // `null` (sandboxed frames, local files) is never allowed, not even by `"*"`.
        (known || (self.any_origin && bytes != b"null" && !bytes.is_empty()))
            .then(|| origin.clone())
    }

    /// Decide a preflight answered by the gateway: the origin, the requested method and every
    /// requested header must be allowed; else 403 `cors_forbidden` (no CORS header).
    pub fn check_preflight(&self, headers: &HeaderMap) -> Result<HeaderValue, Rejection> {
        let refuse = |why: String| Rejection::new(403, FORBIDDEN_CODE, why);
        let origin = self.allowed_origin(headers).ok_or_else(|| {
            refuse("this origin may not call the API from a browser (cors.allowed_origins)".into())
        })?;
        let mut requested = headers.get_all(ACCESS_CONTROL_REQUEST_METHOD).iter();
        let method = match (requested.next(), requested.next()) {
            (Some(m), None) => m.as_bytes(),
            _ => return Err(refuse("one Access-Control-Request-Method is needed".into())),
        };
        if !self.methods.iter().any(|m| m.as_str().as_bytes() == method) {
            return Err(refuse(format!(
                "the method '{}' is not allowed from a browser (cors.allowed_methods)",
                String::from_utf8_lossy(method)
            )));
        }
        for value in headers.get_all(ACCESS_CONTROL_REQUEST_HEADERS) {
            let list = value
                .to_str()
                .map_err(|_| refuse("Access-Control-Request-Headers is not readable".into()))?;
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let lower = name.to_ascii_lowercase();
                if !self.headers.contains(&lower) {
                    return Err(refuse(format!(
                        "the header '{lower}' is not allowed from a browser (cors.allowed_headers)"
                    )));
                }
            }
        }
        Ok(origin)
    }

    /// The CORS headers of an answer to an allowed `origin` (a preflight's also name the
    /// allowed methods and headers and the max age). `Vary` is to be appended, the others set.
    pub fn headers<'a>(
        &'a self,
        origin: &'a HeaderValue,
        preflight: bool,
    ) -> impl Iterator<Item = (HeaderName, HeaderValue)> + 'a {
        [
            Some((ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())),
            Some((VARY, VARY_ORIGIN)),
            self.credentials
                .then_some((ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE)),
            self.expose_headers
                .clone()
                .filter(|_| !preflight)
                .map(|v| (ACCESS_CONTROL_EXPOSE_HEADERS, v)),
            preflight.then(|| (ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone())),
            self.allow_headers
                .clone()
                .filter(|_| preflight)
                .map(|v| (ACCESS_CONTROL_ALLOW_HEADERS, v)),
            preflight.then(|| (ACCESS_CONTROL_MAX_AGE, self.max_age.clone())),
        ]
        .into_iter()
        .flatten()
    }

    /// Set the CORS headers of an answer to `origin` in `headers`: the CRM's own
    /// `Access-Control-*` headers are dropped first when `replace` (one source of truth).
    pub fn apply(
        &self,
        headers: &mut HeaderMap,
        origin: Option<&HeaderValue>,
        preflight: bool,
        replace: bool,
    ) {
        if replace {
            let theirs: Vec<HeaderName> = headers
                .keys()
                .filter(|n| is_cors_header(n.as_str()))
                .cloned()
                .collect();
            for n in theirs {
                headers.remove(n);
            }
        }
        let Some(origin) = origin else { return };
        for (name, value) in self.headers(origin, preflight) {
            if name == VARY {
                headers.append(name, value);
            } else {
                headers.insert(name, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(toml_text: &str) -> Result<Cors, Vec<ConfigError>> {
        #[derive(Deserialize)]
        struct Doc {
            cors: RawCors,
        }
        let doc: Doc = toml::from_str(toml_text).unwrap();
        doc.cors.build("c.toml", toml_text, "x-request-id")
    }

    fn req(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn origins_are_exact_and_star_never_goes_with_credentials() {
        let c = build("[cors]\nallowed_origins = [\"https://App.example.com\"]\n").unwrap();
        assert_eq!(c.mode, Mode::Gateway);
        let ok = req(&[("origin", "https://app.example.com")]);
        assert_eq!(c.allowed_origin(&ok).unwrap(), "https://app.example.com");
        for bad in [
            "https://app.example.com.evil.test",
            "http://app.example.com",
            "https://app.example.com:444",
            "null",
        ] {
            assert!(
                c.allowed_origin(&req(&[("origin", bad)])).is_none(),
                "{bad}"
            );
        }
        let two = req(&[
            ("origin", "https://app.example.com"),
            ("origin", "https://app.example.com"),
        ]);
        assert!(c.allowed_origin(&two).is_none(), "two Origin headers");

        let e = build("[cors]\nallow_credentials = true\nallowed_origins = [\"*\"]\n").unwrap_err();
        assert_eq!(e[0].field, "cors.allowed_origins");
        assert_eq!(e[0].line, Some(3), "{e:?}");
        let any = build("[cors]\nallowed_origins = [\"*\"]\n").unwrap();
        assert!(any.allowed_origin(&req(&[("origin", "null")])).is_none());
        assert!(any
            .allowed_origin(&req(&[("origin", "https://x.test")]))
            .is_some());
        for bad in [
            "\"https://a.test/\"",
            "\"a.test\"",
            "\"https://a.test:x\"",
            "\"null\"",
        ] {
            let e = build(&format!("[cors]\nallowed_origins = [{bad}]\n")).unwrap_err();
            assert_eq!(e[0].line, Some(2), "{bad}: {e:?}");
        }
        let e = build("[cors]\nmode = \"browser\"\nallowed_origins = [\"https://a.test\"]\n")
            .unwrap_err();
        assert_eq!((e[0].field.as_str(), e[0].line), ("cors.mode", Some(2)));
        assert!(build("[cors]\n").is_err(), "no origin");
        assert!(
            build("[cors]\nallowed_origins = [\"https://a.test\"]\nmax_age_seconds = 90000\n")
                .is_err()
        );
    }

    #[test]
    fn preflight_checks_origin_method_and_every_header() {
        let c = build(
            "[cors]\nallowed_origins = [\"https://a.test\"]\nallowed_headers = [\"Content-Type\", \"authorization\", \"x-trace\"]\nallow_credentials = true\nmax_age_seconds = 60\n",
        )
        .unwrap();
        let pre = |origin: &str, method: &str, hdrs: &str| {
            let mut h = req(&[
                ("origin", origin),
                ("access-control-request-method", method),
            ]);
            if !hdrs.is_empty() {
                h.append(
                    "access-control-request-headers",
                    HeaderValue::from_str(hdrs).unwrap(),
                );
            }
            assert!(is_preflight(&Method::OPTIONS, &h));
            c.check_preflight(&h)
        };
        let origin = pre("https://a.test", "PATCH", "X-Trace, content-type").unwrap();
        let mut out = HeaderMap::new();
        out.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        c.apply(&mut out, Some(&origin), true, true);
        assert_eq!(out[ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.test");
        assert_eq!(out.get_all(VARY).iter().count(), 2);
        assert_eq!(out[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(
            out[ACCESS_CONTROL_ALLOW_METHODS],
            "GET, HEAD, POST, PUT, PATCH, DELETE"
        );
        assert_eq!(
            out[ACCESS_CONTROL_ALLOW_HEADERS],
            "content-type, authorization, x-trace"
        );
        assert_eq!(out[ACCESS_CONTROL_MAX_AGE], "60");
        for (o, m, h) in [
            ("https://b.test", "GET", ""),
            ("https://a.test", "TRACE", ""),
            ("https://a.test", "get", ""),
            ("https://a.test", "GET", "x-other"),
            ("https://a.test", "GET", "content-type, x-api-key"),
        ] {
            let e = pre(o, m, h).unwrap_err();
            assert_eq!((e.status, e.code), (403, FORBIDDEN_CODE), "{o} {m} {h}");
        }
        assert!(!is_preflight(
            &Method::OPTIONS,
            &req(&[("origin", "https://a.test")])
        ));
    }

    #[test]
    fn answers_expose_the_gateway_headers_and_drop_the_crm_ones() {
        let c = build("[cors]\nallowed_origins = [\"https://a.test\"]\nmode = \"crm\"\n").unwrap();
        assert_eq!(c.mode, Mode::Crm);
        let origin = HeaderValue::from_static("https://a.test");
        let mut out = HeaderMap::new();
        out.insert(
            ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("https://evil.test"),
        );
        out.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("TRACE"),
        );
        c.apply(&mut out, Some(&origin), false, true);
        assert_eq!(out[ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.test");
        assert!(out.get(ACCESS_CONTROL_ALLOW_METHODS).is_none());
        assert!(out.get(ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
        assert_eq!(
            out[ACCESS_CONTROL_EXPOSE_HEADERS],
            "x-request-id, x-permgate-removed-count, x-permgate-removed-ids, retry-after"
        );
        // An origin not allowed: the CRM's headers go, none are added.
        let mut out = HeaderMap::new();
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        c.apply(&mut out, None, false, true);
        assert!(out.is_empty());
        assert!(is_cors_header("Access-Control-Allow-Origin"));
        assert!(!is_cors_header("access-control-"));
    }
}

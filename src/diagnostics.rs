//! The gateway's own diagnostics: what it says on stderr about itself (startup, reloads, refused
//! changes, upstream failures), through `tracing`. Not the decision log ([`crate::decision_log`]:
//! one JSON line per decision, its own writer and format), which is untouched by this.
//!
//! - The level: `RUST_LOG`, as with env_logger before (`info` when unset; `debug`,
//!   `permgate=debug,info`, `permgate::plane=warn`, …; a directive that does not parse is
//!   ignored with a warning on stderr).
//! - The format: one line per event, `<RFC 3339 UTC time>  <LEVEL> <spans>: <target>: <message>
//!   <fields>`, no colours, on stderr (stdout is the decision log's default target).
//! - The request id: every warning or error about one request carries it as the field
//!   `request_id` (the id the client got in `x-request-id` and the rejection body), on every data
//!   plane. The hyper plane and its HTTP/1.1 lane also run each request's handling inside a [`request_span`], so a
//!   debug line from code that does not know the request (the CRM connection pool, say) names it
//!   too when debug is on.
//!
//! The span is debug-level on purpose: at the default `info` it is disabled, which costs one
//! relaxed load of the global max level and no allocation (crates/alloc-count/tests/allocations.rs holds this); an
//! enabled span allocates its formatted fields per request, which only someone debugging pays.

use tracing::Span;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

/// The subscriber the binary installs: `filter` holds `RUST_LOG`'s directives (`""`: `info`).
pub fn subscriber(filter: &str) -> impl tracing::Subscriber + Send + Sync + 'static {
    subscriber_to(filter, std::io::stderr)
}

/// [`subscriber`], writing to `writer` (the tests read what it wrote).
pub fn subscriber_to<W>(filter: &str, writer: W) -> impl tracing::Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .parse_lossy(filter);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .finish()
}

/// Install [`subscriber`] with `RUST_LOG` for the whole process, and the bridge that turns
/// dependencies' `log` records into events of the same subscriber. Once; a second call does
/// nothing.
pub fn init() {
    let filter = std::env::var(EnvFilter::DEFAULT_ENV).unwrap_or_default();
    // Err only when a subscriber is already installed: then that one stays.
    let _ = subscriber(&filter).try_init();
}

/// The span one request's handling runs in, named `request` with the field `request_id`.
/// Its target is `permgate::request`: disabled (no allocation, nothing recorded) unless debug is
/// on for it (`RUST_LOG=debug`, `permgate=debug`, `info,permgate::request=debug`).
#[inline]
pub fn request_span(request_id: &str) -> Span {
    tracing::debug_span!(target: "permgate::request", "request", request_id = %request_id)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What a subscriber wrote, shared with the test.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What `filter` lets through of: a warning with the `request_id` field outside the span,
    /// then a debug line and a warning inside a request's span.
    fn written(filter: &str) -> String {
        let out = Buffer::default();
        let to = out.clone();
        let subscriber = subscriber_to(filter, move || to.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(request_id = %"00ab34cd56ef7890", "upstream failure: refused");
            let span = request_span("1234567890abcdef");
            let _in = span.enter();
            tracing::debug!("a pooled CRM connection closed before an answer; sent again");
            tracing::warn!("inside");
        });
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn info_by_default_with_the_request_id_as_a_field() {
        let text = written("");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        // `<time>  WARN <target>: <message> request_id=<id>`; the span is off at info.
        assert!(
            lines[0].contains(" WARN permgate::diagnostics::tests: upstream failure: refused request_id=00ab34cd56ef7890"),
            "{text}"
        );
        assert!(
            lines[1].ends_with(" WARN permgate::diagnostics::tests: inside"),
            "{text}"
        );
        assert!(!text.contains("request{"), "{text}");
    }

    #[test]
    fn debug_puts_each_line_of_a_request_in_its_span() {
        for filter in [
            "debug",
            "permgate=debug",
            "info,permgate::request=debug,permgate::diagnostics=debug",
        ] {
            let text = written(filter);
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 3, "{filter}: {text}");
            assert!(lines[1].contains(" DEBUG request{request_id=1234567890abcdef}: permgate::diagnostics::tests: a pooled CRM"), "{filter}: {text}");
            assert!(lines[2].contains(" WARN request{request_id=1234567890abcdef}: permgate::diagnostics::tests: inside"), "{filter}: {text}");
        }
    }

    #[test]
    fn a_directive_that_does_not_parse_is_ignored() {
        // env_logger did the same: the rest of the directives stay.
        let text = written("debug,permgate=[[[");
        assert_eq!(text.lines().count(), 3, "{text}");
    }
}

//! What a consumer's request line carries (`meshgov_sidecar::request`): the
//! path (route and port name), the query string (`from`, `to`, `limit`), the
//! `Accept` header, and percent-decoding.
//!
//! Invariants: no panic; a routed port name is a plain name (no `/`, `.`,
//! `%` or control bytes: no path traversal into the upstream); a parsed
//! window has `from < to` and a limit within bounds; error messages, which
//! are echoed to the consumer and logged, carry no control characters and
//! stay short.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgov_sidecar::request::{
    MAX_PORT_NAME, Route, RouteError, format_from_accept, parse_records_query, percent_decode,
    route, valid_port_name,
};

const MAX_LIMIT: u64 = 1000;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `path?query` as on the request line; the Accept header after a newline.
    let (line, accept) = text.split_once('\n').unwrap_or((text, ""));
    let (path, query) = match line.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (line, None),
    };
    for method in [http::Method::GET, http::Method::POST, http::Method::PUT] {
        match route(&method, path) {
            Ok(Route::Records { port } | Route::Aggregate { port }) => {
                assert!(valid_port_name(&port), "routed a bad port name {port:?}");
                assert!(
                    port.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                    "port name {port:?} could leave the port's directory"
                );
                assert!(
                    path.ends_with(&format!("/{port}/records"))
                        || path.ends_with(&format!("/{port}/aggregate"))
                );
            }
            Err(RouteError::BadPort(shown)) => {
                assert!(shown.chars().count() <= MAX_PORT_NAME);
            }
            _ => {}
        }
    }
    match parse_records_query(query, MAX_LIMIT) {
        Ok(q) => {
            if let (Some(f), Some(t)) = (q.from, q.to) {
                assert!(f < t);
            }
            assert!(q.limit.is_none_or(|l| (1..=MAX_LIMIT).contains(&l)));
        }
        Err(message) => {
            assert!(
                !message.chars().any(char::is_control),
                "a control character reaches an error message: {message:?}"
            );
            assert!(
                message.len() <= 512,
                "an error message of {} bytes",
                message.len()
            );
        }
    }
    if let Some(decoded) = percent_decode(line) {
        // Decoding never grows the text.
        assert!(decoded.len() <= line.len());
    }
    let _ = format_from_accept(Some(accept));
});

//! Parsing what a consumer asked for: the route, the port name, the time
//! window, the limit and the output format. Pure functions over strings, so
//! they are property-tested; every failure is a 4xx reason.

use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime};

/// What a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Discovery,
    Healthz,
    Readyz,
    Records { port: String },
    Aggregate { port: String },
}

/// Why a route was refused before any policy was consulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    NotFound,
    MethodNotAllowed,
    BadPort(String),
}

/// The longest port name accepted.
pub const MAX_PORT_NAME: usize = 64;

/// Port names are ASCII letters, digits, `-` and `_`; this refuses
/// traversal (`..`, `/`), percent-encoding and control bytes up front.
pub fn valid_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_PORT_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Maps a method and path to a route.
pub fn route(method: &http::Method, path: &str) -> Result<Route, RouteError> {
    let get = method == http::Method::GET || method == http::Method::HEAD;
    let want_get = |r: Route| {
        if get {
            Ok(r)
        } else {
            Err(RouteError::MethodNotAllowed)
        }
    };
    match path {
        "/" => return want_get(Route::Discovery),
        "/healthz" => return want_get(Route::Healthz),
        "/readyz" => return want_get(Route::Readyz),
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/v1/ports/") else {
        return Err(RouteError::NotFound);
    };
    let (port, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if tail != "records" && tail != "aggregate" {
        return Err(RouteError::NotFound);
    }
    if !valid_port_name(port) {
        return Err(RouteError::BadPort(
            port.chars().take(MAX_PORT_NAME).collect(),
        ));
    }
    let port = port.to_string();
    match (tail, method) {
        ("records", _) => want_get(Route::Records { port }),
        ("aggregate", &http::Method::POST) => Ok(Route::Aggregate { port }),
        _ => Err(RouteError::MethodNotAllowed),
    }
}

/// The parameters of a records read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordsQuery {
    /// Inclusive start of the window.
    pub from: Option<OffsetDateTime>,
    /// Exclusive end of the window.
    pub to: Option<OffsetDateTime>,
    pub limit: Option<u64>,
    /// `fields=`: a projection, as written.
    pub fields: Option<String>,
    /// `filter=`: conditions on the fields the consumer sees, as written.
    pub filter: Option<String>,
    /// `order_by=`, as written.
    pub order_by: Option<String>,
    /// `offset=`: rows to skip.
    pub offset: Option<u64>,
    /// `cursor=`: where the previous page ended.
    pub cursor: Option<String>,
}

impl RecordsQuery {
    /// Whether the read asks for more than a window and a limit.
    pub fn shapes_the_answer(&self) -> bool {
        self.fields.is_some()
            || self.filter.is_some()
            || self.order_by.is_some()
            || self.offset.is_some()
            || self.cursor.is_some()
    }
}

/// The longest query string accepted.
pub const MAX_QUERY: usize = 2048;

/// Parses `from=&to=&limit=&fields=&filter=&order_by=&offset=&cursor=`.
/// Times are RFC 3339 (`2026-03-01T00:00:00Z`) or a UTC date (`2026-03-01`,
/// meaning its midnight). `limit` is `1..=max_limit`. `fields`, `filter`,
/// `order_by` and `cursor` are kept as written, for the columnar plane to
/// parse against the consumer's view. Unknown or repeated parameters are
/// refused, so a typo never silently widens a read.
pub fn parse_records_query(query: Option<&str>, max_limit: u64) -> Result<RecordsQuery, String> {
    let mut q = RecordsQuery::default();
    let Some(query) = query.filter(|s| !s.is_empty()) else {
        return Ok(q);
    };
    if query.len() > MAX_QUERY {
        return Err(format!("the query string is longer than {MAX_QUERY} bytes"));
    }
    let (mut seen_from, mut seen_to, mut seen_limit) = (false, false, false);
    let mut seen_offset = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k).ok_or("the query string has a bad percent-encoding")?;
        let v = percent_decode(v).ok_or("the query string has a bad percent-encoding")?;
        let once = |seen: &mut bool| {
            if std::mem::replace(seen, true) {
                Err(format!("parameter `{k}` is given more than once"))
            } else {
                Ok(())
            }
        };
        match k.as_str() {
            "from" => {
                once(&mut seen_from)?;
                q.from = Some(parse_time("from", &v)?);
            }
            "to" => {
                once(&mut seen_to)?;
                q.to = Some(parse_time("to", &v)?);
            }
            "limit" => {
                once(&mut seen_limit)?;
                let n = v.parse::<u64>().map_err(|_| {
                    format!(
                        "`limit` must be a whole number from 1 to {max_limit}, got `{}`",
                        shorten(&v)
                    )
                })?;
                if n == 0 || n > max_limit {
                    return Err(format!("`limit` must be from 1 to {max_limit}, got {n}"));
                }
                q.limit = Some(n);
            }
            "offset" => {
                once(&mut seen_offset)?;
                q.offset = Some(v.parse::<u64>().map_err(|_| {
                    format!("`offset` must be a whole number, got `{}`", shorten(&v))
                })?);
            }
            "fields" | "filter" | "order_by" | "cursor" => {
                let slot = match k.as_str() {
                    "fields" => &mut q.fields,
                    "filter" => &mut q.filter,
                    "order_by" => &mut q.order_by,
                    _ => &mut q.cursor,
                };
                if slot.replace(v).is_some() {
                    return Err(format!("parameter `{k}` is given more than once"));
                }
            }
            other => {
                return Err(format!(
                    "unknown parameter `{}`; expected `from`, `to`, `limit`, `fields`, `filter`, `order_by`, `offset` or `cursor`",
                    shorten(other)
                ));
            }
        }
    }
    if let (Some(f), Some(t)) = (q.from, q.to)
        && f >= t
    {
        return Err("`from` must be before `to`".into());
    }
    Ok(q)
}

fn shorten(s: &str) -> String {
    s.chars().take(40).filter(|c| !c.is_control()).collect()
}

fn parse_time(name: &str, v: &str) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(v, &Rfc3339) {
        return Ok(t);
    }
    let date_fmt = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(d) = Date::parse(v, &date_fmt) {
        return Ok(d.midnight().assume_utc());
    }
    Err(format!(
        "`{name}` must be an RFC 3339 time (`2026-03-01T12:00:00Z`) or a date (`2026-03-01`), got `{}`",
        shorten(v)
    ))
}

/// Decodes `%XX` and `+`; `None` on a bad escape or invalid UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|c| (*c as char).to_digit(16))?;
                let lo = bytes.get(i + 2).and_then(|c| (*c as char).to_digit(16))?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Answer formats.
pub use meshgov_columnar::answer::AnswerFormat as Format;

fn format_of_media_type(media: &str) -> Option<Format> {
    let media = media.to_ascii_lowercase();
    Some(match media.as_str() {
        "*/*"
        | "application/*"
        | "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl" => Format::Ndjson,
        "text/*" | "text/csv" => Format::Csv,
        "application/vnd.apache.arrow.stream" => Format::ArrowStream,
        "application/vnd.apache.parquet" | "application/x-parquet" => Format::Parquet,
        _ => return None,
    })
}

/// Chooses the answer's format from an `Accept` header: the supported
/// media type with the highest `q` (the first listed on a tie). No header,
/// `*/*` or `application/*` is NDJSON; `text/*` is CSV. `Err` (a 406
/// reason) when nothing listed can be served.
pub fn format_from_accept(accept: Option<&str>) -> Result<Format, String> {
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return Ok(Format::Ndjson);
    };
    let mut best: Option<(u16, Format)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim();
        // q in thousandths; a malformed q counts as 1, as most servers do.
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .next()
            .and_then(|q| q.trim().parse::<f32>().ok())
            .map_or(1000, |q| (q.clamp(0.0, 1.0) * 1000.0) as u16);
        if q == 0 {
            continue;
        }
        if let Some(format) = format_of_media_type(media)
            && best.is_none_or(|(bq, _)| q > bq)
        {
            best = Some((q, format));
        }
    }
    best.map(|(_, f)| f).ok_or_else(|| {
        let served: Vec<&str> = Format::ALL.iter().map(|f| f.media_type()).collect();
        format!(
            "none of the media types in `Accept` can be served; ask for one of: {}",
            served.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use http::Method;
    use proptest::prelude::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(&Method::GET, "/v1/ports/profiles/records"),
            Ok(Route::Records {
                port: "profiles".into()
            })
        );
        assert_eq!(
            route(&Method::GET, "/v1/ports/../records"),
            Err(RouteError::BadPort("..".into()))
        );
        assert_eq!(
            route(&Method::GET, "/v1/ports/%2e%2e/records"),
            Err(RouteError::BadPort("%2e%2e".into()))
        );
        assert_eq!(
            route(&Method::GET, "/v1/ports/a/b/records"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            route(&Method::DELETE, "/"),
            Err(RouteError::MethodNotAllowed)
        );
    }

    #[test]
    fn queries() {
        let q = parse_records_query(
            Some("from=2026-01-01&to=2026-01-02T00%3A00%3A00Z&limit=5"),
            10,
        )
        .unwrap();
        assert_eq!(q.limit, Some(5));
        assert!(q.from.unwrap() < q.to.unwrap());
        assert!(parse_records_query(Some("limit=-1"), 10).is_err());
        assert!(parse_records_query(Some("limit=0"), 10).is_err());
        assert!(parse_records_query(Some("limit=11"), 10).is_err());
        assert!(parse_records_query(Some("from=2026-13-01"), 10).is_err());
        assert!(parse_records_query(Some("from=2026-01-02&to=2026-01-01"), 10).is_err());
        assert!(parse_records_query(Some("limit=1&limit=2"), 10).is_err());
        assert!(parse_records_query(Some("lmit=1"), 10).is_err());
        assert!(parse_records_query(Some("from=%zz"), 10).is_err());
    }

    #[test]
    fn accept() {
        let f = |a| format_from_accept(Some(a));
        assert_eq!(f("text/csv; charset=utf-8"), Ok(Format::Csv));
        assert_eq!(f("application/x-ndjson"), Ok(Format::Ndjson));
        assert_eq!(format_from_accept(None), Ok(Format::Ndjson));
        assert_eq!(
            f("application/vnd.apache.arrow.stream"),
            Ok(Format::ArrowStream)
        );
        assert_eq!(f("application/vnd.apache.parquet"), Ok(Format::Parquet));
        // The highest q wins; ties go to the first listed; q=0 is refusal.
        assert_eq!(
            f("text/csv;q=0.5, application/vnd.apache.arrow.stream"),
            Ok(Format::ArrowStream)
        );
        assert_eq!(
            f("text/csv, application/vnd.apache.parquet"),
            Ok(Format::Csv)
        );
        assert_eq!(f("text/html, */*;q=0.8"), Ok(Format::Ndjson));
        assert!(f("application/vnd.apache.parquet;q=0").is_err());
        assert!(f("text/html").unwrap_err().contains("text/csv"));
        assert!(f("application/json").is_err());
    }

    proptest! {
        #[test]
        fn query_parsing_never_panics_and_limits_hold(q in ".{0,300}", max in 1u64..1000) {
            if let Ok(r) = parse_records_query(Some(&q), max) {
                if let Some(l) = r.limit { prop_assert!(l >= 1 && l <= max); }
                if let (Some(f), Some(t)) = (r.from, r.to) { prop_assert!(f < t); }
            }
        }

        #[test]
        fn accepted_ports_are_safe(p in "[ -~]{0,80}") {
            let path = format!("/v1/ports/{p}/records");
            if let Ok(Route::Records { port }) = route(&Method::GET, &path) {
                prop_assert!(valid_port_name(&port));
                prop_assert!(!port.contains(".."));
                prop_assert!(!port.contains('/'));
                prop_assert!(!port.contains('%'));
            }
        }

        #[test]
        fn wellformed_limits_round_trip(n in 1u64..1_000_000) {
            let r = parse_records_query(Some(&format!("limit={n}")), 1_000_000).unwrap();
            prop_assert_eq!(r.limit, Some(n));
        }
    }
}

//! The long poll: `GET /v1/bundle?sidecar=ID&wait=S`.
//!
//! The sidecar sends `If-None-Match: "<digest held>"` ([`etag`]). The
//! engine answers 200 with the signed envelope itself (`ETag: "<digest>"`,
//! [`BUNDLE_REVISION_HEADER`]: its revision) as soon as it has another
//! bundle for this sidecar, else 304 after `S` seconds; 404
//! (`unknown_sidecar`) when it does not know the sidecar.

/// The revision of the bundle a long poll answers with.
pub const BUNDLE_REVISION_HEADER: &str = "x-meshgov-bundle-revision";

/// The long poll's query: sent by the sidecar, read by the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollQuery {
    /// The registered sidecar id.
    pub sidecar: String,
    /// How long the engine may hold the request, in seconds (the engine's
    /// default when absent).
    pub wait_secs: Option<u64>,
}

/// Why a long poll's query is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PollQueryError {
    /// No `sidecar` parameter.
    #[error("`sidecar=ID` is required")]
    MissingSidecar,
    /// `wait` is not a whole number.
    #[error("`wait` is a number of seconds")]
    BadWait,
}

impl PollQuery {
    /// The query string, without `?`.
    pub fn to_query(&self) -> String {
        match self.wait_secs {
            Some(w) => format!("sidecar={}&wait={w}", self.sidecar),
            None => format!("sidecar={}", self.sidecar),
        }
    }

    /// Reads a query string (without `?`). The first value of each
    /// parameter counts; other parameters are ignored.
    pub fn parse(query: Option<&str>) -> Result<PollQuery, PollQueryError> {
        let get = |key: &str| {
            query?
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v)
        };
        let sidecar = get("sidecar").ok_or(PollQueryError::MissingSidecar)?;
        let wait_secs = get("wait")
            .map(|w| w.parse::<u64>().map_err(|_| PollQueryError::BadWait))
            .transpose()?;
        Ok(PollQuery {
            sidecar: sidecar.to_string(),
            wait_secs,
        })
    }
}

/// The entity tag of a bundle: its digest, quoted.
pub fn etag(digest: &str) -> String {
    format!("\"{digest}\"")
}

/// The digest in an entity tag (`"<digest>"` or `W/"<digest>"`).
pub fn etag_digest(tag: &str) -> &str {
    tag.trim().trim_start_matches("W/").trim_matches('"')
}

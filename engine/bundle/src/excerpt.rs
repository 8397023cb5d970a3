//! Shortening of untrusted text before it goes into an error message.
//!
//! Errors quote user input so people can act on them, but a hostile bundle
//! push can put megabytes in a key id or payload type. Refusals end up in
//! NACK bodies, logs and audit events, so what they quote is capped here.

/// The first `max` characters of `text`, with `…` when cut.
pub(crate) fn head(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", text.get(..end).unwrap_or_default()),
        None => text.to_owned(),
    }
}

/// The start and end of `text` with `…` between when it is longer than
/// `max` characters; parser messages put the position at the end, so both
/// ends are worth keeping.
pub(crate) fn ends(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_owned();
    }
    let keep_tail = max / 3;
    let head_end = text
        .char_indices()
        .nth(max - keep_tail)
        .map_or(0, |(i, _)| i);
    let tail_start = text
        .char_indices()
        .nth(count - keep_tail)
        .map_or(text.len(), |(i, _)| i);
    format!(
        "{}…{}",
        text.get(..head_end).unwrap_or_default(),
        text.get(tail_start..).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_untouched() {
        assert_eq!(head("abc", 3), "abc");
        assert_eq!(ends("abc", 3), "abc");
    }

    #[test]
    fn long_text_is_cut_on_char_boundaries() {
        assert_eq!(head("ééééé", 2), "éé…");
        assert_eq!(ends("abcdefghij", 6), "abcd…ij");
        assert_eq!(ends(&"é".repeat(10), 6), "éééé…éé");
    }
}

//! A validator for federated artist ids: a record's `artist_id`, when the
//! record has one, must be `urn:mesh:artist:` followed by 1 to 64 lowercase
//! letters, digits or dashes. Records without the field pass (other rules
//! decide whether it is required).

#![no_std]
extern crate alloc;

use alloc::string::String;
use meshgov_plugin_sdk::{Record, Value};

const PREFIX: &str = "urn:mesh:artist:";

fn check(record: &Record<'_>) -> Result<(), String> {
    match record.get("artist_id") {
        None => Ok(()),
        Some(Value::String(id)) => match id.strip_prefix(PREFIX) {
            Some(rest)
                if !rest.is_empty()
                    && rest.len() <= 64
                    && rest
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
            {
                Ok(())
            }
            _ => Err(String::from("`artist_id` is not a urn:mesh:artist: URN")),
        },
        Some(_) => Err(String::from("`artist_id` is not a string")),
    }
}

meshgov_plugin_sdk::export_validator!(check);

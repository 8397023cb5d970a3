//! An age-band generalizer: an age in years (a number, or a numeric string)
//! becomes its band: `under-18`, `18-24`, `25-34`, `35-44`, `45-54`,
//! `55-64` or `65+`. Anything else (negative, fractional beyond the age,
//! not a number) becomes `null`.

#![no_std]
extern crate alloc;

use alloc::string::String;
use meshgov_plugin_sdk::{Output, Value};

fn band(v: &Value<'_>) -> Result<Output, String> {
    let Some(age) = v.as_f64() else {
        return Ok(Output::Null);
    };
    if !(0.0..150.0).contains(&age) {
        return Ok(Output::Null);
    }
    let band = match age as u32 {
        0..=17 => "under-18",
        18..=24 => "18-24",
        25..=34 => "25-34",
        35..=44 => "35-44",
        45..=54 => "45-54",
        55..=64 => "55-64",
        _ => "65+",
    };
    Ok(Output::String(String::from(band)))
}

meshgov_plugin_sdk::export_transform!(band);

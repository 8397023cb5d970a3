//! A format-preserving phone masker: every digit but the last two becomes
//! `X`, except a leading `+` country code, which stays; separators
//! (spaces, dashes, dots, parentheses) stay where they are. A value with
//! fewer than six digits is not a phone number and becomes `null`.
//!
//! `+44 20 7946 0958` → `+44 XX XXXX XX58`; `(555) 010-4477` → `(XXX) XXX-XX77`.

#![no_std]
extern crate alloc;

use alloc::string::String;
use meshgov_plugin_sdk::{Output, Value};

fn mask(v: &Value<'_>) -> Result<Output, String> {
    let text = match v {
        Value::String(s) | Value::Number(s) => *s,
        _ => return Ok(Output::Null),
    };
    let digits = text.bytes().filter(u8::is_ascii_digit).count();
    if digits < 6 || text.chars().any(|c| !(c.is_ascii_digit() || " +-.()".contains(c))) {
        return Ok(Output::Null);
    }
    let mut out = String::with_capacity(text.len());
    let mut seen = 0;
    let mut in_country_code = text.trim_start().starts_with('+');
    for c in text.chars() {
        if c.is_ascii_digit() {
            seen += 1;
            let keep = in_country_code || seen > digits - 2;
            out.push(if keep { c } else { 'X' });
        } else {
            if c != '+' {
                in_country_code = false;
            }
            out.push(c);
        }
    }
    Ok(Output::String(out))
}

meshgov_plugin_sdk::export_transform!(mask);

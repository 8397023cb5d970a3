//! The bundle's treatments as DataFusion scalar functions over Arrow
//! arrays, and the steps of a differentially private aggregate.
//!
//! Each function reads its input column value by value as an
//! [`Input`](meshgov_anonymize::Input) and calls the transform of
//! `meshgov-anonymize`, the same code the record path runs; plugins and
//! validators are called once per batch. A failure is an error of the
//! query, never the raw column.

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBuilder, Decimal128Array, StringBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use meshgov_anonymize::{Input, PluginTransform, PluginValidator, RawValue, Transform};
use meshgov_core::window::{Window, parse_time};
use meshgov_privacy::mechanism::{fixed, join};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Tells one compiled function from another: two functions are the same
/// only if they are the same instance (their keys and plugins differ).
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

macro_rules! identity_eq {
    ($t:ty) => {
        impl PartialEq for $t {
            fn eq(&self, other: &Self) -> bool {
                self.id == other.id
            }
        }
        impl Eq for $t {}
        impl Hash for $t {
            fn hash<H: Hasher>(&self, state: &mut H) {
                self.id.hash(state);
            }
        }
    };
}

/// The `signature` (the function's own field) and `return_type` of a
/// `ScalarUDFImpl` whose result type is fixed.
macro_rules! signature_returning {
    ($t:expr) => {
        fn signature(&self) -> &Signature {
            &self.signature
        }

        fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
            Ok($t)
        }
    };
}

/// Calls `f` with every value of `array` as a transform input, in order.
/// Strings, integers, floats and booleans are read as they are; any other
/// type as Arrow's text form of it.
pub(crate) fn for_each_input(array: &ArrayRef, mut f: impl FnMut(Input<'_>)) -> Result<()> {
    let mut text = String::new();
    match array.data_type() {
        DataType::Utf8 => {
            for v in array.as_string::<i32>() {
                f(v.map_or(Input::Null, Input::Text));
            }
        }
        DataType::LargeUtf8 => {
            for v in array.as_string::<i64>() {
                f(v.map_or(Input::Null, Input::Text));
            }
        }
        DataType::Utf8View => {
            for v in array.as_string_view() {
                f(v.map_or(Input::Null, Input::Text));
            }
        }
        DataType::Boolean => {
            for v in array.as_boolean() {
                f(v.map_or(Input::Null, Input::Bool));
            }
        }
        DataType::Int64 => {
            for v in array.as_primitive::<Int64Type>() {
                match v {
                    Some(v) => {
                        text.clear();
                        let _ = write!(text, "{v}");
                        f(Input::Number(&text));
                    }
                    None => f(Input::Null),
                }
            }
        }
        DataType::Float64 => {
            for v in array.as_primitive::<Float64Type>() {
                // The JSON text serde_json writes for the number; not a
                // number (NaN, infinities) is null, as JSON has none.
                match v.and_then(serde_json::Number::from_f64) {
                    Some(n) => {
                        text.clear();
                        let _ = write!(text, "{n}");
                        f(Input::Number(&text));
                    }
                    None => f(Input::Null),
                }
            }
        }
        DataType::Null => (0..array.len()).for_each(|_| f(Input::Null)),
        _ => {
            let as_text = cast(array, &DataType::Utf8)?;
            return for_each_input(&as_text, f);
        }
    }
    Ok(())
}

/// A value as JSON text, for plugins: strings quoted and escaped.
fn json_of(value: Input<'_>) -> Option<Box<RawValue>> {
    let text = match value {
        Input::Null => "null".to_string(),
        Input::Bool(b) => b.to_string(),
        Input::Number(n) => n.to_string(),
        Input::Text(t) => serde_json::to_string(t).ok()?,
    };
    RawValue::from_string(text).ok()
}

fn one_array(args: &ScalarFunctionArgs) -> Result<ArrayRef> {
    match args.args.first() {
        Some(arg) => arg.to_array(args.number_rows),
        None => Err(DataFusionError::Internal(
            "a treatment takes one column".into(),
        )),
    }
}

/// A built-in transform over one column, giving strings (or null).
#[derive(Debug)]
pub(crate) struct Treat {
    id: u64,
    name: String,
    transform: Transform,
    signature: Signature,
}
identity_eq!(Treat);

impl Treat {
    pub(crate) fn udf(name: impl Into<String>, transform: Transform) -> ScalarUDF {
        ScalarUDF::new_from_impl(Treat {
            id: next_id(),
            name: name.into(),
            transform,
            signature: Signature::any(1, Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for Treat {
    fn name(&self) -> &str {
        &self.name
    }

    signature_returning!(DataType::Utf8);

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let input = one_array(&args)?;
        let mut out = StringBuilder::with_capacity(input.len(), input.len() * 16);
        let mut text = String::new();
        for_each_input(&input, |value| {
            text.clear();
            if self.transform.write_text(value, &mut text) {
                out.append_value(&text);
            } else {
                out.append_null();
            }
        })?;
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// A plugin transform over one column: one sandboxed call per batch with
/// every non-null value. A plugin's string answers are served as their
/// content, other JSON answers as their JSON text.
#[derive(Debug)]
pub(crate) struct PluginTreat {
    id: u64,
    name: String,
    plugin: Arc<dyn PluginTransform>,
    signature: Signature,
}
identity_eq!(PluginTreat);

impl PluginTreat {
    pub(crate) fn udf(plugin: Arc<dyn PluginTransform>) -> ScalarUDF {
        ScalarUDF::new_from_impl(PluginTreat {
            id: next_id(),
            name: format!("plugin:{}", plugin.name()),
            plugin,
            signature: Signature::any(1, Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for PluginTreat {
    fn name(&self) -> &str {
        &self.name
    }

    signature_returning!(DataType::Utf8);

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let input = one_array(&args)?;
        let mut at = Vec::new();
        let mut values = Vec::new();
        let mut row = 0;
        let mut unreadable = false;
        for_each_input(&input, |value| {
            if value != Input::Null {
                match json_of(value) {
                    Some(json) => {
                        at.push(row);
                        values.push(json);
                    }
                    None => unreadable = true,
                }
            }
            row += 1;
        })?;
        if unreadable {
            return Err(DataFusionError::Execution(format!(
                "plugin `{}`: a value could not be written as JSON",
                self.plugin.name()
            )));
        }
        let mut answers: Vec<Option<Box<RawValue>>> = vec![None; input.len()];
        if !values.is_empty() {
            let refs: Vec<&RawValue> = values.iter().map(AsRef::as_ref).collect();
            let results = self
                .plugin
                .transform(&refs)
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            if results.len() != refs.len() {
                return Err(DataFusionError::Execution(format!(
                    "plugin `{}` answered {} values for {}",
                    self.plugin.name(),
                    results.len(),
                    refs.len()
                )));
            }
            for (i, value) in at.into_iter().zip(results) {
                if let Some(slot) = answers.get_mut(i) {
                    *slot = Some(value);
                }
            }
        }
        let mut out = StringBuilder::with_capacity(input.len(), input.len() * 16);
        for answer in &answers {
            match answer.as_deref().map(RawValue::get) {
                None | Some("null") => out.append_null(),
                Some(text) => match serde_json::from_str::<&str>(text) {
                    Ok(s) => out.append_value(s),
                    Err(_) => match serde_json::from_str::<String>(text) {
                        Ok(s) => out.append_value(s),
                        Err(_) => out.append_value(text),
                    },
                },
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// Whether a row's time (its time field's text) is in the read's window;
/// a time that does not parse is out, as on the record path.
#[derive(Debug)]
pub(crate) struct InWindow {
    id: u64,
    window: Window,
    signature: Signature,
}
identity_eq!(InWindow);

impl InWindow {
    pub(crate) fn udf(window: Window) -> ScalarUDF {
        ScalarUDF::new_from_impl(InWindow {
            id: next_id(),
            window,
            signature: Signature::any(1, Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for InWindow {
    fn name(&self) -> &str {
        "in_window"
    }

    signature_returning!(DataType::Boolean);

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let input = one_array(&args)?;
        let mut out = BooleanBuilder::with_capacity(input.len());
        for_each_input(&input, |value| {
            let inside = match value {
                Input::Text(t) => parse_time(t).is_some_and(|t| self.window.contains(t)),
                _ => false,
            };
            out.append_value(inside);
        })?;
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// Whether each row passes every validator: one sandboxed call per
/// validator per batch, with the values of all the port's fields.
#[derive(Debug)]
pub(crate) struct Conforms {
    id: u64,
    fields: Vec<String>,
    validators: Vec<Arc<dyn PluginValidator>>,
    signature: Signature,
}
identity_eq!(Conforms);

impl Conforms {
    pub(crate) fn udf(fields: Vec<String>, validators: Vec<Arc<dyn PluginValidator>>) -> ScalarUDF {
        let signature = Signature::variadic_any(Volatility::Immutable);
        ScalarUDF::new_from_impl(Conforms {
            id: next_id(),
            fields,
            validators,
            signature,
        })
    }
}

impl ScalarUDFImpl for Conforms {
    fn name(&self) -> &str {
        "conforms"
    }

    signature_returning!(DataType::Boolean);

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        // Column-major JSON values, then one slice per row.
        let mut cells: Vec<Option<Box<RawValue>>> = Vec::with_capacity(rows * args.args.len());
        for arg in &args.args {
            let array = arg.to_array(rows)?;
            for_each_input(&array, |value| cells.push(json_of(value)))?;
        }
        let width = args.args.len();
        let records: Vec<Vec<Option<&RawValue>>> = (0..rows)
            .map(|r| {
                (0..width)
                    .map(|c| cells.get(c * rows + r).and_then(|v| v.as_deref()))
                    .collect()
            })
            .collect();
        let records: Vec<&[Option<&RawValue>]> = records.iter().map(Vec::as_slice).collect();
        let names: Vec<&str> = self.fields.iter().map(String::as_str).collect();
        let mut keep = vec![true; rows];
        for validator in &self.validators {
            let verdicts = validator
                .validate(&names, &records)
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            if verdicts.len() != rows {
                return Err(DataFusionError::Execution(format!(
                    "validator `{}` answered {} verdicts for {rows} records",
                    validator.name(),
                    verdicts.len()
                )));
            }
            for (k, verdict) in keep.iter_mut().zip(verdicts) {
                *k &= verdict.is_none();
            }
        }
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(keep))))
    }
}

/// A column as text, as the record path reads a group key or a privacy
/// unit: strings as they are, numbers as their JSON text, booleans as
/// `true` or `false`; null stays null.
#[derive(Debug)]
pub(crate) struct AsText {
    id: u64,
    signature: Signature,
}
identity_eq!(AsText);

impl AsText {
    pub(crate) fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(AsText {
            id: next_id(),
            signature: Signature::any(1, Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for AsText {
    fn name(&self) -> &str {
        "as_text"
    }

    signature_returning!(DataType::Utf8);

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let input = one_array(&args)?;
        if *input.data_type() == DataType::Utf8 {
            return Ok(ColumnarValue::Array(input));
        }
        let mut out = StringBuilder::with_capacity(input.len(), input.len() * 8);
        for_each_input(&input, |value| match value {
            Input::Null => out.append_null(),
            Input::Bool(b) => out.append_value(if b { "true" } else { "false" }),
            Input::Number(t) | Input::Text(t) => out.append_value(t),
        })?;
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// A numeric column in fixed point, clamped to the privacy rule's bounds,
/// as a differentially private sum adds it; null where the value is null,
/// not finite, or not a number. The values are 128-bit decimals, so that
/// their sum cannot overflow (it saturates to 64 bits afterwards, as the
/// record path's sum does).
#[derive(Debug)]
pub(crate) struct Fixed {
    id: u64,
    bounds: (i64, i64),
    signature: Signature,
}
identity_eq!(Fixed);

/// The type [`Fixed`] gives.
pub(crate) const FIXED_TYPE: DataType = DataType::Decimal128(38, 0);

impl Fixed {
    pub(crate) fn udf(bounds: (i64, i64)) -> ScalarUDF {
        ScalarUDF::new_from_impl(Fixed {
            id: next_id(),
            bounds,
            signature: Signature::any(1, Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for Fixed {
    fn name(&self) -> &str {
        "fixed_point"
    }

    signature_returning!(FIXED_TYPE);

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let input = one_array(&args)?;
        let point = |v: f64| v.is_finite().then(|| i128::from(fixed(v, self.bounds)));
        let out: Decimal128Array = match input.data_type() {
            DataType::Float64 => input.as_primitive::<Float64Type>().unary_opt(point),
            DataType::Int64 => input
                .as_primitive::<Int64Type>()
                .unary_opt(|v| point(v as f64)),
            _ => Decimal128Array::new_null(input.len()),
        };
        Ok(ColumnarValue::Array(Arc::new(
            out.with_data_type(FIXED_TYPE),
        )))
    }
}

/// Whether a row's group key (its text columns joined, see
/// [`meshgov_privacy::mechanism::join`]) is one the policy lists. (A key of
/// one column is checked as an in-list instead.)
#[derive(Debug)]
pub(crate) struct Known {
    id: u64,
    keys: HashSet<String, ahash::RandomState>,
    signature: Signature,
}
identity_eq!(Known);

impl Known {
    pub(crate) fn udf(keys: HashSet<String>) -> ScalarUDF {
        ScalarUDF::new_from_impl(Known {
            id: next_id(),
            keys: keys.into_iter().collect(),
            signature: Signature::variadic_any(Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for Known {
    fn name(&self) -> &str {
        "known_key"
    }

    signature_returning!(DataType::Boolean);

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = args
            .args
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<Result<Vec<_>>>()?;
        let columns = arrays
            .iter()
            .map(|a| {
                a.as_string_opt::<i32>()
                    .ok_or_else(|| DataFusionError::Internal("group keys are read as text".into()))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut parts: Vec<&str> = Vec::with_capacity(columns.len());
        let known: BooleanArray = (0..rows)
            .map(|i| {
                parts.clear();
                for c in &columns {
                    if c.is_null(i) {
                        return Some(false);
                    }
                    parts.push(c.value(i));
                }
                Some(self.keys.contains(&join(&parts)))
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(known)))
    }
}

/// Bounds contributions per privacy unit: true for the first `max` rows
/// of each unit among those whose `keep` is true, in scan order; false for
/// every other row. It remembers the units it saw, so it is volatile: the
/// plan calls it once per row, in one partition.
///
/// A unit is remembered by a 64-bit keyed hash of its text, not the text:
/// a lookup is one probe, with nothing to allocate or compare. Two units
/// whose hashes collide (about one chance in 10⁸ with a million units)
/// share one cap, so each contributes less, never more.
#[derive(Debug)]
pub(crate) struct Bound {
    id: u64,
    max: u32,
    hasher: ahash::RandomState,
    used: Mutex<HashMap<u64, u32, BuildHasherDefault<Hashed>>>,
    signature: Signature,
}

/// The hasher of a map whose keys are hashes already.
#[derive(Debug, Default)]
pub(crate) struct Hashed(u64);

impl Hasher for Hashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed; this keeps any other key correct.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}
identity_eq!(Bound);

impl Bound {
    pub(crate) fn udf(max: u32) -> ScalarUDF {
        ScalarUDF::new_from_impl(Bound {
            id: next_id(),
            max,
            hasher: ahash::RandomState::new(),
            used: Mutex::new(HashMap::default()),
            signature: Signature::any(2, Volatility::Volatile),
        })
    }
}

impl ScalarUDFImpl for Bound {
    fn name(&self) -> &str {
        "bound_contributions"
    }

    signature_returning!(DataType::Boolean);

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let bad = || DataFusionError::Internal("bound_contributions takes (text, bool)".into());
        let (Some(unit), Some(keep)) = (args.args.first(), args.args.get(1)) else {
            return Err(bad());
        };
        let (unit, keep) = (unit.to_array(rows)?, keep.to_array(rows)?);
        let (Some(unit), Some(keep)) = (unit.as_string_opt::<i32>(), keep.as_boolean_opt()) else {
            return Err(bad());
        };
        let mut used = self
            .used
            .lock()
            .map_err(|_| DataFusionError::Internal("bound_contributions: poisoned".into()))?;
        let out: Vec<bool> = (0..rows)
            .map(|i| {
                if !(keep.is_valid(i) && keep.value(i) && unit.is_valid(i)) {
                    return false;
                }
                let n = used.entry(self.hasher.hash_one(unit.value(i))).or_insert(0);
                let within = *n < self.max;
                if within {
                    *n += 1;
                }
                within
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(out))))
    }
}

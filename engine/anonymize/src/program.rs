//! The record program: compiled once per read, applied to every record.
//!
//! [`RecordProgram::new`] does all the per-request work: it checks the
//! transforms and filter, gives every field the plan reads a numbered slot,
//! and pre-renders each output key as JSON. Per record, the parser borrows
//! each interesting value from the line into its slot (no map, no
//! `serde_json::Value`, no copies), the filter tests the slots, and the
//! writer emits the plan's fields in order.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use serde::Deserializer as _;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::{ProgramError, RecordError};
use crate::escape::push_escaped;
use crate::filter::{CompiledClause, RowPredicate};
use crate::output::{Cell, CellSink, JsonSink, Sink};
use crate::plugin::{FailureKind, PluginFailure, PluginValidator};
use crate::transform::Transform;
use crate::value::{MAX_DEPTH, Unreadable, check_readable};

/// One output field: which input key it comes from, and how it is shown.
#[derive(Debug, Clone)]
pub struct FieldRule {
    /// The key, in the input and in the output.
    pub name: String,
    /// What the consumer sees of the value.
    pub transform: Transform,
}

impl FieldRule {
    /// Convenience constructor.
    pub fn new(name: impl Into<String>, transform: Transform) -> Self {
        FieldRule {
            name: name.into(),
            transform,
        }
    }
}

/// What [`RecordProgram::apply_json`] did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The record passed the row filter and was written.
    Emitted,
    /// The row filter excluded the record; nothing was written.
    Filtered,
    /// A validator plugin refused the record; nothing was written.
    Rejected,
}

/// A consumer's view of a port, ready to apply to records.
///
/// Build one per request (after access and `reveal` decisions), then call
/// [`apply_json`](Self::apply_json) or [`project`](Self::project) for every
/// record. Only the plan's fields leave: input keys the plan does not name
/// are never written, which is how undeclared fields stay inside the
/// product.
#[derive(Debug)]
pub struct RecordProgram {
    /// Output fields in order, `Redact { drop: true }` fields left out.
    outputs: Vec<Output>,
    clauses: Vec<CompiledClause>,
    /// Input key → slot, for every field the plan reads.
    keys: KeyIndex,
    /// Slot → input key, for error messages.
    slot_names: Vec<Box<str>>,
    /// Validator plugins every emitted record must pass.
    validators: Vec<Arc<dyn PluginValidator>>,
    /// The fields validators see, and their slots.
    validated: Vec<(Box<str>, usize)>,
    /// Whether any output or validator is a plugin, so that records must go
    /// through the batch methods.
    batched: bool,
}

/// Plugin answers for one batch: per output position, per line.
type Answers = Vec<Option<Vec<Option<Box<RawValue>>>>>;

#[derive(Debug)]
struct Output {
    name: Box<str>,
    /// `"name":`, preceded by a comma for all but the first field.
    json_key: Box<[u8]>,
    /// `None` when the transform never looks at the value.
    slot: Option<usize>,
    transform: Transform,
}

/// Slots that live on the stack; plans reading more fields use the heap.
const INLINE_SLOTS: usize = 32;

/// Below this many keys a linear scan beats hashing.
const LINEAR_SCAN_MAX: usize = 16;

#[derive(Debug)]
enum KeyIndex {
    /// In slot order, which is plan order for output fields.
    Linear(Vec<Box<str>>),
    Hashed(HashMap<Box<str>, usize>),
}

impl KeyIndex {
    fn new(names: &[Box<str>]) -> Self {
        if names.len() <= LINEAR_SCAN_MAX {
            KeyIndex::Linear(names.to_vec())
        } else {
            KeyIndex::Hashed(
                names
                    .iter()
                    .enumerate()
                    .map(|(slot, name)| (name.clone(), slot))
                    .collect(),
            )
        }
    }

    /// The slot of `key`. The linear scan starts at `hint` and wraps
    /// around: records usually list fields in the order of the product's
    /// schema, which is usually the plan's order, so the key after the one
    /// found at slot `s` is most often at slot `s + 1`.
    #[inline]
    fn slot(&self, key: &str, hint: usize) -> Option<usize> {
        match self {
            KeyIndex::Linear(names) => {
                let (before, after) = names.split_at(hint.min(names.len()));
                after
                    .iter()
                    .position(|name| **name == *key)
                    .map(|at| at + before.len())
                    .or_else(|| before.iter().position(|name| **name == *key))
            }
            KeyIndex::Hashed(map) => map.get(key).copied(),
        }
    }
}

impl RecordProgram {
    /// Checks and compiles a plan: output `fields` in order, and the
    /// `filter` records must pass.
    ///
    /// Refuses duplicate field names, a bucket width or prefix length of 0,
    /// an HMAC key that is not HMAC-SHA256, and filter clauses whose value
    /// does not suit the operator. These are policy bugs, so they surface
    /// once per request rather than as odd output per record.
    pub fn new(fields: Vec<FieldRule>, filter: RowPredicate) -> Result<Self, ProgramError> {
        RecordProgram::with_validators(fields, filter, Vec::new())
    }

    /// Like [`new`](Self::new), and every record that passes the filter
    /// must also pass each of `validators`, which see the values of all the
    /// plan's fields (before any transform). A record a validator refuses is
    /// [`Outcome::Rejected`].
    pub fn with_validators(
        fields: Vec<FieldRule>,
        filter: RowPredicate,
        validators: Vec<Arc<dyn PluginValidator>>,
    ) -> Result<Self, ProgramError> {
        let mut seen = HashSet::with_capacity(fields.len());
        let mut slot_names: Vec<Box<str>> = Vec::new();
        let slot_of = |name: &str, slot_names: &mut Vec<Box<str>>| -> usize {
            match slot_names.iter().position(|n| &**n == name) {
                Some(slot) => slot,
                None => {
                    slot_names.push(name.into());
                    slot_names.len() - 1
                }
            }
        };

        let mut validated = Vec::new();
        if !validators.is_empty() {
            for f in &fields {
                let slot = slot_of(&f.name, &mut slot_names);
                validated.push((Box::<str>::from(f.name.as_str()), slot));
            }
        }
        let mut outputs = Vec::with_capacity(fields.len());
        for FieldRule { name, transform } in fields {
            if !seen.insert(name.clone()) {
                return Err(ProgramError::DuplicateField { field: name });
            }
            check_transform(&name, &transform)?;
            if transform.drops_key() {
                continue;
            }
            let mut json_key = Vec::with_capacity(name.len() + 4);
            if !outputs.is_empty() {
                json_key.push(b',');
            }
            json_key.push(b'"');
            push_escaped(&mut json_key, &name);
            json_key.extend_from_slice(b"\":");
            let slot = transform
                .reads_value()
                .then(|| slot_of(&name, &mut slot_names));
            outputs.push(Output {
                name: name.into(),
                json_key: json_key.into(),
                slot,
                transform,
            });
        }

        let clauses = filter
            .clauses
            .iter()
            .map(|clause| CompiledClause::compile(clause, slot_of(&clause.field, &mut slot_names)))
            .collect::<Result<Vec<_>, _>>()?;

        let batched = !validators.is_empty()
            || outputs
                .iter()
                .any(|o| matches!(o.transform, Transform::Plugin(_)));
        Ok(RecordProgram {
            outputs,
            clauses,
            keys: KeyIndex::new(&slot_names),
            slot_names,
            validators,
            validated,
            batched,
        })
    }

    /// Whether the plan calls plugins. Such a plan is best applied with
    /// [`apply_json_batch`](Self::apply_json_batch) or
    /// [`project_batch`](Self::project_batch), which call each plugin once
    /// per batch; the one-record methods call them once per record.
    pub fn uses_plugins(&self) -> bool {
        self.batched
    }

    /// Applies the plan to a batch of NDJSON records, like
    /// [`apply_json`](Self::apply_json) on each, calling every plugin once
    /// for the whole batch. Emitted records are appended to `out` in order;
    /// `outcomes` gets one entry per line.
    ///
    /// A plugin failure fails the whole batch: nothing is written and the
    /// caller must refuse the request.
    pub fn apply_json_batch(
        &self,
        lines: &[&[u8]],
        out: &mut Vec<u8>,
        outcomes: &mut Vec<Result<Outcome, RecordError>>,
    ) -> Result<(), PluginFailure> {
        outcomes.clear();
        let start = out.len();
        let done = self.run_batch(lines, |i, outcome, record| {
            if let Some((slots, answers)) = record {
                out.push(b'{');
                for (pos, output) in self.outputs.iter().enumerate() {
                    out.extend_from_slice(&output.json_key);
                    self.write_output(pos, output, slots, answers, i, &mut JsonSink { out });
                }
                out.extend_from_slice(b"}\n");
            }
            outcomes.push(outcome);
        });
        if done.is_err() {
            out.truncate(start);
            outcomes.clear();
        }
        done
    }

    /// Applies the plan to a batch of records like
    /// [`project`](Self::project) on each, calling every plugin once for
    /// the whole batch. `row` is called once per line, in order, with the
    /// outcome and (for emitted records) the cells.
    ///
    /// A plugin failure fails the whole batch before `row` is called.
    pub fn project_batch(
        &self,
        lines: &[&[u8]],
        mut row: impl FnMut(Result<Outcome, RecordError>, &[Cell<'_>]),
    ) -> Result<(), PluginFailure> {
        self.run_batch(lines, |i, outcome, record| {
            let mut cells = Vec::new();
            if let Some((slots, answers)) = record {
                let mut sink = CellSink {
                    cells: &mut cells,
                    building: String::new(),
                };
                for (pos, output) in self.outputs.iter().enumerate() {
                    self.write_output(pos, output, slots, answers, i, &mut sink);
                }
            }
            row(outcome, &cells);
        })
    }

    fn write_output<'v, S: Sink<'v>>(
        &self,
        pos: usize,
        output: &Output,
        slots: &[Option<&'v RawValue>],
        answers: &'v Answers,
        line: usize,
        sink: &mut S,
    ) {
        match &output.transform {
            Transform::Plugin(_) => {
                match answers
                    .get(pos)
                    .and_then(Option::as_ref)
                    .and_then(|a| a.get(line))
                    .and_then(Option::as_ref)
                {
                    Some(value) => sink.raw(value),
                    None => sink.null(),
                }
            }
            t => {
                let value = output.slot.and_then(|s| slots.get(s).copied().flatten());
                t.apply(value, sink);
            }
        }
    }

    /// Reads every line, filters, runs the validators and plugin transforms
    /// once for the batch, then hands each line to `emit` in order: its
    /// outcome and, when emitted, its slots and the plugin answers.
    fn run_batch<'a>(
        &self,
        lines: &[&'a [u8]],
        mut emit: impl FnMut(
            usize,
            Result<Outcome, RecordError>,
            Option<(&[Option<&'a RawValue>], &Answers)>,
        ),
    ) -> Result<(), PluginFailure> {
        let count = self.slot_names.len();
        let mut slots: Vec<Option<&'a RawValue>> = vec![None; count * lines.len()];
        let mut outcomes: Vec<Result<Outcome, RecordError>> = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            let record = slots
                .get_mut(i * count..(i + 1) * count)
                .unwrap_or_default();
            outcomes.push(self.read(line, record).map(|()| {
                if self.keeps(record) {
                    Outcome::Emitted
                } else {
                    Outcome::Filtered
                }
            }));
        }
        let record_of = |i: usize| slots.get(i * count..(i + 1) * count).unwrap_or_default();
        let emitted = |outcomes: &[Result<Outcome, RecordError>]| -> Vec<usize> {
            (0..outcomes.len())
                .filter(|&i| matches!(outcomes.get(i), Some(Ok(Outcome::Emitted))))
                .collect()
        };

        if !self.validators.is_empty() {
            let names: Vec<&str> = self.validated.iter().map(|(n, _)| &**n).collect();
            let kept = emitted(&outcomes);
            let values: Vec<Vec<Option<&RawValue>>> = kept
                .iter()
                .map(|&i| {
                    let record = record_of(i);
                    self.validated
                        .iter()
                        .map(|(_, s)| record.get(*s).copied().flatten())
                        .collect()
                })
                .collect();
            let records: Vec<&[Option<&RawValue>]> = values.iter().map(Vec::as_slice).collect();
            for validator in &self.validators {
                if records.is_empty() {
                    break;
                }
                let verdicts = validator.validate(&names, &records)?;
                if verdicts.len() != records.len() {
                    return Err(count_mismatch(
                        validator.name(),
                        records.len(),
                        verdicts.len(),
                    ));
                }
                for (&i, verdict) in kept.iter().zip(&verdicts) {
                    if verdict.is_some()
                        && let Some(o) = outcomes.get_mut(i)
                    {
                        *o = Ok(Outcome::Rejected);
                    }
                }
            }
        }

        let kept = emitted(&outcomes);
        let mut answers: Answers = Vec::with_capacity(self.outputs.len());
        for output in &self.outputs {
            let Transform::Plugin(plugin) = &output.transform else {
                answers.push(None);
                continue;
            };
            // Missing fields are `null` without asking the plugin.
            let (at, values): (Vec<usize>, Vec<&RawValue>) = kept
                .iter()
                .filter_map(|&i| {
                    let value = output
                        .slot
                        .and_then(|s| record_of(i).get(s).copied().flatten());
                    value.map(|v| (i, v))
                })
                .unzip();
            let mut per_line: Vec<Option<Box<RawValue>>> = vec![None; lines.len()];
            if !values.is_empty() {
                let results = plugin.transform(&values)?;
                if results.len() != values.len() {
                    return Err(count_mismatch(plugin.name(), values.len(), results.len()));
                }
                for (i, value) in at.into_iter().zip(results) {
                    if let Some(cell) = per_line.get_mut(i) {
                        *cell = Some(value);
                    }
                }
            }
            answers.push(Some(per_line));
        }

        for (i, outcome) in outcomes.into_iter().enumerate() {
            let record = (outcome == Ok(Outcome::Emitted)).then(|| (record_of(i), &answers));
            emit(i, outcome, record);
        }
        Ok(())
    }

    /// The output keys in order: the header a CSV writer prints, and the
    /// order of [`project`](Self::project)'s cells. Dropped fields are not
    /// columns.
    pub fn columns(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.outputs.iter().map(|o| &*o.name)
    }

    /// Reads one NDJSON record (a line without its newline), applies the
    /// row filter to its raw input values, and if it passes appends the
    /// projected, transformed object and a `\n` to `out`.
    ///
    /// On [`Outcome::Filtered`] or an error, `out` is left untouched, so the
    /// caller can keep one buffer for a whole response.
    ///
    /// A plan that [uses plugins](Self::uses_plugins) calls them for this
    /// one record; a plugin failure is [`RecordError::Plugin`].
    pub fn apply_json(&self, line: &[u8], out: &mut Vec<u8>) -> Result<Outcome, RecordError> {
        if self.batched {
            let mut outcomes = Vec::with_capacity(1);
            self.apply_json_batch(&[line], out, &mut outcomes)
                .map_err(RecordError::Plugin)?;
            return outcomes.pop().unwrap_or(Err(RecordError::Empty));
        }
        self.with_record(line, |slots| {
            if !self.keeps(slots) {
                return Outcome::Filtered;
            }
            out.reserve(line.len() + 2);
            out.push(b'{');
            for output in &self.outputs {
                out.extend_from_slice(&output.json_key);
                let value = output.slot.and_then(|s| slots.get(s).copied().flatten());
                output
                    .transform
                    .apply(value, &mut JsonSink { out: &mut *out });
            }
            out.extend_from_slice(b"}\n");
            Outcome::Emitted
        })
    }

    /// Makes the same decision as [`apply_json`](Self::apply_json), but
    /// hands back the output values as cells in [`columns`](Self::columns)
    /// order, for a CSV writer. `cells` is cleared first; it stays empty for
    /// a filtered record or an error.
    pub fn project<'a>(
        &self,
        line: &'a [u8],
        cells: &mut Vec<Cell<'a>>,
    ) -> Result<Outcome, RecordError> {
        cells.clear();
        if self.batched {
            let mut result = Err(RecordError::Empty);
            let mut owned = Vec::new();
            self.project_batch(&[line], |outcome, row| {
                result = outcome;
                owned = row.iter().map(Cell::to_static).collect();
            })
            .map_err(RecordError::Plugin)?;
            cells.extend(owned);
            return result;
        }
        self.with_record(line, |slots| {
            if !self.keeps(slots) {
                return Outcome::Filtered;
            }
            cells.reserve(self.outputs.len());
            let mut sink = CellSink {
                cells: &mut *cells,
                building: String::new(),
            };
            for output in &self.outputs {
                let value = output.slot.and_then(|s| slots.get(s).copied().flatten());
                output.transform.apply(value, &mut sink);
            }
            Outcome::Emitted
        })
    }

    fn keeps(&self, slots: &[Option<&RawValue>]) -> bool {
        self.clauses
            .iter()
            .all(|clause| clause.holds(slots.get(clause.slot).copied().flatten()))
    }

    /// Parses `line` into slots and runs `then` on them.
    fn with_record<'a, R>(
        &self,
        line: &'a [u8],
        then: impl FnOnce(&[Option<&'a RawValue>]) -> R,
    ) -> Result<R, RecordError> {
        let count = self.slot_names.len();
        let mut inline: [Option<&'a RawValue>; INLINE_SLOTS] = [None; INLINE_SLOTS];
        let mut heap: Vec<Option<&'a RawValue>>;
        let slots: &mut [Option<&'a RawValue>] = match inline.get_mut(..count) {
            Some(slots) => slots,
            None => {
                heap = vec![None; count];
                &mut heap
            }
        };
        self.read(line, slots)?;
        Ok(then(slots))
    }

    fn read<'a>(
        &self,
        line: &'a [u8],
        slots: &mut [Option<&'a RawValue>],
    ) -> Result<(), RecordError> {
        let text = std::str::from_utf8(line).map_err(|e| RecordError::NotUtf8 {
            offset: e.valid_up_to(),
        })?;
        // Decide "empty" and "not an object" ourselves: serde_json's own
        // messages for them quote the offending value.
        match text
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .as_bytes()
            .first()
        {
            None => return Err(RecordError::Empty),
            Some(b'{') => {}
            Some(_) => return Err(RecordError::NotAnObject),
        }
        let mut refusal = None;
        let mut de = serde_json::Deserializer::from_str(text);
        let parsed = de
            .deserialize_map(RecordVisitor {
                plan: self,
                slots,
                refusal: &mut refusal,
            })
            .and_then(|()| de.end());
        if let Some(refusal) = refusal {
            return Err(refusal);
        }
        // Only the category and position of serde_json's error are used:
        // its message may quote input.
        parsed.map_err(|e| match e.classify() {
            serde_json::error::Category::Eof => RecordError::Truncated,
            _ => RecordError::Syntax { column: e.column() },
        })
    }

    fn slot_name(&self, slot: usize) -> String {
        self.slot_names
            .get(slot)
            .map(|n| n.to_string())
            .unwrap_or_default()
    }
}

fn count_mismatch(plugin: &str, asked: usize, got: usize) -> PluginFailure {
    PluginFailure::new(
        plugin,
        FailureKind::Malformed,
        format!("answered {got} values for a batch of {asked}"),
    )
}

fn check_transform(field: &str, transform: &Transform) -> Result<(), ProgramError> {
    let field = || field.to_owned();
    match transform {
        Transform::GeneralizeBucket { width: 0 } => {
            Err(ProgramError::ZeroBucketWidth { field: field() })
        }
        Transform::GeneralizePrefix { chars: 0 } => {
            Err(ProgramError::ZeroPrefix { field: field() })
        }
        Transform::Hmac { key, .. } if key.algorithm() != ring::hmac::HMAC_SHA256 => {
            Err(ProgramError::HmacAlgorithm { field: field() })
        }
        _ => Ok(()),
    }
}

/// Walks the record's top-level object, borrowing the values of the keys
/// the plan reads into their slots and skipping the rest.
struct RecordVisitor<'p, 's, 'de> {
    plan: &'p RecordProgram,
    slots: &'s mut [Option<&'de RawValue>],
    /// Set when we abort for a reason of our own, so the caller reports it
    /// instead of serde_json's generic error.
    refusal: &'s mut Option<RecordError>,
}

impl<'de> Visitor<'de> for RecordVisitor<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut hint = 0;
        while let Some(slot) = map.next_key_seed(KeySeed {
            keys: &self.plan.keys,
            hint,
        })? {
            let Some(slot) = slot else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            hint = slot + 1;
            let value: &'de RawValue = map.next_value()?;
            let Some(cell) = self.slots.get_mut(slot) else {
                continue;
            };
            if cell.is_some() {
                *self.refusal = Some(RecordError::DuplicateField {
                    field: self.plan.slot_name(slot),
                });
                return Err(de::Error::custom("duplicate field"));
            }
            if let Err(unreadable) = check_readable(value) {
                let field = self.plan.slot_name(slot);
                *self.refusal = Some(match unreadable {
                    Unreadable::Escape => RecordError::InvalidEscape { field },
                    Unreadable::Depth => RecordError::TooDeep {
                        field,
                        max: MAX_DEPTH,
                    },
                    Unreadable::Number => RecordError::NumberOutOfRange { field },
                });
                return Err(de::Error::custom("unreadable value"));
            }
            *cell = Some(value);
        }
        Ok(())
    }
}

/// Looks an object key up in the plan without allocating: serde_json hands
/// us the key borrowed from the line, or unescaped into its scratch buffer.
struct KeySeed<'p> {
    keys: &'p KeyIndex,
    /// Where to start looking; see [`KeyIndex::slot`].
    hint: usize,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.keys.slot(key, self.hint))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lookup_finds_every_key_from_any_hint() {
        let names: Vec<Box<str>> = ["a", "bb", "c", "user_id"].map(Into::into).to_vec();
        let index = KeyIndex::new(&names);
        for hint in 0..6 {
            for (slot, name) in names.iter().enumerate() {
                assert_eq!(index.slot(name, hint), Some(slot), "hint {hint}");
            }
            assert_eq!(index.slot("user_i", hint), None);
            assert_eq!(index.slot("", hint), None);
        }
    }

    #[test]
    fn plans_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<RecordProgram>();
    }

    #[test]
    fn debug_output_holds_no_key_material() {
        let secret = [0xABu8; 32];
        let plan = RecordProgram::new(
            vec![FieldRule::new(
                "id",
                Transform::hmac_sha256(&secret, "p").unwrap(),
            )],
            RowPredicate::keep_all(),
        )
        .unwrap();
        let debug = format!("{plan:?}").to_lowercase();
        assert!(debug.contains("sha256"), "{debug}");
        assert!(!debug.contains("171") && !debug.contains("abab"), "{debug}");
    }
}

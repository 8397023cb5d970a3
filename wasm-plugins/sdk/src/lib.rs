//! The guest SDK for meshgov plugins (`no_std` + `alloc`).
//!
//! A plugin is a `cdylib` crate that writes one function and exports it
//! with a macro; the SDK does the ABI (`wasm-plugins/ABI.md`): the exports,
//! the allocator, decoding the batch and encoding the answer.
//!
//! ```ignore
//! #![no_std]
//! extern crate alloc;
//! use meshgov_plugin_sdk::{Output, Value};
//!
//! fn shout(v: &Value<'_>) -> Result<Output, alloc::string::String> {
//!     Ok(match v.as_str() {
//!         Some(s) => Output::String(s.to_uppercase()),
//!         None => Output::Null,
//!     })
//! }
//! meshgov_plugin_sdk::export_transform!(shout);
//! ```
//!
//! A transform returns `Err` to refuse the whole batch (the host then
//! fails the request closed). A validator returns `Err(reason)` for a
//! record that does not conform.

#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

/// The plugin ABI version this SDK speaks.
pub const ABI_VERSION: i32 = 1;

mod tag {
    pub const NULL: u8 = 0;
    pub const FALSE: u8 = 1;
    pub const TRUE: u8 = 2;
    pub const NUMBER: u8 = 3;
    pub const STRING: u8 = 4;
    pub const JSON: u8 = 5;
}

/// One input value, borrowed from the request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    /// A JSON number, as its text (exact digits).
    Number(&'a str),
    /// A string, decoded.
    String(&'a str),
    /// An array or object, as JSON text.
    Json(&'a str),
}

impl<'a> Value<'a> {
    /// The string, if the value is one.
    pub fn as_str(&self) -> Option<&'a str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The number as `f64`, if the value is a number or a numeric string.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(t) | Value::String(t) => t.trim().parse().ok(),
            _ => None,
        }
    }
}

/// One output value.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Null,
    Bool(bool),
    /// JSON number text; the host refuses anything else.
    Number(String),
    /// A string; the host escapes it.
    String(String),
    /// An array or object as JSON text; the host checks it.
    Json(String),
}

/// One record given to a validator: the fields it has, by name.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    fields: Vec<(&'a str, Value<'a>)>,
}

impl<'a> Record<'a> {
    /// The value of `name`; `None` when the record lacks the field.
    pub fn get(&self, name: &str) -> Option<Value<'a>> {
        self.fields.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    /// Every field, in order.
    pub fn fields(&self) -> impl Iterator<Item = (&'a str, Value<'a>)> + '_ {
        self.fields.iter().copied()
    }
}

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.data.len() {
            return None;
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<usize> {
        let b = self.take(4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    fn text(&mut self) -> Option<&'a str> {
        let n = self.u32()?;
        core::str::from_utf8(self.take(n)?).ok()
    }
    fn value(&mut self) -> Option<Value<'a>> {
        let t = *self.take(1)?.first()?;
        let n = self.u32()?;
        let b = self.take(n)?;
        let s = core::str::from_utf8(b).ok()?;
        Some(match t {
            tag::NULL => Value::Null,
            tag::FALSE => Value::Bool(false),
            tag::TRUE => Value::Bool(true),
            tag::NUMBER => Value::Number(s),
            tag::STRING => Value::String(s),
            tag::JSON => Value::Json(s),
            _ => return None,
        })
    }
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u32).to_le_bytes());
}

fn put_output(out: &mut Vec<u8>, v: &Output) {
    let (t, b): (u8, &[u8]) = match v {
        Output::Null => (tag::NULL, b""),
        Output::Bool(false) => (tag::FALSE, b""),
        Output::Bool(true) => (tag::TRUE, b""),
        Output::Number(s) => (tag::NUMBER, s.as_bytes()),
        Output::String(s) => (tag::STRING, s.as_bytes()),
        Output::Json(s) => (tag::JSON, s.as_bytes()),
    };
    out.push(t);
    put_u32(out, b.len());
    out.extend_from_slice(b);
}

fn error(message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(1);
    put_u32(&mut out, message.len());
    out.extend_from_slice(message.as_bytes());
    out
}

/// Hands a response to the host: its address in the high 32 bits, its
/// length in the low 32. The memory is never freed: each call runs in a
/// fresh instance that the host throws away.
fn respond(out: Vec<u8>) -> i64 {
    let out = out.leak();
    (((out.as_ptr() as usize as u64) << 32) | out.len() as u64) as i64
}

/// The request the host wrote at `ptr`.
///
/// # Safety
/// `ptr` and `len` must be what the host passed to the entry point: a
/// region it filled after `meshgov_alloc(len)` returned `ptr`.
unsafe fn request<'a>(ptr: i32, len: i32) -> &'a [u8] {
    core::slice::from_raw_parts(ptr as usize as *const u8, len as usize)
}

#[doc(hidden)]
pub fn run_transform(ptr: i32, len: i32, f: fn(&Value<'_>) -> Result<Output, String>) -> i64 {
    // SAFETY: called only from the exported entry point with the host's arguments.
    let mut r = Reader { data: unsafe { request(ptr, len) } };
    let Some(count) = r.u32() else {
        return respond(error("malformed request"));
    };
    let mut out = Vec::with_capacity(5 + count * 16);
    out.push(0);
    put_u32(&mut out, count);
    for _ in 0..count {
        let Some(v) = r.value() else {
            return respond(error("malformed request"));
        };
        match f(&v) {
            Ok(o) => put_output(&mut out, &o),
            Err(e) => return respond(error(&e)),
        }
    }
    respond(out)
}

#[doc(hidden)]
pub fn run_validate(ptr: i32, len: i32, f: fn(&Record<'_>) -> Result<(), String>) -> i64 {
    // SAFETY: called only from the exported entry point with the host's arguments.
    let mut r = Reader { data: unsafe { request(ptr, len) } };
    let Some(count) = r.u32() else {
        return respond(error("malformed request"));
    };
    let mut out = Vec::with_capacity(5 + count * 5);
    out.push(0);
    put_u32(&mut out, count);
    let mut record = Record { fields: Vec::new() };
    for _ in 0..count {
        record.fields.clear();
        let Some(n) = r.u32() else {
            return respond(error("malformed request"));
        };
        for _ in 0..n {
            match (r.text(), r.value()) {
                (Some(name), Some(v)) => record.fields.push((name, v)),
                _ => return respond(error("malformed request")),
            }
        }
        match f(&record) {
            Ok(()) => {
                out.push(0);
                put_u32(&mut out, 0);
            }
            Err(why) => {
                out.push(1);
                put_u32(&mut out, why.len());
                out.extend_from_slice(why.as_bytes());
            }
        }
    }
    respond(out)
}

/// A bump allocator over `memory.grow`. Nothing is ever freed: an instance
/// lives for one call, then the host discards its memory.
pub struct BumpAllocator {
    next: core::cell::UnsafeCell<usize>,
    end: core::cell::UnsafeCell<usize>,
}

impl BumpAllocator {
    pub const fn new() -> Self {
        BumpAllocator {
            next: core::cell::UnsafeCell::new(0),
            end: core::cell::UnsafeCell::new(0),
        }
    }
}

impl Default for BumpAllocator {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: WebAssembly guests here are single-threaded.
unsafe impl Sync for BumpAllocator {}

#[cfg(target_arch = "wasm32")]
unsafe impl core::alloc::GlobalAlloc for BumpAllocator {
    unsafe fn alloc(&self, layout: core::alloc::Layout) -> *mut u8 {
        const PAGE: usize = 65536;
        let next = &mut *self.next.get();
        let end = &mut *self.end.get();
        if *end == 0 {
            *end = core::arch::wasm32::memory_size(0) * PAGE;
            *next = *end;
        }
        let start = (*next + layout.align() - 1) & !(layout.align() - 1);
        let Some(stop) = start.checked_add(layout.size()) else {
            return core::ptr::null_mut();
        };
        if stop > *end {
            let pages = (stop - *end).div_ceil(PAGE);
            if core::arch::wasm32::memory_grow(0, pages) == usize::MAX {
                return core::ptr::null_mut();
            }
            *end += pages * PAGE;
        }
        *next = stop;
        start as *mut u8
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: core::alloc::Layout) {}
}

/// The exports every plugin needs: the ABI version, the allocator the host
/// writes requests with, the global allocator and the panic handler (a
/// panic traps, and the host fails the call closed).
#[doc(hidden)]
#[macro_export]
macro_rules! __common_exports {
    () => {
        #[cfg(target_arch = "wasm32")]
        #[global_allocator]
        static ALLOCATOR: $crate::BumpAllocator = $crate::BumpAllocator::new();

        #[cfg(target_arch = "wasm32")]
        #[panic_handler]
        fn panic(_: &core::panic::PanicInfo) -> ! {
            core::arch::wasm32::unreachable()
        }

        #[no_mangle]
        pub extern "C" fn meshgov_abi_version() -> i32 {
            $crate::ABI_VERSION
        }

        #[no_mangle]
        pub extern "C" fn meshgov_alloc(len: i32) -> i32 {
            let len = if len < 0 { 0 } else { len as usize };
            let mut buf = $crate::__alloc_vec(len);
            let ptr = buf.as_mut_ptr() as usize as i32;
            core::mem::forget(buf);
            ptr
        }
    };
}

#[doc(hidden)]
pub fn __alloc_vec(len: usize) -> Vec<u8> {
    alloc::vec![0u8; len.max(1)]
}

/// Exports `f: fn(&Value) -> Result<Output, String>` as the plugin's
/// transform, applied to every value of each batch.
#[macro_export]
macro_rules! export_transform {
    ($f:path) => {
        $crate::__common_exports!();

        #[no_mangle]
        pub extern "C" fn meshgov_transform(ptr: i32, len: i32) -> i64 {
            $crate::run_transform(ptr, len, $f)
        }
    };
}

/// Exports `f: fn(&Record) -> Result<(), String>` as the plugin's
/// validator, applied to every record of each batch.
#[macro_export]
macro_rules! export_validator {
    ($f:path) => {
        $crate::__common_exports!();

        #[no_mangle]
        pub extern "C" fn meshgov_validate(ptr: i32, len: i32) -> i64 {
            $crate::run_validate(ptr, len, $f)
        }
    };
}

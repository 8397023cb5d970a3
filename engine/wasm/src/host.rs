//! The sandbox: one wasmtime [`Engine`] per process, each plugin compiled
//! once (per bundle) into an [`InstancePre`], and every call made in a fresh
//! [`Store`] with its own fuel and memory cap, instantiated from the
//! pooling allocator.
//!
//! Guests import nothing: no WASI, no clock, no file system, no network.
//! All a guest can touch is its own linear memory and the bytes the ABI
//! hands it.

use crate::abi::{self, Rejection, export};
use meshgov_anonymize::{FailureKind, PluginFailure};
use meshgov_core::plugins::{MAX_PLUGIN_MEMORY, PluginManifest};
use serde_json::value::RawValue;
use std::sync::OnceLock;
use wasmtime::{
    Config, Engine, Extern, ExternType, InstanceAllocationStrategy, InstancePre, Linker, Module,
    ModuleExport, PoolingAllocationConfig, ResourceLimiter, Store, Trap,
};

/// Plugin instances that can be live at once (concurrent calls); a call
/// beyond that fails closed rather than queueing unboundedly.
const POOL_INSTANCES: u32 = 256;

/// Fuel for loading and checking a module: `meshgov_abi_version` only.
const PROBE_FUEL: u64 = 100_000;

/// Why a plugin could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("the WebAssembly runtime could not start: {0}")]
    Runtime(String),
    #[error("plugin `{plugin}`: module digest is {actual}, the manifest pins {pinned}")]
    Digest {
        plugin: String,
        actual: String,
        pinned: String,
    },
    #[error("plugin `{plugin}`: {reason}")]
    Invalid { plugin: String, reason: String },
}

/// What a plugin is for, from its manifest's `kind`.
pub use meshgov_core::plugins::PluginKind as Kind;

/// The guest export a plugin of this kind must provide.
fn entry(kind: Kind) -> &'static str {
    match kind {
        Kind::Transform => export::TRANSFORM,
        Kind::Validator => export::VALIDATE,
    }
}

/// The process's engine and linker (the linker defines nothing: guests get
/// no imports).
pub struct Runtime {
    engine: Engine,
    linker: Linker<CallState>,
}

impl Runtime {
    /// The one runtime of this process, built on first use.
    pub fn global() -> Result<&'static Runtime, LoadError> {
        static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
        RUNTIME
            .get_or_init(|| Runtime::new().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| LoadError::Runtime(e.clone()))
    }

    fn new() -> wasmtime::Result<Runtime> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(POOL_INSTANCES)
            .total_memories(POOL_INSTANCES)
            .total_tables(POOL_INSTANCES)
            .max_memories_per_module(1)
            .max_tables_per_module(1)
            .max_memory_size(usize::try_from(MAX_PLUGIN_MEMORY).unwrap_or(usize::MAX));
        let mut config = Config::new();
        config
            .consume_fuel(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;
        let linker = Linker::new(&engine);
        Ok(Runtime { engine, linker })
    }

    /// Compiles and checks one plugin: its digest against the manifest, its
    /// imports (none), its exports and their types, and its ABI version
    /// (by calling it). Done once per bundle load, never per request.
    pub fn load(&self, manifest: &PluginManifest, bytes: &[u8]) -> Result<Plugin, LoadError> {
        let invalid = |reason: String| LoadError::Invalid {
            plugin: manifest.name.clone(),
            reason,
        };
        let actual = {
            use sha2::Digest as _;
            hex::encode(sha2::Sha256::digest(bytes))
        };
        if actual != manifest.sha256.to_ascii_lowercase() {
            return Err(LoadError::Digest {
                plugin: manifest.name.clone(),
                actual,
                pinned: manifest.sha256.clone(),
            });
        }
        let kind = manifest.kind;
        if manifest.max_memory_bytes == 0 || manifest.max_memory_bytes > MAX_PLUGIN_MEMORY {
            return Err(invalid(format!(
                "`max_memory_bytes` must be within 1..={MAX_PLUGIN_MEMORY}"
            )));
        }
        // Binary modules only: this engine is built without the text parser.
        let module = Module::new(&self.engine, bytes)
            .map_err(|e| invalid(format!("not a valid WebAssembly module: {}", root(&e))))?;
        if let Some(import) = module.imports().next() {
            return Err(invalid(format!(
                "the module imports `{}::{}`; plugins may import nothing",
                import.module(),
                import.name()
            )));
        }
        // Types compared by name (`i32`, `i64`), as the error shows them.
        let func = |name: &str, params: &[&str], results: &[&str]| {
            let ok = match module.get_export(name) {
                Some(ExternType::Func(f)) => {
                    f.params()
                        .map(|p| p.to_string())
                        .eq(params.iter().map(|p| p.to_string()))
                        && f.results()
                            .map(|r| r.to_string())
                            .eq(results.iter().map(|r| r.to_string()))
                }
                _ => false,
            };
            if !ok {
                return Err(invalid(format!(
                    "the module must export function `{name}` taking {params:?} and returning {results:?}"
                )));
            }
            module
                .get_export_index(name)
                .ok_or_else(|| invalid(format!("export `{name}` is missing")))
        };
        let version = func(export::ABI_VERSION, &[], &["i32"])?;
        let alloc = func(export::ALLOC, &["i32"], &["i32"])?;
        let entry = func(entry(kind), &["i32", "i32"], &["i64"])?;
        let memory = match module.get_export(export::MEMORY) {
            Some(ExternType::Memory(m)) if !m.is_64() && !m.is_shared() => module
                .get_export_index(export::MEMORY)
                .ok_or_else(|| invalid("export `memory` is missing".into()))?,
            _ => return Err(invalid("the module must export a 32-bit `memory`".into())),
        };
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| invalid(root(&e)))?;
        let plugin = Plugin {
            name: manifest.name.clone(),
            kind,
            pre,
            memory,
            alloc,
            entry,
            fuel: manifest.fuel.max(1),
            max_memory: usize::try_from(manifest.max_memory_bytes).unwrap_or(usize::MAX),
        };
        let mut store = plugin.store(PROBE_FUEL)?;
        let found = plugin
            .pre
            .instantiate(&mut store)
            .map_err(|e| plugin.failure(&store, &e))
            .and_then(|instance| {
                let f = instance
                    .get_module_export(&mut store, &version)
                    .and_then(Extern::into_func)
                    .and_then(|f| f.typed::<(), i32>(&store).ok())
                    .ok_or_else(|| plugin.malformed("`meshgov_abi_version` is not callable"))?;
                f.call(&mut store, ())
                    .map_err(|e| plugin.failure(&store, &e))
            })
            .map_err(|f| invalid(format!("loading failed: {}", f.detail)))?;
        if found != abi::ABI_VERSION {
            return Err(invalid(format!(
                "the module speaks plugin ABI version {found}; this host speaks version {}",
                abi::ABI_VERSION
            )));
        }
        Ok(plugin)
    }
}

/// Per-call state: the memory cap, and whether the guest hit it.
pub(crate) struct CallState {
    max_memory: usize,
    memory_exceeded: bool,
}

impl ResourceLimiter for CallState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            // An error (not `Ok(false)`) traps the guest at once, so a
            // memory bomb ends the call instead of limping on.
            self.memory_exceeded = true;
            return Err(wasmtime::Error::msg("memory limit exceeded"));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 10_000)
    }

    fn instances(&self) -> usize {
        1
    }
    fn tables(&self) -> usize {
        1
    }
    fn memories(&self) -> usize {
        1
    }
}

/// A compiled, checked plugin. Cheap to call from many threads at once:
/// every call gets its own store and instance.
pub struct Plugin {
    name: String,
    kind: Kind,
    pre: InstancePre<CallState>,
    memory: ModuleExport,
    alloc: ModuleExport,
    entry: ModuleExport,
    fuel: u64,
    max_memory: usize,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("fuel", &self.fuel)
            .field("max_memory", &self.max_memory)
            .finish()
    }
}

/// The first line of an error chain's innermost cause.
fn root(e: &wasmtime::Error) -> String {
    e.root_cause()
        .to_string()
        .lines()
        .next()
        .unwrap_or("unknown error")
        .to_string()
}

impl Plugin {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    fn store(&self, fuel: u64) -> Result<Store<CallState>, LoadError> {
        let mut store = Store::new(
            self.pre.module().engine(),
            CallState {
                max_memory: self.max_memory,
                memory_exceeded: false,
            },
        );
        store.limiter(|s| s);
        store.set_fuel(fuel).map_err(|e| LoadError::Invalid {
            plugin: self.name.clone(),
            reason: root(&e),
        })?;
        Ok(store)
    }

    fn fail(&self, kind: FailureKind, detail: impl Into<String>) -> PluginFailure {
        PluginFailure::new(&self.name, kind, detail)
    }

    fn malformed(&self, detail: &str) -> PluginFailure {
        self.fail(FailureKind::Malformed, detail)
    }

    /// Classifies a failed guest call.
    fn failure(&self, store: &Store<CallState>, e: &wasmtime::Error) -> PluginFailure {
        if store.data().memory_exceeded {
            return self.fail(
                FailureKind::OutOfMemory,
                format!("grew its memory past its cap of {} bytes", self.max_memory),
            );
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => self.fail(
                FailureKind::OutOfFuel,
                "ran out of fuel (an endless loop, or too little `fuel` for this batch)",
            ),
            Some(trap) => self.fail(FailureKind::Trap, format!("trapped: {trap}")),
            None => self.fail(FailureKind::Trap, root(e)),
        }
    }

    /// One call: a fresh instance, the request written into memory the guest
    /// allocated, the entry point called, and the response handed to
    /// `decode` straight from guest memory. The instance goes back to the
    /// pool when the store drops.
    fn call<T>(
        &self,
        request: &[u8],
        items: usize,
        decode: impl FnOnce(&[u8]) -> Result<T, Rejection>,
    ) -> Result<T, PluginFailure> {
        let items = u64::try_from(items).unwrap_or(u64::MAX);
        let fuel = self.fuel.saturating_mul(items.saturating_add(1));
        let mut store = self
            .store(fuel)
            .map_err(|e| self.fail(FailureKind::Unavailable, e.to_string()))?;
        let instance = self.pre.instantiate(&mut store).map_err(|e| {
            let f = self.failure(&store, &e);
            match f.kind {
                FailureKind::OutOfMemory => f,
                _ => self.fail(
                    FailureKind::Unavailable,
                    format!("could not instantiate: {}", root(&e)),
                ),
            }
        })?;
        let memory = instance
            .get_module_export(&mut store, &self.memory)
            .and_then(Extern::into_memory)
            .ok_or_else(|| self.malformed("no memory"))?;
        let func = |store: &mut Store<CallState>, at: &ModuleExport| {
            instance
                .get_module_export(&mut *store, at)
                .and_then(Extern::into_func)
                .ok_or_else(|| self.malformed("an export is not a function"))
        };
        let alloc = func(&mut store, &self.alloc)?
            .typed::<i32, i32>(&store)
            .map_err(|_| self.malformed("`meshgov_alloc` has the wrong type"))?;
        let entry = func(&mut store, &self.entry)?
            .typed::<(i32, i32), i64>(&store)
            .map_err(|_| self.malformed("the entry point has the wrong type"))?;
        let len = i32::try_from(request.len())
            .map_err(|_| self.fail(FailureKind::Unavailable, "the batch is too large"))?;
        let ptr = alloc
            .call(&mut store, len)
            .map_err(|e| self.failure(&store, &e))?;
        let at = usize::try_from(ptr)
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| self.fail(FailureKind::OutOfMemory, "could not allocate the request"))?;
        memory
            .write(&mut store, at, request)
            .map_err(|_| self.malformed("`meshgov_alloc` returned memory out of bounds"))?;
        let packed = entry
            .call(&mut store, (ptr, len))
            .map_err(|e| self.failure(&store, &e))?;
        let packed = packed as u64;
        let (start, size) = ((packed >> 32) as usize, (packed & 0xffff_ffff) as usize);
        let response = memory
            .data(&store)
            .get(start..start.saturating_add(size))
            .ok_or_else(|| self.malformed("the response lies outside guest memory"))?;
        decode(response).map_err(|r| match r {
            Rejection::Refused(why) => self.fail(FailureKind::Refused, why),
            Rejection::Malformed(why) => self.fail(FailureKind::Malformed, why),
        })
    }

    /// Instantiates the plugin in a fresh store and drops it: the fixed cost
    /// every call pays before guest code runs (for benchmarks and health
    /// checks).
    pub fn probe(&self) -> Result<(), PluginFailure> {
        let mut store = self
            .store(PROBE_FUEL)
            .map_err(|e| self.fail(FailureKind::Unavailable, e.to_string()))?;
        self.pre
            .instantiate(&mut store)
            .map(drop)
            .map_err(|e| self.failure(&store, &e))
    }

    /// Transforms a batch of values (a transform plugin).
    pub fn transform(&self, values: &[&RawValue]) -> Result<Vec<Box<RawValue>>, PluginFailure> {
        if self.kind != Kind::Transform {
            return Err(self.fail(FailureKind::Unavailable, "not a transform plugin"));
        }
        let request =
            abi::encode_values(values).map_err(|e| self.fail(FailureKind::Unavailable, e))?;
        self.call(&request, values.len(), |r| {
            abi::decode_values(r, values.len())
        })
    }

    /// Judges a batch of records (a validator plugin).
    pub fn validate(
        &self,
        fields: &[&str],
        records: &[&[Option<&RawValue>]],
    ) -> Result<Vec<Option<String>>, PluginFailure> {
        if self.kind != Kind::Validator {
            return Err(self.fail(FailureKind::Unavailable, "not a validator plugin"));
        }
        let request = abi::encode_records(fields, records)
            .map_err(|e| self.fail(FailureKind::Unavailable, e))?;
        self.call(&request, records.len(), |r| {
            abi::decode_verdicts(r, records.len())
        })
    }
}

impl meshgov_anonymize::PluginTransform for Plugin {
    fn name(&self) -> &str {
        &self.name
    }
    fn transform(&self, values: &[&RawValue]) -> Result<Vec<Box<RawValue>>, PluginFailure> {
        Plugin::transform(self, values)
    }
}

impl meshgov_anonymize::PluginValidator for Plugin {
    fn name(&self) -> &str {
        &self.name
    }
    fn validate(
        &self,
        fields: &[&str],
        records: &[&[Option<&RawValue>]],
    ) -> Result<Vec<Option<String>>, PluginFailure> {
        Plugin::validate(self, fields, records)
    }
}

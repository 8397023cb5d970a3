//! A consumer's catalog: the database is the product, its `public`
//! schema holds one table per port the bundle lets the consumer read, and
//! `information_schema` and `pg_catalog` describe only those tables.
//!
//! Each table is the consumer's view of its port ([`GovernedTable`]): its
//! columns are the fields they may see, typed as they come out of their
//! treatments; a withheld or redacted field is not a column, and a port
//! they may not read is not a table. Planning a query over it opens
//! nothing: the port's upstream is opened when the plan is built for
//! execution, and each table a query scans is noted for its audit event.

use super::SqlError;
use super::dp::{DpPort, DpTable};
use crate::app::App;
use crate::auth::Identity;
use crate::scan::Source;
use crate::state::ActiveBundle;
use crate::upstream::Window;
use async_trait::async_trait;
use datafusion::arrow::array::{AsArray as _, BooleanArray, Int32Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::MemoryCatalogProviderList;
use datafusion::catalog::empty::EmptyTable;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Column;
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::provider_as_source;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionState;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlanBuilder, ScalarUDF, TableType, Volatility, create_udf,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use datafusion::prelude::SessionContext;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::{
    PgCatalogSchemaProvider, PgCatalogStaticTables, setup_pg_catalog,
};
use meshgov_columnar::datafusion;
use meshgov_columnar::query::visible_fields;
use meshgov_columnar::schema::port_schema;
use meshgov_columnar::source::{query_config, runtime_with};
use meshgov_columnar::view::consumer_view;
use meshgov_core::decision::Asker;
use meshgov_core::descriptor::PortInfo;
use meshgov_core::enforce::ReadError;
use meshgov_core::privacy::rule_for;
use meshgov_core::records::Rules;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

/// The schema every port's table is in.
pub const SCHEMA: &str = "public";

/// The database a product's SQL ports serve: the product's name, its id
/// without the domain (`users/user-profiles` is `user-profiles`).
pub(crate) fn database_name(product_id: &str) -> &str {
    product_id.rsplit('/').next().unwrap_or(product_id)
}

/// A consumer's catalog under one bundle.
pub(crate) struct Catalog {
    pub bundle: Arc<ActiveBundle>,
    pub ctx: SessionContext,
    /// The ports the consumer may only aggregate, by table name.
    pub dp: HashMap<String, DpPort>,
}

/// What the tables a query scanned recorded, for its decision event.
#[derive(Debug, Default)]
pub(crate) struct QueryLog {
    inner: Mutex<Scanned>,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Scanned {
    /// The ports scanned, in the order first scanned.
    pub ports: Vec<String>,
    /// `port.column` → treatment, for every column a scan read.
    pub transforms: Vec<(String, String)>,
    pub policies: Vec<String>,
}

impl QueryLog {
    fn note(&self, port: &str, columns: &[(String, String)], policies: &[String]) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !s.ports.iter().any(|p| p == port) {
            s.ports.push(port.to_string());
        }
        for (c, t) in columns {
            let key = format!("{port}.{c}");
            if !s.transforms.iter().any(|(k, _)| *k == key) {
                s.transforms.push((key, t.clone()));
            }
        }
        for p in policies {
            if !s.policies.contains(p) {
                s.policies.push(p.clone());
            }
        }
    }

    pub fn scanned(&self) -> Scanned {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Catalog {
    /// The catalog of `who` under `bundle` at `now_unix`.
    pub fn build(
        app: &Arc<App>,
        who: &Identity,
        bundle: Arc<ActiveBundle>,
        now_unix: i64,
    ) -> Result<Catalog, SqlError> {
        let product = database_name(&bundle.view().info.id).to_string();
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            tracing::error!("cannot {what}: {e}");
            SqlError::plan_failed()
        };
        let shared = shared(&product)?;
        let runtime = runtime_with(app.limits.query_memory_bytes)
            .map_err(|e| fail("start a SQL session", &e))?;
        let state = SessionStateBuilder::new_from_existing(shared.template.clone())
            .with_config(session_config(&product))
            .with_runtime_env(runtime)
            .with_catalog_list(Arc::new(MemoryCatalogProviderList::new()))
            .build();
        let ctx = SessionContext::new_with_state(state);
        let asker = Asker {
            principal: &who.principal,
            purpose: &who.purpose,
            now_unix,
        };
        let mut dp_ports = HashMap::new();
        for port in &bundle.view().info.ports {
            let read = match bundle.enforcer.read(&port.name, asker) {
                Ok(read) => read,
                // A principal or purpose the policy engine cannot express:
                // no table.
                Err(ReadError::Plan(_)) => continue,
                Err(ReadError::Program(e)) => {
                    // The enforcer proved at load that every rule compiles;
                    // if one does not, the port is not served at all.
                    tracing::error!(port = %port.name, "cannot build the read program: {e}");
                    continue;
                }
            };
            let Some(rules) = read.rules.clone().filter(|_| read.access().allowed) else {
                if let Some(dp) = aggregate_only(&bundle, port, asker) {
                    ctx.register_table(port.name.as_str(), Arc::new(DpTable(dp.clone())))
                        .map_err(|e| {
                            tracing::error!(port = %port.name, "cannot register the port's table: {e}");
                            SqlError::plan_failed()
                        })?;
                    dp_ports.insert(port.name.clone(), dp);
                }
                continue;
            };
            let table = GovernedTable::new(
                app,
                &ctx,
                port,
                rules,
                read.labels(),
                read.access().policies.clone(),
            )?;
            ctx.register_table(port.name.as_str(), Arc::new(table))
                .map_err(|e| {
                    tracing::error!(port = %port.name, "cannot register the port's table: {e}");
                    SqlError::plan_failed()
                })?;
        }
        let pg_catalog = PgCatalogSchemaProvider::try_new(
            ctx.state().catalog_list().clone(),
            Arc::clone(&shared.statics),
            EmptyContextProvider,
        )
        .map_err(|e| fail("set up pg_catalog", &e))?;
        ctx.catalog(&product)
            .ok_or_else(|| fail("set up pg_catalog", &"no default catalog"))?
            .register_schema("pg_catalog", Arc::new(pg_catalog))
            .map_err(|e| fail("set up pg_catalog", &e))?;
        Ok(Catalog {
            bundle,
            ctx,
            dp: dp_ports,
        })
    }
}

/// The configuration of a SQL session over database `db`.
fn session_config(db: &str) -> SessionConfig {
    query_config()
        .with_default_catalog_and_schema(db, SCHEMA)
        .with_information_schema(true)
        .with_create_default_catalog_and_schema(true)
}

/// What every SQL session over one database shares: a template session
/// with the functions and type planners PostgreSQL clients need
/// (`pg_catalog`'s, `version()`, `to_regtype()`, …), and `pg_catalog`'s
/// static tables. Built once per database, so that a connection holds only
/// its own catalog.
struct Shared {
    template: SessionState,
    statics: Arc<PgCatalogStaticTables>,
}

/// The shared parts of `db`'s sessions, built on first use.
fn shared(db: &str) -> Result<Arc<Shared>, SqlError> {
    static SHARED: LazyLock<Mutex<HashMap<String, Arc<Shared>>>> =
        LazyLock::new(|| Mutex::new(HashMap::new()));
    let mut all = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = all.get(db) {
        return Ok(Arc::clone(s));
    }
    let fail = |e: &dyn std::fmt::Display| {
        tracing::error!("cannot set up pg_catalog: {e}");
        SqlError::plan_failed()
    };
    let template = SessionContext::new_with_config(session_config(db));
    setup_pg_catalog(&template, db, EmptyContextProvider).map_err(|e| fail(&e))?;
    template.register_udf(version());
    template.register_udf(to_regtype());
    template.register_udf(type_is_visible());
    let shared = Arc::new(Shared {
        template: template.state(),
        statics: Arc::new(PgCatalogStaticTables::try_new().map_err(|e| fail(&e))?),
    });
    all.insert(db.to_string(), Arc::clone(&shared));
    Ok(shared)
}

/// The port and its privacy rule, when the consumer may aggregate it (and
/// the rule offers aggregates) though not read it.
fn aggregate_only(bundle: &ActiveBundle, port: &PortInfo, asker: Asker<'_>) -> Option<DpPort> {
    let allowed = bundle
        .policies()
        .decide(bundle.view(), "aggregate", &port.name, None, asker)
        .is_ok_and(|d| d.allowed);
    if !allowed {
        return None;
    }
    let info = &bundle.view().info;
    let rule = rule_for(
        &bundle.policies().privacy,
        &info.domain,
        &info.id,
        &port.name,
    )?;
    Some(DpPort {
        port: port.clone(),
        rule: rule.clone(),
    })
}

/// `version()`, in the form PostgreSQL clients parse (SQLAlchemy reads
/// the server's major version from it).
fn version() -> ScalarUDF {
    let text = format!(
        "PostgreSQL {PG_VERSION} on meshgov sidecar {} (Apache DataFusion {})",
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION
    );
    create_udf(
        "version",
        Vec::new(),
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |_| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(text.clone()))))),
    )
}

/// `to_regtype(name)`: the oid of a built-in type, or null for any other
/// name (psycopg looks extension types such as `hstore` up with it; none
/// exist here).
fn to_regtype() -> ScalarUDF {
    const TYPES: &[(&str, i32)] = &[
        ("bool", 16),
        ("boolean", 16),
        ("bytea", 17),
        ("int8", 20),
        ("bigint", 20),
        ("int2", 21),
        ("smallint", 21),
        ("int4", 23),
        ("integer", 23),
        ("text", 25),
        ("json", 114),
        ("float4", 700),
        ("real", 700),
        ("float8", 701),
        ("double precision", 701),
        ("varchar", 1043),
        ("character varying", 1043),
        ("date", 1082),
        ("timestamp", 1114),
        ("timestamp without time zone", 1114),
        ("timestamptz", 1184),
        ("timestamp with time zone", 1184),
        ("numeric", 1700),
        ("uuid", 2950),
        ("jsonb", 3802),
    ];
    create_udf(
        "to_regtype",
        vec![DataType::Utf8],
        DataType::Int32,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let names = ColumnarValue::values_to_arrays(args)?;
            let oids: Int32Array = names
                .first()
                .map(|a| {
                    a.as_string::<i32>()
                        .iter()
                        .map(|n| {
                            let n = n?
                                .trim()
                                .trim_start_matches("pg_catalog.")
                                .to_ascii_lowercase();
                            TYPES.iter().find(|(t, _)| *t == n).map(|(_, oid)| *oid)
                        })
                        .collect()
                })
                .unwrap_or_else(|| Int32Array::from(Vec::<i32>::new()));
            Ok(ColumnarValue::Array(Arc::new(oids)))
        }),
    )
}

/// `pg_type_is_visible(oid)`: every type is (there is one schema).
fn type_is_visible() -> ScalarUDF {
    create_udf(
        "pg_type_is_visible",
        vec![DataType::Int32],
        DataType::Boolean,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let n = match args.first() {
                Some(ColumnarValue::Array(a)) => a.len(),
                _ => 1,
            };
            Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(vec![
                true;
                n
            ]))))
        }),
    )
}

/// The PostgreSQL version the SQL port presents itself as.
pub(crate) const PG_VERSION: &str = "16.6";

/// A port as a table: the consumer's view of it, with the fields they
/// may see. Scanning it opens the port's upstream and plans the view.
#[derive(Debug)]
pub(crate) struct GovernedTable {
    app: Arc<App>,
    port: PortInfo,
    rules: Arc<Rules>,
    /// The columns, as the consumer sees them.
    schema: SchemaRef,
    /// Each field's treatment label.
    labels: Vec<(String, String)>,
    policies: Vec<String>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

fn column(name: &str) -> Expr {
    Expr::Column(Column::new_unqualified(name))
}

impl GovernedTable {
    fn new(
        app: &Arc<App>,
        ctx: &SessionContext,
        port: &PortInfo,
        rules: Arc<Rules>,
        labels: Vec<(String, String)>,
        policies: Vec<String>,
    ) -> Result<GovernedTable, SqlError> {
        // The view over an empty table of the port: its output schema.
        let empty = ctx
            .read_table(Arc::new(EmptyTable::new(port_schema(port))))
            .and_then(|t| {
                let view = consumer_view(t, port, &rules, &Window::default())
                    .map_err(|e| DataFusionError::Plan(e.to_string()))?;
                visible(view, &rules, None)
            })
            .map_err(|e| {
                tracing::error!(port = %port.name, "cannot plan the consumer's view: {e}");
                SqlError::plan_failed()
            })?;
        let schema: Schema = empty.schema().as_arrow().clone();
        Ok(GovernedTable {
            app: Arc::clone(app),
            port: port.clone(),
            rules,
            schema: Arc::new(schema),
            labels,
            policies,
        })
    }
}

/// `view` narrowed to the fields the consumer may see, or to `only` of
/// them (by position among the visible fields).
fn visible(
    view: DataFrame,
    rules: &Rules,
    only: Option<&[usize]>,
) -> Result<DataFrame, DataFusionError> {
    let names = visible_fields(rules);
    let columns: Vec<Expr> = match only {
        None => names.iter().map(|n| column(n)).collect(),
        Some(ix) => ix
            .iter()
            .filter_map(|i| names.get(*i))
            .map(|n| column(n))
            .collect(),
    };
    view.select(columns)
}

#[async_trait]
impl TableProvider for GovernedTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        let state = state
            .as_any()
            .downcast_ref::<SessionState>()
            .ok_or_else(|| DataFusionError::Internal("not a SQL port's session".into()))?;
        let columns: Vec<(String, String)> = {
            let names = visible_fields(&self.rules);
            let read: Vec<&str> = match projection {
                None => names,
                Some(ix) => ix.iter().filter_map(|i| names.get(*i).copied()).collect(),
            };
            self.labels
                .iter()
                .filter(|(f, _)| read.contains(&f.as_str()))
                .cloned()
                .collect()
        };
        if let Some(log) = state.config().get_extension::<QueryLog>() {
            log.note(&self.port.name, &columns, &self.policies);
        }
        let opened = self
            .app
            .open_port(
                &self.port.name,
                &self.port.fields,
                Window::default(),
                "the product's upstream could not be read",
            )
            .await
            .map_err(|e| {
                DataFusionError::External(Box::new(SqlError::new(
                    "58030",
                    e.code,
                    format!("{}; nothing was served", e.reason),
                )))
            })?;
        let (table, bucket) = Source::from(opened).table(&self.app, &self.port.name, &self.port)?;
        if let Some(b) = bucket {
            state
                .runtime_env()
                .register_object_store(&b.url, Arc::clone(&b.store));
        }
        let scan =
            LogicalPlanBuilder::scan(self.port.name.as_str(), provider_as_source(table), None)?
                .build()?;
        let table = DataFrame::new(state.clone(), scan);
        let view = consumer_view(table, &self.port, &self.rules, &Window::default())
            .map_err(|e| DataFusionError::Plan(e.to_string()))?;
        let view = visible(view, &self.rules, projection.map(Vec::as_slice))?;
        view.create_physical_plan().await
    }
}

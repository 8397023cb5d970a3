//! The scripted tour: each step prints what it sends and what came back,
//! and checks that the mesh behaved as the policies say; a step that does
//! not is an error (exit 1), so the tour doubles as a smoke test.

use super::Mesh;
use crate::Failure;
use http::{Method, header};
use meshgov_conformance::live::at;
use meshgov_server::client::{Answer, HttpClient};
use serde_json::Value;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

fn section(title: &str) {
    let rule = "─".repeat(66usize.saturating_sub(title.chars().count()));
    outln!("\n── {title} {rule}");
}

fn expect(ok: bool, what: &str) -> Result<(), Failure> {
    if ok {
        outln!("   ok: {what}");
        Ok(())
    } else {
        Err(Failure::violations(format!("the tour expected: {what}")))
    }
}

async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    token: &str,
    body: Option<&Value>,
) -> Result<Answer, Failure> {
    let mut headers = vec![(header::AUTHORIZATION, format!("Bearer {token}"))];
    if body.is_some() {
        headers.push((header::CONTENT_TYPE, "application/json".into()));
    }
    let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    client
        .send(method, url, &headers, body.into(), TIMEOUT)
        .await
        .map_err(|e| Failure::usage(e.to_string()))
}

/// Reads `port` as one consumer and prints the answer.
async fn read(
    m: &Mesh,
    client: &HttpClient,
    product: &str,
    port: &str,
    who: (&str, &[&str], &str),
) -> Result<(u16, Vec<Value>), Failure> {
    let (sub, groups, purpose) = who;
    let s = m
        .sidecar(product)
        .ok_or_else(|| Failure::usage(format!("no sidecar for {product}")))?;
    let token = m.token(sub, groups, purpose)?;
    let url = format!("{}/v1/ports/{port}/records?limit=3", s.data_url());
    outln!(
        "\n$ GET {url}\n  as {sub} (groups: {}; purpose: {purpose})",
        if groups.is_empty() {
            "none".to_string()
        } else {
            groups.join(", ")
        }
    );
    let a = send(client, Method::GET, &url, &token, None).await?;
    let body = String::from_utf8_lossy(&a.body);
    outln!("  {}", a.status);
    let mut records = Vec::new();
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        outln!("  {line}");
        if let Ok(v) = serde_json::from_str::<Value>(line) {
            records.push(v);
        }
    }
    Ok((a.status.as_u16(), records))
}

/// Reads the plays of one country as an Arrow stream, by projection and
/// filter, and checks the rows against the same read as NDJSON.
async fn columnar(m: &Mesh, client: &HttpClient) -> Result<(), Failure> {
    use meshgov_columnar::datafusion::arrow::ipc::reader::StreamReader;
    let s = m
        .sidecar("playback/play-events")
        .ok_or_else(|| Failure::usage("no play-events sidecar"))?;
    let token = m.token("dana", &["data-science"], "product-analytics")?;
    let url = format!(
        "{}/v1/ports/plays/records?fields=country,device,duration_ms&filter=country+eq+%27SE%27+and+duration_ms+ge+60000",
        s.data_url()
    );
    outln!(
        "\n$ GET {url}\n  Accept: application/vnd.apache.arrow.stream\n  as dana (groups: data-science; purpose: product-analytics)"
    );
    let headers = vec![
        (header::AUTHORIZATION, format!("Bearer {token}")),
        (header::ACCEPT, "application/vnd.apache.arrow.stream".into()),
    ];
    let a = client
        .send(Method::GET, &url, &headers, Default::default(), TIMEOUT)
        .await
        .map_err(|e| Failure::usage(e.to_string()))?;
    outln!("  {}, {} bytes", a.status, a.body.len());
    let reader = StreamReader::try_new(std::io::Cursor::new(a.body.to_vec()), None)
        .map_err(|e| Failure::violations(format!("the answer is not an Arrow stream: {e}")))?;
    let columns: Vec<String> = reader
        .schema()
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect();
    outln!("  schema: {}", columns.join(", "));
    let mut rows = 0;
    for batch in reader {
        let batch = batch.map_err(|e| Failure::violations(format!("a broken Arrow batch: {e}")))?;
        rows += batch.num_rows();
    }
    outln!("  {rows} rows");
    let ndjson = send(client, Method::GET, &url, &token, None).await?;
    let lines = ndjson
        .body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    expect(
        a.status == 200 && columns.len() == 3 && rows > 0 && rows == lines,
        "the Arrow answer holds the projected fields and the filtered rows, the same rows as NDJSON",
    )
}

fn emails(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| match at(r, "/email") {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

pub async fn run(m: &Mesh) -> Result<(), Failure> {
    let client = HttpClient::default();
    let mia = ("mia", &["marketing"][..], "campaign-analytics");
    let finn = ("finn", &["fraud"][..], "fraud-investigation");
    let olaf = ("olaf", &[][..], "campaign-analytics");

    section("1. One port, three consumers");
    let (status, masked) = read(m, &client, "users/user-profiles", "profiles", mia).await?;
    expect(
        status == 200 && !masked.is_empty() && emails(&masked).iter().all(|e| e.contains('*')),
        "the marketing analyst gets masked emails, no names, birth years and pseudonymous ids",
    )?;
    let (status, clear) = read(m, &client, "users/user-profiles", "profiles", finn).await?;
    expect(
        status == 200
            && emails(&clear)
                .iter()
                .all(|e| e.contains('@') && !e.contains('*')),
        "the fraud investigator, for a fraud investigation, sees the emails",
    )?;
    let (status, _) = read(m, &client, "users/user-profiles", "profiles", olaf).await?;
    expect(
        status == 403,
        "a consumer no policy permits is refused (403), with no policy named",
    )?;

    section("2. Plays kept as Parquet, read as Arrow");
    columnar(m, &client).await?;

    section("3. A differentially private aggregate");
    let plays = m
        .sidecar("playback/play-events")
        .ok_or_else(|| Failure::usage("no play-events sidecar"))?;
    let url = format!("{}/v1/ports/plays/aggregate", plays.data_url());
    let query = serde_json::json!({
        "aggregations": [{"count": {}}],
        "group_by": ["country"],
        "epsilon": 0.5,
    });
    let token = m.token(mia.0, mia.1, mia.2)?;
    outln!("\n$ POST {url}\n  as mia: {query}");
    let a = send(&client, Method::POST, &url, &token, Some(&query)).await?;
    let v: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
    outln!("  {}", a.status);
    for g in at(&v, "/groups").as_array().into_iter().flatten() {
        outln!(
            "  {}  plays ≈ {:>7.0}",
            at(g, "/key/country").as_str().unwrap_or("?"),
            at(g, "/count").as_f64().unwrap_or(f64::NAN),
        );
    }
    for s in at(&v, "/statistics").as_array().into_iter().flatten() {
        outln!(
            "  {}: {} noise, scale {:.2}, 95% within ±{:.1}",
            at(s, "/statistic").as_str().unwrap_or("?"),
            at(s, "/mechanism").as_str().unwrap_or("?"),
            at(s, "/scale").as_f64().unwrap_or(f64::NAN),
            at(s, "/ci95").as_f64().unwrap_or(f64::NAN)
        );
    }
    let left = at(&v, "/budget/consumer/epsilon_remaining").as_f64();
    outln!(
        "  cost ε = {}, budget left for mia and this purpose today: ε = {}",
        at(&v, "/cost/epsilon"),
        left.map_or("?".into(), |l| format!("{l}"))
    );
    expect(
        a.status == 200 && left.is_some(),
        "the answer carries noisy values, the noise scale and the budget left",
    )?;
    let again = send(&client, Method::POST, &url, &token, Some(&query)).await?;
    let w: Value = serde_json::from_slice(&again.body).unwrap_or(Value::Null);
    outln!(
        "\n$ the same query again\n  {}  cached: {}, budget left: ε = {}",
        again.status,
        at(&w, "/cached"),
        at(&w, "/budget/consumer/epsilon_remaining")
    );
    expect(
        at(&w, "/cached") == true && at(&w, "/budget/consumer/epsilon_remaining").as_f64() == left,
        "a repeat returns the stored answer at no cost, so noise cannot be averaged away",
    )?;

    section("4. A policy change, rolled out live");
    let before = m
        .sidecars
        .iter()
        .filter_map(super::Sidecar::revision)
        .max()
        .unwrap_or(0);
    let edits = [
        (
            "anonymization/personal-data.toml",
            "transform = \"mask\"\nkeep_first = 1\nkeep_last = 4\n",
            "transform = \"redact\"\n",
        ),
        (
            "tests/anonymization.toml",
            "email = \"mask\"",
            "email = \"redact\"",
        ),
        (
            "tests/anonymization.toml",
            "\"email\": \"a****************.com\"",
            "\"email\": null",
        ),
    ];
    for (file, from, to) in edits {
        let path = m.dir.join("policies").join(file);
        let text = std::fs::read_to_string(&path).map_err(|e| Failure::io(&path, &e))?;
        if !text.contains(from) {
            return Err(Failure::usage(format!(
                "`{}` no longer holds the text the tour edits",
                path.display()
            )));
        }
        std::fs::write(&path, text.replacen(from, to, 1)).map_err(|e| Failure::io(&path, &e))?;
    }
    outln!(
        "\nedited policies/anonymization/personal-data.toml: `anon.email` now redacts\n(and its policy test now expects that); the engine checks, tests, signs\nand pushes the next revision…"
    );
    let started = std::time::Instant::now();
    m.wait_for_revision(before + 1, Duration::from_secs(30))
        .await?;
    let after = m
        .sidecars
        .iter()
        .filter_map(super::Sidecar::revision)
        .min()
        .unwrap_or(0);
    outln!(
        "revision {before} → {after}, in force on every sidecar after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (status, redacted) = read(m, &client, "users/user-profiles", "profiles", mia).await?;
    expect(
        status == 200 && !redacted.is_empty() && redacted.iter().all(|r| at(r, "/email").is_null()),
        "the marketing analyst's next read has no email at all",
    )?;

    section("5. The audit trail");
    for s in &m.sidecars {
        let dir = m
            .dir
            .join("state")
            .join(s.product.split('/').nth(1).unwrap_or(""));
        let key = s.running.app().audit.public_key();
        outln!(
            "\n$ meshgov audit verify {} --key {}",
            dir.join("audit").display(),
            dir.join("audit-signing.pub").display()
        );
        match meshgov_audit::verify_path(&dir.join("audit"), &key) {
            Ok(summary) => {
                outln!("  {summary}");
                expect(
                    summary.events > 0,
                    &format!("{}: every decision is in an intact hash chain", s.product),
                )?;
            }
            Err(e) => {
                return Err(Failure::violations(format!(
                    "{}: the audit log does not verify: {e}",
                    s.product
                )));
            }
        }
    }
    Ok(())
}

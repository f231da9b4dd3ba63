//! Golden tests of the config pipeline: each folder under `tests/golden/`
//! holds YAML input and `expected.json`, the pipeline's whole answer for it:
//! every diagnostic (as `ingressd check` prints them), the `/config_dump`
//! document, and the `explain` answer for each query in `queries.txt`.
//!
//! Refresh with `BLESS=1 cargo test -p ingress-userspace --test golden` and
//! review the diff: the diff is the behaviour change.

use std::fs;
use std::path::{Path, PathBuf};

use ingress_userspace::explain::{self, Query};
use ingress_userspace::pipeline::{self, Options};
use serde_json::{Value, json};

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<PathBuf> = fs::read_dir(&root)
        .expect("tests/golden exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    cases
}

/// Parses one `queries.txt` line: `port=80 host=a.com path=/x method=GET tls sni=a.com header=k:v`.
fn parse_query(line: &str) -> Query {
    let mut query = Query::default();
    for word in line.split_whitespace() {
        let (key, value) = word.split_once('=').unwrap_or((word, ""));
        match key {
            "port" => query.port = value.parse().expect("port is a number"),
            "host" => query.host = Some(value.to_owned()),
            "path" => query.path = Some(value.to_owned()),
            "method" => query.method = Some(value.to_owned()),
            "protocol" => query.protocol = Some(value.to_owned()),
            "tls" => query.tls = true,
            "sni" => {
                query.tls = true;
                query.sni = Some(value.to_owned());
            }
            "header" => {
                let (k, v) = value.split_once(':').expect("header=name:value");
                query.headers.push((k.to_owned(), v.to_owned()));
            }
            other => panic!("unknown query key {other:?} in {line:?}"),
        }
    }
    query
}

fn run_case(dir: &Path) -> Value {
    let outcome = pipeline::build_from_dir(dir, &Options::default());
    let prefix = format!("{}/", dir.display());
    let diagnostics: Vec<String> = outcome
        .diagnostics
        .iter()
        .map(|d| d.to_string().replace(&prefix, ""))
        .collect();
    let queries_file = dir.join("queries.txt");
    let mut explained = Vec::new();
    if let (Some(snapshot), Ok(text)) = (&outcome.snapshot, fs::read_to_string(&queries_file)) {
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let mut answer = explain::explain(snapshot, &parse_query(line));
            if let Value::Object(map) = &mut answer {
                map.remove("request");
            }
            explained.push(json!({ "query": line, "answer": answer }));
        }
    }
    json!({
        "accepted": outcome.snapshot.is_some(),
        "diagnostics": diagnostics,
        "explain": explained,
        "config_dump": outcome.snapshot.as_ref().map(ingress_userspace::dump::config_dump),
    })
}

#[test]
fn golden() {
    let bless = std::env::var_os("BLESS").is_some();
    let mut failures = Vec::new();
    let cases = cases();
    assert!(!cases.is_empty(), "no golden cases found");
    for dir in cases {
        let actual = serde_json::to_string_pretty(&run_case(&dir)).expect("serializable") + "\n";
        let expected_file = dir.join("expected.json");
        if bless {
            fs::write(&expected_file, &actual).expect("write expected.json");
            continue;
        }
        let expected = fs::read_to_string(&expected_file).unwrap_or_default();
        if expected != actual {
            let actual_file = dir.join("actual.json");
            fs::write(&actual_file, &actual).expect("write actual.json");
            failures.push(format!(
                "{}: output differs from expected.json (see {}; BLESS=1 to accept)",
                dir.display(),
                actual_file.display()
            ));
        } else {
            let _ = fs::remove_file(dir.join("actual.json"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

//! `ingressd check` and `ingressd explain` on the seed config (no root needed).

use ingressd_tests::config::{COUNTER_HOST, counter_virtual_service, self_signed_cert};
use ingressd_tests::{ConfigDir, SeedGateway, explain, ingressd_bin, ingressd_cli};

fn seed_dir() -> ConfigDir {
    let dir = ConfigDir::temp().expect("temp dir for the config");
    dir.write_all(&SeedGateway::seed_config().files())
        .expect("writing the seed config");
    dir
}

/// A string field, or the `name` of an object field.
fn name(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => o.get("name").map(name).unwrap_or_default(),
        _ => String::new(),
    }
}

#[test]
fn explain_routes_the_seed_request_to_the_counter_cluster() {
    let dir = seed_dir();
    let e = explain(&ingressd_bin().unwrap(), dir.path(), 80, COUNTER_HOST, "/").unwrap();
    assert_eq!(name(&e["listener"]), "0.0.0.0_8080", "{e:#}");
    assert!(name(&e["virtual_host"]).contains(COUNTER_HOST), "{e:#}");
    assert_eq!(
        name(&e["cluster"]),
        "outbound|80||counter.default.svc.cluster.local",
        "{e:#}"
    );
    assert!(
        e.get("error").is_none_or(serde_json::Value::is_null),
        "{e:#}"
    );
}

#[test]
fn check_accepts_the_seed_with_its_https_server() {
    let dir = ConfigDir::temp().expect("temp dir for the config");
    let certs = dir.path().join("certs");
    let mut seed = SeedGateway::seed_config();
    seed.tls_files = Some(self_signed_cert(&certs).unwrap());
    dir.write_all(&seed.files()).unwrap();
    let out = ingressd_cli(&["check", "--config", &dir.path().to_string_lossy()]).unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn explain_reports_an_unknown_host() {
    let dir = seed_dir();
    let e = explain(
        &ingressd_bin().unwrap(),
        dir.path(),
        80,
        "nope.example.com",
        "/",
    )
    .unwrap();
    // The seed's `mysql` VirtualService has hosts `*`, so depending on whether a
    // VirtualService without http routes yields a (route-less) `*` virtual host, the
    // request stops at the virtual host or at the route; either way it reaches no cluster.
    assert!(
        e["error"] == "no_virtual_host" || e["error"] == "no_route",
        "{e:#}"
    );
    assert!(e["cluster"].is_null(), "{e:#}");
}

#[test]
fn check_accepts_the_seed_and_rejects_an_invalid_regex() {
    let dir = seed_dir();
    let path = dir.path().to_string_lossy().into_owned();
    let ok = ingressd_cli(&["check", "--config", &path]).unwrap();
    assert!(
        ok.status.success(),
        "check failed on the seed config: {}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );

    let broken = counter_virtual_service().replace(
        "    - uri:\n        prefix: /\n",
        "    - uri:\n        regex: \"/(unclosed\"\n",
    );
    dir.write("counter-virtualservice.yaml", &broken).unwrap();
    let bad = ingressd_cli(&["check", "--config", &path]).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&bad.stdout),
        String::from_utf8_lossy(&bad.stderr)
    );
    assert_eq!(bad.status.code(), Some(1), "{text}");
    assert!(text.contains("spec.http[0].match[0].uri.regex"), "{text}");
    assert!(text.contains("counter-virtualservice.yaml"), "{text}");
}

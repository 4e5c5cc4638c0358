use super::*;

fn tree(files: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    files.iter().map(|(p, c)| (p.to_string(), c.as_bytes().to_vec())).collect()
}

#[test]
fn catwalk_toml_package() {
    let t = tree(&[(
        "catwalk.toml",
        r#"
[server]
package = "pypi:mcp-server-time"
args = ["--local-timezone", "UTC"]
[env.TZ_DEFAULT]
value = "UTC"
[env.API_KEY]
required = true
secret = true
description = "the key"
"#,
    )]);
    let plan = analyse(&t).unwrap();
    assert_eq!(plan.language, Language::Python);
    assert_eq!(
        plan.source,
        Source::Package { registry: Registry::Pypi, name: "mcp-server-time".into(), version: None }
    );
    assert_eq!(plan.args, ["--local-timezone", "UTC"]);
    assert_eq!(plan.env.len(), 2);
    assert!(plan.describe().contains("PyPI package mcp-server-time"));
}

#[test]
fn npm_spec_with_version_and_scope() {
    assert_eq!(
        parse_package_spec("npm:@modelcontextprotocol/server-everything@2025.9.25").unwrap(),
        (Registry::Npm, "@modelcontextprotocol/server-everything".into(), Some("2025.9.25".into()))
    );
    assert_eq!(parse_package_spec("pypi:mcp-server-time==1.0").unwrap().2.as_deref(), Some("1.0"));
    assert!(parse_package_spec("mcp-server-time").unwrap_err().contains("prefix it"));
    assert!(parse_package_spec("npm:foo; rm -rf /").unwrap_err().contains("not a valid npm name"));
    assert!(parse_package_spec("npm:../x").is_err());
    assert!(parse_package_spec("npm:foo@^1.0").unwrap_err().contains("not an exact version"));
}

#[test]
fn denied_env_and_bad_args_are_refused() {
    let t = tree(&[(
        "catwalk.toml",
        "[server]\npackage = \"npm:x\"\n[env.NODE_OPTIONS]\nvalue = \"--require /tmp/x\"\n",
    )]);
    assert!(analyse(&t).unwrap_err().contains("NODE_OPTIONS"));
    let t = tree(&[("catwalk.toml", "[server]\npackage = \"npm:x\"\nargs = [\"$(id)\"]\n")]);
    assert!(analyse(&t).unwrap_err().contains("not allowed"));
    let t = tree(&[(
        "catwalk.toml",
        "[server]\npackage = \"npm:x\"\n[env.TOKEN]\nsecret = true\nvalue = \"s3cret\"\n",
    )]);
    let err = analyse(&t).unwrap_err();
    assert!(err.contains("secrets.age") && !err.contains("s3cret"), "{err}");
}

#[test]
fn unknown_manifest_keys_are_named() {
    let t = tree(&[("catwalk.toml", "[server]\npackage = \"npm:x\"\npackge = 1\n")]);
    assert!(analyse(&t).unwrap_err().contains("packge"));
}

#[test]
fn repository_command() {
    let t = tree(&[
        ("catwalk.toml", "[server]\nlanguage = \"python\"\ncommand = [\"python\", \"server.py\"]\n"),
        ("server.py", "print()"),
    ]);
    let plan = analyse(&t).unwrap();
    assert_eq!(plan.source, Source::Repository);
    assert_eq!(plan.entry, Entry::Command { argv: vec!["python".into(), "server.py".into()] });
    let t = tree(&[("catwalk.toml", "[server]\nlanguage = \"python\"\ncommand = [\"../../bin/sh\"]\n")]);
    assert!(analyse(&t).is_err());
}

#[test]
fn server_json() {
    let t = tree(&[(
        "server.json",
        r#"{"name":"io.github.x/y","packages":[{"registryType":"npm","identifier":"@x/y","version":"1.0.2",
            "transport":{"type":"stdio"},
            "packageArguments":[{"type":"named","name":"--port","value":"3"},{"type":"positional","value":"v"}],
            "environmentVariables":[{"name":"TOKEN","isRequired":true,"isSecret":true,"description":"d"}]}]}"#,
    )]);
    let plan = analyse(&t).unwrap();
    assert_eq!(plan.args, ["--port", "3", "v"]);
    assert!(plan.env[0].secret && plan.env[0].required);
    assert_eq!(
        plan.source,
        Source::Package { registry: Registry::Npm, name: "@x/y".into(), version: Some("1.0.2".into()) }
    );
}

#[test]
fn package_json_and_pyproject() {
    let t = tree(&[(
        "package.json",
        r#"{"name":"s","bin":{"s":"./dist/index.js"},"dependencies":{"@modelcontextprotocol/sdk":"^1"}}"#,
    )]);
    assert_eq!(
        analyse(&t).unwrap().entry,
        Entry::Command { argv: vec!["node".into(), "dist/index.js".into()] }
    );
    let t = tree(&[("package.json", r#"{"name":"web","dependencies":{"react":"1"}}"#)]);
    assert!(analyse(&t).unwrap_err().contains("smallest catwalk.toml"));
    let t = tree(&[(
        "pyproject.toml",
        "[project]\nname=\"s\"\ndependencies=[\"mcp[cli]>=1.2\"]\n[project.scripts]\nserve = \"s:main\"\n",
    )]);
    assert_eq!(analyse(&t).unwrap().entry, Entry::PackageBin { bin: Some("serve".into()) });
}

#[test]
fn empty_repository_shows_minimal_manifest() {
    let err = analyse(&tree(&[("README.md", "hi")])).unwrap_err();
    assert!(err.contains("[server]") && err.contains("package ="), "{err}");
}

#[test]
fn network_none_is_a_deploy_option() {
    let t = tree(&[("catwalk.toml", "[server]\npackage = \"npm:x\"\n[deploy]\nnetwork = \"none\"\n")]);
    assert!(analyse(&t).unwrap().no_network);
    let t = tree(&[("catwalk.toml", "[server]\npackage = \"npm:x\"\n[deploy]\nnetwork = \"internet\"\n")]);
    assert!(analyse(&t).unwrap_err().contains("deploy.network"));
}

#[test]
fn http_transport_paths_and_ports_are_checked_in_every_manifest() {
    // A newline in the path would have printed a forged `remote:` line in the push output.
    let t = tree(&[(
        "catwalk.toml",
        "[server]\npackage = \"npm:x\"\ntransport = \"http\"\npath = \"/mcp\\nremote: -----> live\"\n",
    )]);
    let err = analyse(&t).unwrap_err();
    assert!(err.contains("is not a URL path") && !err.contains('\n'), "{err}");
    // server.json's transport URL used to skip the checks catwalk.toml's transport gets.
    for (url, expected) in [
        ("http://localhost:0/mcp", "port 0 is not a port"),
        ("http://localhost:{port}/../../admin", "is not a URL path"),
        ("http://localhost:{port}/mcp\nremote: forged", "is not a URL path"),
    ] {
        let json = serde_json::json!({"packages": [{"registryType": "npm", "identifier": "x", "version": "1.0.0",
            "transport": {"type": "streamable-http", "url": url}}]});
        let err = analyse(&tree(&[("server.json", &json.to_string())])).unwrap_err();
        assert!(err.starts_with("server.json: ") && err.contains(expected), "{url}: {err}");
    }
    let t = tree(&[(
        "catwalk.toml",
        "[server]\npackage = \"npm:x\"\n[deploy]\nallowed_origins = [\"https://a.example\\u001b[31m\"]\n",
    )]);
    assert!(analyse(&t).unwrap_err().contains("is not an origin"));
}

#[test]
fn machines_is_a_deploy_option_from_one_to_ten() {
    let with = |n: &str| {
        tree(&[("catwalk.toml", &*format!("[server]\npackage = \"npm:x\"\n[deploy]\nmachines = {n}\n"))])
    };
    assert_eq!(analyse(&with("3")).unwrap().machines, Some(3));
    assert_eq!(
        analyse(&tree(&[("catwalk.toml", "[server]\npackage = \"npm:x\"\n")])).unwrap().machines,
        None
    );
    for bad in ["0", "11"] {
        let err = analyse(&with(bad)).unwrap_err();
        assert!(err.contains(&format!("deploy.machines = {bad}: use 1 to 10")), "{err}");
    }
}

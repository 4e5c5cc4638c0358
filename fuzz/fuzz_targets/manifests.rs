//! Analysis of a pushed tree (`pipeline::analyse::analyse`): catwalk.toml, server.json, package.json,
//! pyproject.toml and requirements.txt in an in-memory tree, plus `parse_package_spec` and the grammar
//! checks of `pipeline::validate` on their own.
//!
//! Input: the first byte chooses which files exist (one bit each); the rest is split on 0xFF (a byte
//! that never occurs in UTF-8) into the contents of the chosen files, in order.
//!
//! Invariants: no panic; every refusal is a non-empty message; an accepted plan holds only values the
//! validators accept (package names, exact versions, arguments, env names, origins, HTTP port/path) and
//! describes itself on one line (no control characters that could forge extra `remote:` lines).
#![no_main]

use std::collections::BTreeMap;

use catwalk::pipeline::analyse::{analyse, parse_package_spec};
use catwalk::plan::{Entry, Registry, Source, Transport};
use catwalk::pipeline::validate;
use libfuzzer_sys::fuzz_target;

const FILES: &[&str] = &["catwalk.toml", "server.json", "package.json", "pyproject.toml", "requirements.txt"];

const SHELL_META: &[char] = &[
    ';', '&', '|', '$', '`', '<', '>', '(', ')', '{', '}', '\\', '"', '\'', '\n', '\r', '\0', '*', '?', '!',
];

fn no_control(text: &str) -> bool {
    !text.chars().any(char::is_control)
}

fn package(registry: Registry, name: &str, version: Option<&str>) {
    match registry {
        Registry::Npm => {
            validate::npm_name(name).expect("an accepted npm name validates");
            let base = name.strip_prefix('@').map_or(name, |r| r.split_once('/').expect("scoped").1);
            assert!(!base.is_empty() && !base.starts_with(['.', '_']), "{name:?}");
        }
        Registry::Pypi => validate::pypi_name(name).expect("an accepted PyPI name validates"),
    }
    assert!(!name.contains(SHELL_META) && !name.contains(char::is_whitespace), "{name:?}");
    if let Some(v) = version {
        validate::exact_version(v).expect("an accepted version is exact");
        assert!(!v.contains(['^', '~', '<', '>', '=', '*', ' ', '|']), "{v:?}");
    }
}

fn argument_ok(arg: &str) {
    validate::argument(arg).expect("an accepted argument validates");
    let unplaced = arg.replace(validate::PORT_PLACEHOLDER, "");
    assert!(!unplaced.contains(SHELL_META) && no_control(&unplaced), "{arg:?}");
}

fn check_validators(text: &str) {
    if let Ok((registry, name, version)) = parse_package_spec(text) {
        package(registry, &name, version.as_deref());
        // What was parsed prints back to a spec that parses to the same thing.
        let again = match (registry, &version) {
            (Registry::Npm, Some(v)) => format!("npm:{name}@{v}"),
            (Registry::Npm, None) => format!("npm:{name}"),
            (Registry::Pypi, Some(v)) => format!("pypi:{name}=={v}"),
            (Registry::Pypi, None) => format!("pypi:{name}"),
        };
        assert_eq!(parse_package_spec(&again), Ok((registry, name, version)), "{text:?}");
    }
    if validate::env_name(text).is_ok() {
        assert!(text.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'), "{text:?}");
        assert!(!text.starts_with("LD_") && text != "NODE_OPTIONS" && text != "PATH", "{text:?}");
    }
    if validate::argument(text).is_ok() {
        argument_ok(text);
    }
    if validate::repo_path(text).is_ok() {
        assert!(!text.starts_with('/') && !text.split('/').any(|c| c == ".."), "{text:?}");
    }
    let once = validate::pypi_normalise(text);
    assert_eq!(validate::pypi_normalise(&once), once, "normalising is idempotent");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mask, rest)) = data.split_first() else { return };
    let mut pieces = rest.split(|b| *b == 0xFF);
    let mut tree = BTreeMap::new();
    for (i, file) in FILES.iter().enumerate() {
        if mask & (1 << i) != 0 {
            tree.insert(file.to_string(), pieces.next().unwrap_or_default().to_vec());
        }
    }
    for content in tree.values() {
        check_validators(&String::from_utf8_lossy(content));
    }
    match analyse(&tree) {
        Err(message) => assert!(!message.trim().is_empty()),
        Ok(plan) => {
            assert!(FILES[..4].contains(&plan.manifest.as_str()), "{}", plan.manifest);
            assert!(tree.contains_key(&plan.manifest));
            if let Source::Package { registry, name, version } = &plan.source {
                package(*registry, name, version.as_deref());
            }
            match &plan.entry {
                Entry::PackageBin { bin: Some(bin) } => argument_ok(bin),
                Entry::PackageBin { bin: None } => {}
                Entry::PythonModule { module } => {
                    assert!(
                        module
                            .split('.')
                            .all(|p| !p.is_empty()
                                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
                    );
                }
                Entry::Command { argv } => {
                    assert!(!argv.is_empty());
                    argv.iter().for_each(|a| argument_ok(a));
                }
            }
            plan.args.iter().for_each(|a| argument_ok(a));
            let mut names = std::collections::BTreeSet::new();
            for env in &plan.env {
                validate::env_name(&env.name).expect("an accepted env name validates");
                assert!(names.insert(env.name.clone()), "{} declared twice", env.name);
                assert!(!(env.secret && env.value.is_some()), "a secret with a value in the manifest");
                assert!(no_control(&env.summary()), "{:?}", env.summary());
            }
            if let Transport::Http { port, path } = &plan.transport {
                assert_ne!(*port, Some(0), "port 0 accepted");
                assert!(path.starts_with('/') && !path.contains(".."), "{path:?}");
                assert!(path.bytes().all(|b| b.is_ascii_graphic()), "{path:?}");
            }
            for origin in &plan.allowed_origins {
                assert!(origin.starts_with("http://") || origin.starts_with("https://"), "{origin:?}");
                assert!(!origin.contains(char::is_whitespace) && no_control(origin), "{origin:?}");
            }
            if let Some(runtime) = &plan.runtime {
                assert!(runtime == "local" || runtime == "fly", "{runtime:?}");
            }
            let line = plan.describe();
            assert!(no_control(&line), "{line:?}");
        }
    }
});

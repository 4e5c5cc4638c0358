//! The one command grammar (SSH exec and the local CLI): an exec line is split into argv by
//! `commands::split_line`, recognised as a git service (`git-receive-pack 'APP'`) or parsed by the clap
//! grammar, exactly as `ssh::exec` does. Also the name rules the commands apply (app names, key and
//! token labels, branches) and the public-key parser behind `keys add`.
//!
//! Invariants: no panic; every refusal is a non-empty message; accepted argv carries no control
//! characters; every name that passes a rule really has only the characters that rule allows.
#![no_main]

use catwalk::commands::{Grammar, MAX_COMMAND_LINE, split_line};
use catwalk::git::Service;
use catwalk::names::{AppName, is_valid_branch, is_valid_label};
use clap::Parser;
use libfuzzer_sys::fuzz_target;

fn assert_app_name(name: &AppName) {
    let b = name.as_str().as_bytes();
    assert!(!b.is_empty() && b.len() <= 63, "{name:?}");
    assert!(b[0].is_ascii_lowercase(), "{name:?}");
    assert!(b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-'), "{name:?}");
}

fn names(text: &str) {
    if let Ok(app) = AppName::parse(text) {
        assert_app_name(&app);
        assert_eq!(app.as_str(), text);
    }
    if let Ok(app) = AppName::from_repo_path(text) {
        assert_app_name(&app);
    }
    if is_valid_label(text) {
        assert!(text.len() <= 64 && !text.starts_with('-'), "{text:?}");
        assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b)), "{text:?}");
    }
    if is_valid_branch(text) {
        assert!(!text.contains("..") && !text.starts_with('-') && !text.ends_with(".lock"), "{text:?}");
        assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b)), "{text:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    match split_line(data) {
        Err(message) => {
            assert!(!message.is_empty());
            if data.len() > MAX_COMMAND_LINE {
                assert!(message.contains("at most"), "{message}");
            }
        }
        Ok(argv) => {
            assert!(data.len() <= MAX_COMMAND_LINE);
            for arg in &argv {
                assert!(!arg.chars().any(|c| c.is_control() && c != '\t'), "{arg:?}");
            }
            if let Some((_, args)) = Service::from_argv(&argv) {
                if let [path] = args
                    && let Ok(app) = AppName::from_repo_path(path)
                {
                    assert_app_name(&app);
                }
            } else {
                match Grammar::try_parse_from(&argv) {
                    Ok(grammar) => {
                        let _ = format!("{grammar:?}");
                    }
                    Err(e) => {
                        let text = e.render().to_string();
                        assert!(!text.trim().is_empty(), "an empty usage error for {argv:?}");
                    }
                }
            }
            for arg in &argv {
                names(arg);
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        names(text);
        // `keys add NAME` reads an OpenSSH public key line from stdin.
        let _ = catwalk::init::parse_public_key(text);
    }
});

//! The dotenv parser behind `.catwalk/secrets.age` (`pipeline::secrets::parse_dotenv`), after decryption.
//!
//! Invariants: no panic; every refusal names a line (`line N`, 1-based, within the text) and never
//! contains a value: each line that has a `=` gets a canary appended to its value, and no error may
//! contain it; every accepted name passes `validate::env_name`; what parses prints back (as
//! `NAME="escaped"` lines) to text that parses to the same secrets.
#![no_main]

use catwalk::pipeline::secrets::parse_dotenv;
use catwalk::pipeline::validate;
use libfuzzer_sys::fuzz_target;

const CANARY: &str = "zq9canary";

fn check(text: &str, canary: bool) {
    let line_count = text.lines().count();
    match parse_dotenv(text) {
        Err(message) => {
            let line: usize = message
                .split("line ")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("the error names no line: {message}"));
            assert!(line >= 1 && line <= line_count, "line {line} of {line_count}: {message}");
            if canary {
                assert!(!message.contains(CANARY), "the error shows a value: {message}");
            }
        }
        Ok(secrets) => {
            assert!(secrets.len() <= line_count);
            let mut printed = String::new();
            for (name, value) in &secrets {
                validate::env_name(name).expect("an accepted name validates");
                let mut escaped = String::new();
                for c in value.expose().chars() {
                    match c {
                        '\\' => escaped.push_str("\\\\"),
                        '"' => escaped.push_str("\\\""),
                        '\n' => escaped.push_str("\\n"),
                        '\t' => escaped.push_str("\\t"),
                        c => escaped.push(c),
                    }
                }
                printed.push_str(&format!("{name}=\"{escaped}\"\n"));
            }
            assert_eq!(parse_dotenv(&printed).as_ref().ok(), Some(&secrets), "{printed:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    check(text, false);
    if text.contains(CANARY) {
        return;
    }
    // The same text with a canary at the end of every value.
    let marked: String = text
        .lines()
        .map(|l| if l.contains('=') { format!("{l}{CANARY}\n") } else { format!("{l}\n") })
        .collect();
    check(&marked, true);
});

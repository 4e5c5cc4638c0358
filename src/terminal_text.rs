//! Text that other parties wrote, made safe to show on a terminal.
//!
//! A server's stderr, push options, tool names and manifest descriptions are written by tenants (or by
//! the packages they deploy) and end up on someone's terminal: in `logs`, `info`, and the `remote:`
//! lines of a push. Raw, `\x1b]0;pwned\x07` retitles that terminal, `\x1b[2J` clears it, and a bare
//! `\r` or a bidi override makes a line read as something it is not. Every control character is
//! therefore shown as what it is: `\x1b` for C0 controls and DEL, `\u{9b}` for C1 controls and the
//! invisible bidi/line-separator characters, never emitted raw.
//!
//! Written here rather than taken from `str::escape_debug` or a crate: `escape_debug` also doubles
//! backslashes, escapes quotes and every non-printable Unicode class (mangling ordinary text), and
//! crates like `strip-ansi-escapes` delete sequences (hiding that something was there) instead of
//! showing them.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` must not reach a terminal raw: C0 controls, DEL, C1 controls, and the characters that
/// reorder or break a line without being visible (bidi embeddings/overrides/isolates, the Arabic letter
/// mark, LRM/RLM, and the Unicode line and paragraph separators).
fn is_hidden_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

fn escape_into(out: &mut String, c: char) {
    if (c as u32) < 0x80 {
        let _ = write!(out, "\\x{:02x}", c as u32);
    } else {
        let _ = write!(out, "\\u{{{:x}}}", c as u32);
    }
}

fn render(text: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !text.chars().any(|c| is_hidden_control(c) && !keep(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_hidden_control(c) && !keep(c) {
            escape_into(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// One line of untrusted text: every control character made visible, including newlines and carriage
/// returns (a field that should be one line cannot start a fake one). Tabs stay.
pub fn visible(text: &str) -> Cow<'_, str> {
    render(text, |c| c == '\t')
}

/// A block of text whose line structure is intended (a table, a help page, a multi-line error): `\n`
/// and tabs stay, every other control character (including `\r`) is made visible. Both transports
/// (SSH exec and the control socket, which also carries a push's `remote:` lines) pass every chunk a
/// command or a push prints through this, so nothing raw reaches a terminal whatever a command forgot.
pub fn visible_lines(text: &str) -> Cow<'_, str> {
    render(text, |c| c == '\n' || c == '\t')
}

/// JSON text (`serde_json` output) with the characters it leaves raw inside strings (DEL, C1 controls,
/// bidi and line-separator characters) written as `\uXXXX` escapes: still valid JSON meaning exactly the
/// same strings, and nothing left for [`visible_lines`] to change. (`serde_json` already escapes the
/// C0 controls; outside strings valid JSON only has spaces, tabs and newlines.)
pub fn json(text: String) -> String {
    // The newlines are `to_string_pretty`'s own layout; inside strings serde_json escapes them.
    let raw = |c: char| is_hidden_control(c) && c != '\n';
    if !text.chars().any(raw) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if raw(c) {
            // Every such character is in the Basic Multilingual Plane: one \u escape each.
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_become_visible() {
        let hostile = "\x1b]0;pwned\x07\x1b[2J";
        assert_eq!(visible(hostile), r"\x1b]0;pwned\x07\x1b[2J");
        assert_eq!(visible_lines(hostile), r"\x1b]0;pwned\x07\x1b[2J");
        assert_eq!(visible("a\rb\nc\td\0\x7f"), r"a\x0db\x0ac	d\x00\x7f");
        assert_eq!(visible_lines("a\rb\nc\td"), "a\\x0db\nc\td");
        // C1 CSI (a one-character escape sequence on some terminals) and a bidi override.
        assert_eq!(visible("x\u{9b}2Jy\u{202e}z"), r"x\u{9b}2Jy\u{202e}z");
    }

    #[test]
    fn ordinary_text_is_borrowed_unchanged() {
        for text in
            ["", "plain ascii", "naïve café – 日本語 🚀", r"a literal \x1b stays as typed", "tab\there"]
        {
            assert!(matches!(visible(text), Cow::Borrowed(t) if t == text), "{text}");
            assert!(matches!(visible_lines(text), Cow::Borrowed(t) if t == text), "{text}");
        }
        assert!(matches!(visible_lines("two\nlines\n"), Cow::Borrowed(_)));
    }

    #[test]
    fn json_stays_valid_and_means_the_same() {
        let value = serde_json::json!({
            "stderr": "\x1b]0;pwned\x07\x1b[2J",
            "c1": "\u{9b}31m\u{85}",
            "bidi": "abc\u{202e}fed\u{2028}",
            "del": "\x7f",
        });
        let text = json(serde_json::to_string_pretty(&value).unwrap());
        assert!(!text.chars().any(|c| is_hidden_control(c) && c != '\n'), "{text:?}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), value);
        // Nothing left for the transports to change, so the JSON is byte-for-byte what the client gets.
        assert_eq!(visible_lines(&text), text.as_str());
        let plain = serde_json::to_string(&serde_json::json!({"a": "b"})).unwrap();
        assert_eq!(json(plain.clone()), plain);
    }
}

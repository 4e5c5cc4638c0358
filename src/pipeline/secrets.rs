//! Secrets: `.catwalk/secrets.age` in the pushed repository, decrypted with the app's own age identity.
//!
//! The file is age-encrypted (binary or ASCII-armored) dotenv text. Values live only in memory, in
//! [`SecretValue`]s whose `Debug`/`Display` print `<redacted>`, and in the server process's environment.
//! Errors name files, lines and variables, never values; the store keeps names and a keyed digest only.
//!
//! **Why per-app identities.** A secrets file usually sits in a repository other people can read. If every
//! app decrypted with one daemon-wide identity, a second tenant could copy that file into their own app
//! and receive its plaintext in their own server's environment. So each app has its own x25519 identity,
//! derived (never stored) from the daemon's identity, the app's name and the app's *incarnation* (a random
//! id fixed when the app record is created; see `store::AppRecord`). A file made for app A has no stanza
//! app B's identity opens, and a file made for a destroyed app does not open for the next tenant who
//! takes its name. `secrets pubkey APP` prints the app's recipient.
//!
//! The derivation is HMAC-SHA256 keyed with the daemon's digest key (itself SHA-256 of the identity's
//! secret), a PRF over a uniformly random key, which is all an x25519 secret needs (any 32 bytes are
//! a valid scalar after clamping). The daemon-wide recipient of catwalk before per-app keys is accepted
//! only to restore or roll back a release that was already deployed with it ([`KeySource::DaemonWide`]).

use std::io::Read;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::validate;
pub use crate::store::KeySource;

/// Path of the secrets file inside a repository.
pub const SECRETS_PATH: &str = ".catwalk/secrets.age";
/// Refuse absurd secrets files before decrypting them.
const MAX_SECRETS_FILE: usize = 1 << 20;

pub use crate::plan::secret::{SecretValue, Secrets};

/// The app a secrets file must belong to: its name and the incarnation id of its store record.
#[derive(Debug, Clone, Copy)]
pub struct AppKeyId<'a> {
    pub app: &'a str,
    pub incarnation: &'a str,
}

/// The daemon's identity, loaded once from `age_identity.txt`.
pub struct AgeIdentity {
    identity: age::x25519::Identity,
    digest_key: [u8; 32],
}

impl AgeIdentity {
    /// Parses the identity file written by `catwalk init` (or by `age-keygen`).
    pub fn from_identity_file(text: &str) -> Result<AgeIdentity, String> {
        use age::secrecy::ExposeSecret;
        use sha2::Digest;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .ok_or("the age identity file holds no AGE-SECRET-KEY line")?;
        let identity: age::x25519::Identity =
            line.parse().map_err(|e: &str| format!("the age identity is corrupt: {e}"))?;
        let mut hasher = Sha256::new();
        hasher.update(b"catwalk secret digest v1\0");
        hasher.update(identity.to_string().expose_secret().as_bytes());
        Ok(AgeIdentity { identity, digest_key: hasher.finalize().into() })
    }

    /// The age identity of one app (see the module doc for why and how it is derived).
    fn app_identity(&self, id: AppKeyId<'_>) -> age::x25519::Identity {
        use bech32::ToBase32;
        let secret = self.derive_key(&format!("app secrets v1\0{}\0{}", id.app, id.incarnation));
        let encoded = bech32::encode("age-secret-key-", secret.to_base32(), bech32::Variant::Bech32)
            .expect("the HRP is valid");
        encoded.to_uppercase().parse().expect("32 bytes always make an x25519 identity")
    }

    /// The `age1...` recipient secrets of `id` must be encrypted to (`secrets pubkey APP`).
    pub fn app_recipient(&self, id: AppKeyId<'_>) -> String {
        self.app_identity(id).to_public().to_string()
    }

    /// Decrypts and parses the secrets file of app `id`. `daemon_wide_allowed` is true only when the
    /// file belongs to a release already deployed with the old daemon-wide identity (restore, rollback);
    /// a new push must use the app's own recipient. Returns the values and which identity opened them.
    pub fn open_for(
        &self,
        id: AppKeyId<'_>,
        bytes: &[u8],
        daemon_wide_allowed: bool,
    ) -> Result<(Secrets, KeySource), String> {
        let app_identity = self.app_identity(id);
        let recipient = app_identity.to_public().to_string();
        let how = format!(
            "encrypt it to app {}'s own recipient: age -r {recipient} -o {SECRETS_PATH} .env  (`secrets pubkey {}` prints it)",
            id.app, id.app
        );
        match decrypt(bytes, &app_identity, &how) {
            Ok(plain) => return Ok((parse_dotenv(&plain)?, KeySource::App)),
            Err(Failure::NoMatchingKey) => {}
            Err(Failure::Other(message)) => return Err(message),
        }
        match decrypt(bytes, &self.identity, &how) {
            Ok(plain) if daemon_wide_allowed => Ok((parse_dotenv(&plain)?, KeySource::DaemonWide)),
            Ok(_) => Err(format!(
                "{SECRETS_PATH} is encrypted to the daemon-wide recipient, which catwalk no longer accepts: \
                 any app on this daemon could replay such a file; {how}"
            )),
            Err(Failure::NoMatchingKey) => Err(format!(
                "{SECRETS_PATH} is not encrypted to app {} (it was made for another app, an earlier app of \
                 the same name, or another daemon); {how}",
                id.app
            )),
            Err(Failure::Other(message)) => Err(message),
        }
    }

    /// A 32-byte key derived from the identity for `purpose` (e.g. Fly bridge credentials): stable across
    /// restarts, never stored, useless without the identity.
    pub fn derive_key(&self, purpose: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.digest_key).expect("any key length");
        mac.update(b"derive\0");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A keyed digest of one value: lets releases say "changed" without storing anything guessable.
    pub fn digest(&self, name: &str, value: &SecretValue) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.digest_key).expect("any key length");
        mac.update(name.as_bytes());
        mac.update(b"\0");
        mac.update(value.expose().as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }
}

/// Why a decryption attempt failed: no stanza for this identity (try the next one), or anything else.
enum Failure {
    NoMatchingKey,
    Other(String),
}

/// Decrypts an age file with one identity into UTF-8 text. `how` (how to make a good file) ends every
/// error; nothing of the content is ever part of one.
fn decrypt(bytes: &[u8], identity: &age::x25519::Identity, how: &str) -> Result<String, Failure> {
    if bytes.len() > MAX_SECRETS_FILE {
        return Err(Failure::Other(format!("{SECRETS_PATH} is larger than 1 MiB")));
    }
    let reader = age::armor::ArmoredReader::new(bytes);
    let decryptor = age::Decryptor::new(reader)
        .map_err(|e| Failure::Other(format!("{SECRETS_PATH} is not an age file ({e}); {how}")))?;
    if decryptor.is_scrypt() {
        return Err(Failure::Other(format!("{SECRETS_PATH} is encrypted with a passphrase; {how}")));
    }
    let mut plain = Vec::new();
    decryptor
        .decrypt(std::iter::once(identity as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => Failure::NoMatchingKey,
            other => Failure::Other(format!("{SECRETS_PATH} cannot be decrypted ({other}); {how}")),
        })?
        .read_to_end(&mut plain)
        .map_err(|e| Failure::Other(format!("{SECRETS_PATH} is damaged or truncated ({e}); {how}")))?;
    String::from_utf8(plain).map_err(|_| Failure::Other(format!("{SECRETS_PATH} does not hold UTF-8 text")))
}

/// Parses dotenv text: `NAME=value`, `export NAME=value`, `#` comments, '...' and "..." quoting.
/// Errors carry the line number and the name, never the value.
pub fn parse_dotenv(text: &str) -> Result<Secrets, String> {
    let mut out = Secrets::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            return Err(format!("{SECRETS_PATH}: line {line_no} is not NAME=value"));
        };
        let name = name.trim();
        validate::env_name(name).map_err(|e| format!("{SECRETS_PATH}: line {line_no}: {e}"))?;
        let value = unquote(value.trim())
            .ok_or_else(|| format!("{SECRETS_PATH}: line {line_no} ({name}): unterminated quote"))?;
        if out.insert(name.to_string(), SecretValue::new(value)).is_some() {
            return Err(format!("{SECRETS_PATH}: line {line_no}: {name} is set twice"));
        }
    }
    Ok(out)
}

fn unquote(value: &str) -> Option<String> {
    if let Some(rest) = value.strip_prefix('\'') {
        let end = rest.find('\'')?;
        return Some(rest[..end].to_string());
    }
    if let Some(rest) = value.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Some(out),
                '\\' => match chars.next()? {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    other => out.push(other),
                },
                c => out.push(c),
            }
        }
        return None;
    }
    // Unquoted: an inline comment starts at " #".
    let value = match value.find(" #") {
        Some(i) => value[..i].trim_end(),
        None => value,
    };
    Some(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const A: AppKeyId<'static> = AppKeyId { app: "alpha", incarnation: "i_1" };
    const B: AppKeyId<'static> = AppKeyId { app: "beta", incarnation: "i_2" };

    fn keyring() -> (AgeIdentity, age::x25519::Recipient) {
        use age::secrecy::ExposeSecret;
        let id = age::x25519::Identity::generate();
        let text = format!("# comment\n{}\n", id.to_string().expose_secret());
        (AgeIdentity::from_identity_file(&text).unwrap(), id.to_public())
    }

    fn encrypt(to: &age::x25519::Recipient, text: &str, armor: bool) -> Vec<u8> {
        let enc = age::Encryptor::with_recipients(std::iter::once(to as &dyn age::Recipient)).unwrap();
        let mut out = Vec::new();
        let format = if armor { age::armor::Format::AsciiArmor } else { age::armor::Format::Binary };
        let armored = age::armor::ArmoredWriter::wrap_output(&mut out, format).unwrap();
        let mut w = enc.wrap_output(armored).unwrap();
        w.write_all(text.as_bytes()).unwrap();
        w.finish().unwrap().finish().unwrap();
        out
    }

    fn to_app(k: &AgeIdentity, id: AppKeyId<'_>, text: &str) -> Vec<u8> {
        encrypt(&k.app_recipient(id).parse().unwrap(), text, false)
    }

    #[test]
    fn decrypts_binary_and_armored() {
        let (k, _) = keyring();
        let r: age::x25519::Recipient = k.app_recipient(A).parse().unwrap();
        for armor in [false, true] {
            let (s, source) = k
                .open_for(
                    A,
                    &encrypt(&r, "A=1\nexport B='two words'\nC=\"x\\ny\" \n# c\n\nD=v #comment\n", armor),
                    false,
                )
                .unwrap();
            assert_eq!(source, KeySource::App);
            assert_eq!(s["A"].expose(), "1");
            assert_eq!(s["B"].expose(), "two words");
            assert_eq!(s["C"].expose(), "x\ny");
            assert_eq!(s["D"].expose(), "v");
        }
    }

    #[test]
    fn app_recipients_are_stable_and_distinct() {
        let (k, _) = keyring();
        let (other_daemon, _) = keyring();
        assert_eq!(k.app_recipient(A), k.app_recipient(A));
        assert!(k.app_recipient(A).starts_with("age1"));
        assert_ne!(k.app_recipient(A), k.app_recipient(B));
        let reborn = AppKeyId { app: "alpha", incarnation: "i_3" };
        assert_ne!(k.app_recipient(A), k.app_recipient(reborn), "a recreated app gets a new recipient");
        assert_ne!(k.app_recipient(A), other_daemon.app_recipient(A));
    }

    #[test]
    fn a_file_for_another_app_never_opens() {
        let (k, _) = keyring();
        let file = to_app(&k, A, "TOKEN=canary-of-alpha\n");
        for allowed in [false, true] {
            let err = k.open_for(B, &file, allowed).unwrap_err();
            assert!(err.contains("not encrypted to app beta") && err.contains(&k.app_recipient(B)), "{err}");
            assert!(!err.contains("canary"), "{err}");
        }
        let reborn = AppKeyId { app: "alpha", incarnation: "i_3" };
        assert!(k.open_for(reborn, &file, true).unwrap_err().contains("an earlier app of the same name"));
    }

    #[test]
    fn the_daemon_wide_recipient_only_opens_recorded_releases() {
        let (k, daemon_wide) = keyring();
        let file = encrypt(&daemon_wide, "TOKEN=canary-legacy\n", true);
        let err = k.open_for(A, &file, false).unwrap_err();
        assert!(err.contains("daemon-wide recipient") && err.contains(&k.app_recipient(A)), "{err}");
        assert!(!err.contains("canary"), "{err}");
        let (s, source) = k.open_for(A, &file, true).unwrap();
        assert_eq!((s["TOKEN"].expose(), source), ("canary-legacy", KeySource::DaemonWide));
    }

    #[test]
    fn wrong_recipient_names_the_right_one() {
        let (k, _) = keyring();
        let (_, other) = keyring();
        let err = k.open_for(A, &encrypt(&other, "A=1\n", false), false).unwrap_err();
        assert!(err.contains("not encrypted to app alpha") && err.contains(&k.app_recipient(A)), "{err}");
        assert!(k.open_for(A, b"plain text", false).unwrap_err().contains("not an age file"));
    }

    #[test]
    fn truncated_files_say_how_to_recreate_them() {
        let (k, _) = keyring();
        let whole = to_app(&k, A, "A=canary-value\n");
        let err = k.open_for(A, &whole[..whole.len() - 10], false).unwrap_err();
        assert!(err.contains("damaged or truncated") && err.contains(&k.app_recipient(A)), "{err}");
        assert!(!err.contains("canary"), "{err}");
    }

    #[test]
    fn malformed_dotenv_gives_line_not_value() {
        let err = parse_dotenv("A=1\nthis-is-the-canary-value\n").unwrap_err();
        assert!(err.contains("line 2") && !err.contains("canary"), "{err}");
        let err = parse_dotenv("A=\"canary-unterminated\n").unwrap_err();
        assert!(err.contains("line 1") && !err.contains("canary"), "{err}");
        assert!(parse_dotenv("NODE_OPTIONS=--require x\n").unwrap_err().contains("NODE_OPTIONS"));
        assert!(parse_dotenv("A=1\nA=2\n").unwrap_err().contains("set twice"));
    }

    #[test]
    fn values_are_redacted_and_digests_keyed() {
        let (k, _) = keyring();
        let v = SecretValue::new("canary".into());
        assert_eq!(format!("{v:?} {v}"), "<redacted> <redacted>");
        let (k2, _) = keyring();
        assert_ne!(k.digest("A", &v), k2.digest("A", &v));
        assert_eq!(k.digest("A", &v), k.digest("A", &v));
        assert!(!k.digest("A", &v).contains("canary"));
    }
}

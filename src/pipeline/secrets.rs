//! Secrets: `.catwalk/secrets.age` in the pushed repository, decrypted with the daemon's age identity.
//!
//! The file is age-encrypted (binary or ASCII-armored) dotenv text. Values live only in memory, in
//! [`SecretValue`]s whose `Debug`/`Display` print `<redacted>`, and in the server process's environment.
//! Errors name files, lines and variables, never values; the store keeps names and a keyed digest only.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::validate;

/// Path of the secrets file inside a repository.
pub const SECRETS_PATH: &str = ".catwalk/secrets.age";
/// Refuse absurd secrets files before decrypting them.
const MAX_SECRETS_FILE: usize = 1 << 20;

/// A secret value. Deliberately not `Serialize`, and redacted when formatted.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Decrypted secrets by env name.
pub type Secrets = BTreeMap<String, SecretValue>;

/// The daemon's identity, loaded once from `age_identity.txt`.
pub struct Keyring {
    identity: age::x25519::Identity,
    recipient: String,
    digest_key: [u8; 32],
}

impl Keyring {
    /// Parses the identity file written by `catwalk init` (or by `age-keygen`).
    pub fn from_identity_file(text: &str) -> Result<Keyring, String> {
        use age::secrecy::ExposeSecret;
        use sha2::Digest;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .ok_or("the age identity file holds no AGE-SECRET-KEY line")?;
        let identity: age::x25519::Identity =
            line.parse().map_err(|e: &str| format!("the age identity is corrupt: {e}"))?;
        let recipient = identity.to_public().to_string();
        let mut hasher = Sha256::new();
        hasher.update(b"catwalk secret digest v1\0");
        hasher.update(identity.to_string().expose_secret().as_bytes());
        Ok(Keyring { identity, recipient, digest_key: hasher.finalize().into() })
    }

    /// The `age1...` recipient users encrypt to.
    pub fn recipient(&self) -> &str {
        &self.recipient
    }

    /// Decrypts and parses a secrets file.
    pub fn open(&self, bytes: &[u8]) -> Result<Secrets, String> {
        if bytes.len() > MAX_SECRETS_FILE {
            return Err(format!("{SECRETS_PATH} is larger than 1 MiB"));
        }
        let reader = age::armor::ArmoredReader::new(bytes);
        let decryptor = age::Decryptor::new(reader).map_err(|e| {
            format!(
                "{SECRETS_PATH} is not an age file ({e}); create it with: age -r {} -o {SECRETS_PATH} .env",
                self.recipient
            )
        })?;
        if decryptor.is_scrypt() {
            return Err(format!(
                "{SECRETS_PATH} is encrypted with a passphrase; encrypt it to this daemon instead: age -r {} -o {SECRETS_PATH} .env",
                self.recipient
            ));
        }
        let mut plain = Vec::new();
        decryptor
            .decrypt(std::iter::once(&self.identity as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => format!(
                    "{SECRETS_PATH} is not encrypted to this daemon; re-encrypt it with: age -r {} -o {SECRETS_PATH} .env  (ssh ... secrets pubkey prints the recipient)",
                    self.recipient
                ),
                other => format!(
                    "{SECRETS_PATH} cannot be decrypted ({other}); re-create it with: age -r {} -o {SECRETS_PATH} .env",
                    self.recipient
                ),
            })?
            .read_to_end(&mut plain)
            .map_err(|e| {
                format!(
                    "{SECRETS_PATH} is damaged or truncated ({e}); re-create it with: age -r {} -o {SECRETS_PATH} .env",
                    self.recipient
                )
            })?;
        let text =
            String::from_utf8(plain).map_err(|_| format!("{SECRETS_PATH} does not hold UTF-8 text"))?;
        parse_dotenv(&text)
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
        mac.update(value.0.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }
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
        if out.insert(name.to_string(), SecretValue(value)).is_some() {
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

    fn keyring() -> (Keyring, age::x25519::Recipient) {
        use age::secrecy::ExposeSecret;
        let id = age::x25519::Identity::generate();
        let text = format!("# comment\n{}\n", id.to_string().expose_secret());
        (Keyring::from_identity_file(&text).unwrap(), id.to_public())
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

    #[test]
    fn decrypts_binary_and_armored() {
        let (k, r) = keyring();
        for armor in [false, true] {
            let s = k
                .open(&encrypt(&r, "A=1\nexport B='two words'\nC=\"x\\ny\" \n# c\n\nD=v #comment\n", armor))
                .unwrap();
            assert_eq!(s["A"].expose(), "1");
            assert_eq!(s["B"].expose(), "two words");
            assert_eq!(s["C"].expose(), "x\ny");
            assert_eq!(s["D"].expose(), "v");
        }
    }

    #[test]
    fn wrong_recipient_names_the_right_one() {
        let (k, _) = keyring();
        let (_, other) = keyring();
        let err = k.open(&encrypt(&other, "A=1\n", false)).unwrap_err();
        assert!(err.contains("not encrypted to this daemon") && err.contains(k.recipient()), "{err}");
        assert!(k.open(b"plain text").unwrap_err().contains("not an age file"));
    }

    #[test]
    fn truncated_files_say_how_to_recreate_them() {
        let (k, r) = keyring();
        let whole = encrypt(&r, "A=canary-value\n", false);
        let err = k.open(&whole[..whole.len() - 10]).unwrap_err();
        assert!(err.contains("damaged or truncated") && err.contains(k.recipient()), "{err}");
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
        let v = SecretValue("canary".into());
        assert_eq!(format!("{v:?} {v}"), "<redacted> <redacted>");
        let (k2, _) = keyring();
        assert_ne!(k.digest("A", &v), k2.digest("A", &v));
        assert_eq!(k.digest("A", &v), k.digest("A", &v));
        assert!(!k.digest("A", &v).contains("canary"));
    }
}

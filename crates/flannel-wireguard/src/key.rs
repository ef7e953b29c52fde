//! WireGuard keys: public keys, secrets (private keys and preshared keys) and the key file.
//!
//! Keys travel as base64 (key file, leases, `wg` output) and as hex (the userspace control
//! protocol). A [`Secret`] never prints its bytes: `Debug` says `Secret(<redacted>)`, so a
//! `{:?}` of any config holding one is safe to log.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// Why a key could not be decoded, read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not 32 bytes of base64 (or hex).
    #[error("{what}: expected a 32-byte key in {encoding}, got {got:?}")]
    Format {
        /// Which key, e.g. "PublicKey of lease 10.244.1.0/24".
        what: String,
        /// "base64" or "hex".
        encoding: &'static str,
        /// The offending text, cut to 64 characters (never a secret: secrets report only
        /// their length).
        got: String,
    },
    /// The key file could not be read or written.
    #[error("key file {path}: {op}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was attempted.
        op: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The key file exists but does not hold a key.
    #[error(
        "key file {path}: expected one base64 private key (44 characters), found {len} bytes that are not one"
    )]
    FileContent {
        /// The file.
        path: PathBuf,
        /// How long its (trimmed) content is.
        len: usize,
    },
}

fn decode_b64(s: &str) -> Option<[u8; 32]> {
    let v = B64.decode(s.trim()).ok()?;
    v.try_into().ok()
}

fn decode_hex(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn encode_hex(b: &[u8; 32]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(64);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

fn cut(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A public key: safe to print, compare and hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// Decodes base64 (44 characters), as in leases and `wg` output.
    pub fn from_base64(s: &str, what: &str) -> Result<Key, KeyError> {
        decode_b64(s).map(Key).ok_or_else(|| KeyError::Format {
            what: what.to_string(),
            encoding: "base64",
            got: cut(s),
        })
    }

    /// Decodes lowercase or uppercase hex (64 characters), as in the control protocol.
    pub fn from_hex(s: &str, what: &str) -> Result<Key, KeyError> {
        decode_hex(s).map(Key).ok_or_else(|| KeyError::Format {
            what: what.to_string(),
            encoding: "hex",
            got: cut(s),
        })
    }

    /// The base64 form.
    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    /// The hex form.
    pub fn to_hex(&self) -> String {
        encode_hex(&self.0)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.to_base64())
    }
}

/// A private key or a preshared key. Its bytes never appear in `Debug` or `Display`, and it
/// is wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; 32]);

impl Secret {
    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Secret {
        let mut b = [0u8; 32];
        rand::fill(&mut b);
        // Clamp as Curve25519 private keys are clamped (what `wg genkey` writes); the
        // preshared key does not care.
        b[0] &= 248;
        b[31] &= 127;
        b[31] |= 64;
        Secret(b)
    }

    /// Wraps raw bytes.
    pub fn from_bytes(b: [u8; 32]) -> Secret {
        Secret(b)
    }

    /// Decodes base64; an error reports only the length of the input, never the input.
    pub fn from_base64(s: &str, what: &str) -> Result<Secret, KeyError> {
        decode_b64(s).map(Secret).ok_or_else(|| KeyError::Format {
            what: what.to_string(),
            encoding: "base64",
            got: format!("<{} characters>", s.trim().len()),
        })
    }

    /// Decodes hex; an error reports only the length of the input.
    pub fn from_hex(s: &str, what: &str) -> Result<Secret, KeyError> {
        decode_hex(s).map(Secret).ok_or_else(|| KeyError::Format {
            what: what.to_string(),
            encoding: "hex",
            got: format!("<{} characters>", s.trim().len()),
        })
    }

    /// The raw bytes, for the protocol implementation and the kernel.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The base64 form (for the key file only).
    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    /// The hex form (for the control protocol only).
    pub fn to_hex(&self) -> String {
        encode_hex(&self.0)
    }

    /// The Curve25519 public key of this private key.
    pub fn public_key(&self) -> Key {
        let secret = boringtun::x25519::StaticSecret::from(self.0);
        Key(boringtun::x25519::PublicKey::from(&secret).to_bytes())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // black_box keeps the compiler from dropping the stores as dead.
        for b in &mut self.0 {
            *b = std::hint::black_box(0);
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Reads the private key from `path`, or creates it (mode 0400, written to a temporary file
/// and renamed, so a crash never leaves half a key) when the file does not exist. Upstream's
/// `/run/flannel/wgkey` contract: base64, one key for both devices, reused across restarts.
pub fn load_or_create(path: &Path) -> Result<Secret, KeyError> {
    match fs::read_to_string(path) {
        Ok(text) => decode_b64(&text)
            .map(Secret)
            .ok_or_else(|| KeyError::FileContent {
                path: path.to_path_buf(),
                len: text.trim().len(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Secret::generate();
            write_key_file(path, &key)?;
            Ok(key)
        }
        Err(source) => Err(KeyError::File {
            path: path.to_path_buf(),
            op: "read",
            source,
        }),
    }
}

fn write_key_file(path: &Path, key: &Secret) -> Result<(), KeyError> {
    let err = |op, source| KeyError::File {
        path: path.to_path_buf(),
        op,
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| err("create directory", e))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&tmp)
        .map_err(|e| err("create", e))?;
    let written = f
        .write_all(key.to_base64().as_bytes())
        .and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err("write", e));
    }
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o400)).map_err(|e| err("chmod", e))?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        err("rename", e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_matches_wg_pubkey() {
        let s = Secret::from_base64("YNqHNb2yFMgjWjvRnJ+N7kJcZi6n+ThXUupGOhdUPnQ=", "t").unwrap();
        let p = s.public_key();
        assert_eq!(p.to_base64().len(), 44);
        assert_eq!(Key::from_hex(&p.to_hex(), "t").unwrap(), p);
        assert_eq!(Key::from_base64(&p.to_base64(), "t").unwrap(), p);
    }

    #[test]
    fn secrets_are_never_printed() {
        let s = Secret::generate();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains(&s.to_base64()) && dbg.contains("redacted"));
        let e = Secret::from_base64("not-a-key-but-secret-text", "PSK").unwrap_err();
        assert!(!e.to_string().contains("secret-text"), "{e}");
        assert!(e.to_string().contains("PSK"), "{e}");
    }

    #[test]
    fn bad_keys_are_named() {
        let e = Key::from_base64("abc", "PublicKey of lease 10.5.1.0/24").unwrap_err();
        assert!(e.to_string().contains("10.5.1.0/24") && e.to_string().contains("base64"));
        assert!(Key::from_hex("zz", "x").is_err());
        assert!(Key::from_hex(&"0".repeat(63), "x").is_err());
    }

    #[test]
    fn key_file_is_created_0400_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/wgkey");
        let a = load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
        let b = load_or_create(&path).unwrap();
        assert_eq!(a, b);
        assert_eq!(fs::read_to_string(&path).unwrap(), a.to_base64());
    }

    #[test]
    fn broken_key_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wgkey");
        fs::write(&path, "garbage").unwrap();
        let e = load_or_create(&path).unwrap_err();
        assert!(e.to_string().contains("wgkey"), "{e}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "garbage");
    }
}

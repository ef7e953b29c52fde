//! Bearer tokens read from a file that is replaced while we run.
//!
//! In a pod, the ServiceAccount token at
//! `/var/run/secrets/kubernetes.io/serviceaccount/token` is a projected volume: the kubelet
//! writes a new token before the old one expires and swaps it in atomically (a symlink swap,
//! so the path names a new inode). client-go and kube-rs re-read such a file at most once a
//! minute, so when the old token is revoked as soon as its successor is written (a deleted
//! Secret, a rotated signing key, an operator revoking it) every request fails with 401 for up
//! to a minute, and the node watch with them.
//!
//! [`TokenFile`] looks at the file before every request instead: one `stat` (flanneld makes a
//! few requests a minute), and a re-read only when the file is another one than last time.
//! The new token is used from the first request after the swap. A file that cannot be read
//! later keeps the last token, as kube-rs and client-go do (kubernetes#68164: some setups
//! remove the file after start).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use http::HeaderValue;
use tracing::{info, warn};

/// Which file the cached token came from: a replaced file has another inode or another
/// modification time, an edited one another size or time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

/// Why a token file cannot be used at start.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("reading the token file {}: {source}", .path.display())]
    Read {
        /// The token file.
        path: PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no token, or one that cannot go into an HTTP header.
    #[error("the token file {} {what}", .path.display())]
    Invalid {
        /// The token file.
        path: PathBuf,
        /// What is wrong with it.
        what: &'static str,
    },
}

/// The token of one file, re-read whenever the file is replaced.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    current: Mutex<(Stamp, HeaderValue)>,
}

impl TokenFile {
    /// Reads the token now: a missing, unreadable or empty file at start is a configuration
    /// error the operator has to see.
    pub fn open(path: impl Into<PathBuf>) -> Result<TokenFile, TokenFileError> {
        let path = path.into();
        let (stamp, header) = read(&path)?;
        Ok(TokenFile {
            path,
            current: Mutex::new((stamp, header)),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `Authorization` header for the next request: the file's token, re-read if the file
    /// changed since the last call; the last good token if it cannot be read now.
    pub fn header(&self) -> HeaderValue {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match std::fs::metadata(&self.path) {
            Ok(meta) if Stamp::of(&meta) != current.0 => match read(&self.path) {
                Ok(next) => {
                    if next.1 != current.1 {
                        info!("using the new token in {}", self.path.display());
                    }
                    *current = next;
                }
                Err(e) => warn!("{e}; keeping the last token"),
            },
            Ok(_) => {}
            Err(e) => warn!(
                "reading the token file {}: {e}; keeping the last token",
                self.path.display()
            ),
        }
        current.1.clone()
    }
}

/// Reads the file's stamp and its token as a `Bearer` header value (marked sensitive, so it is
/// never logged).
fn read(path: &Path) -> Result<(Stamp, HeaderValue), TokenFileError> {
    let io = |source| TokenFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let stamp = Stamp::of(&file.metadata().map_err(io)?);
    let text = std::io::read_to_string(file).map_err(io)?;
    let token = text.trim();
    let invalid = |what| TokenFileError::Invalid {
        path: path.to_path_buf(),
        what,
    };
    if token.is_empty() {
        return Err(invalid("is empty"));
    }
    let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| invalid("holds characters a bearer token cannot have"))?;
    header.set_sensitive(true);
    Ok((stamp, header))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replace(path: &Path, text: &str) {
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn a_replaced_file_is_used_from_the_next_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let t = TokenFile::open(&path).unwrap();
        assert_eq!(t.header(), "Bearer first");
        assert!(t.header().is_sensitive());
        // Same size, same second: still another inode.
        replace(&path, "secnd\n");
        assert_eq!(t.header(), "Bearer secnd");
        // Removed: the last token stays.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(t.header(), "Bearer secnd");
        // Back, but empty: the last token stays too.
        std::fs::write(&path, "").unwrap();
        assert_eq!(t.header(), "Bearer secnd");
        replace(&path, "third");
        assert_eq!(t.header(), "Bearer third");
    }

    #[test]
    fn a_bad_file_at_start_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let e = TokenFile::open(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("reading the token file {}: ", path.display())),
            "{e}"
        );
        std::fs::write(&path, " \n").unwrap();
        let e = TokenFile::open(&path).unwrap_err().to_string();
        assert_eq!(e, format!("the token file {} is empty", path.display()));
        std::fs::write(&path, "a\u{7}b").unwrap();
        let e = TokenFile::open(&path).unwrap_err().to_string();
        assert!(
            e.ends_with("holds characters a bearer token cannot have"),
            "{e}"
        );
    }
}

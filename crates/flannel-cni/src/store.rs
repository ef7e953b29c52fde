//! Saved delegate configs: `<dataDir>/<containerID>`, one file per container, holding the exact
//! bytes sent to the delegate on ADD so DEL can replay them after subnet.env or the netconf
//! changed (upstream's "scratch netconf").
//!
//! Writes are atomic (a uniquely named temp file in the same directory, then `rename`) so a
//! killed plugin or a concurrent ADD never leaves a torn file that DEL would fail to parse;
//! upstream writes in place. They are not fsynced, like upstream's `os.WriteFile` and like the
//! host-local reservations the file goes with: an fsync of file and directory costs 2 to 70 ms
//! per pod on a busy disk (measured), more than the whole plugin, and buys nothing when the
//! delegate's own state is not synced either. Container IDs are validated by the skel before
//! they get here, so a name is always a single safe path component.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Coded, IO_FAILURE};
use crate::request::valid_name;

/// Mode of a saved delegate config: it may hold secrets from `runtimeConfig`.
pub const FILE_MODE: u32 = 0o600;
/// Mode of a created `dataDir`.
pub const DIR_MODE: u32 = 0o700;
/// Temp files of interrupted writes older than this are removed by GC.
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(600);

/// A saved delegate config could not be written, read, removed or listed (code 5).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Writing the file failed at step `op` (`mkdir`, `create`, `write`, `rename`) on `path`.
    #[error("failed to save the delegate config for {container_id}: {op} {}: {source}", .path.display())]
    Save {
        /// The container whose config was being saved.
        container_id: String,
        /// The step that failed.
        op: &'static str,
        /// The file or directory of that step.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The saved file exists but cannot be read.
    #[error("failed to read saved delegate config {}: {source}", .path.display())]
    Read {
        /// The saved file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The saved file cannot be removed.
    #[error("failed to remove saved delegate config {}: {source}", .path.display())]
    Remove {
        /// The saved file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The directory cannot be listed (GC).
    #[error("failed to list {}: {source}", .dir.display())]
    List {
        /// The `dataDir`.
        dir: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl Coded for StoreError {
    fn code(&self) -> u32 {
        IO_FAILURE
    }
}

/// The saved-config directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store in `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Store {
            dir: data_dir.to_path_buf(),
        }
    }

    /// The file of `container_id`.
    pub fn path(&self, container_id: &str) -> PathBuf {
        self.dir.join(container_id)
    }

    /// Saves `json` for `container_id` atomically with mode 0600 (directory 0700).
    pub fn save(&self, container_id: &str, json: &[u8]) -> Result<(), StoreError> {
        write_atomic(&self.dir, container_id, json).map_err(|(op, path, source)| StoreError::Save {
            container_id: container_id.to_string(),
            op,
            path,
            source,
        })
    }

    /// The saved bytes, or `None` if there are none.
    pub fn load(&self, container_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(container_id);
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Read { path, source }),
        }
    }

    /// Removes the saved config; a missing file is fine.
    pub fn remove(&self, container_id: &str) -> Result<(), StoreError> {
        let path = self.path(container_id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Remove { path, source }),
        }
    }

    /// Container IDs with a saved config, and leftover temp files of interrupted writes older
    /// than [`STALE_TEMP_AGE`]. A missing directory has neither.
    pub fn scan(&self) -> Result<(Vec<String>, Vec<PathBuf>), StoreError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((vec![], vec![])),
            Err(source) => {
                return Err(StoreError::List {
                    dir: self.dir.clone(),
                    source,
                });
            }
        };
        let now = SystemTime::now();
        let mut ids = Vec::new();
        let mut stale = Vec::new();
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                if name.ends_with(".tmp")
                    && meta
                        .modified()
                        .ok()
                        .and_then(|m| now.duration_since(m).ok())
                        .is_some_and(|age| age > STALE_TEMP_AGE)
                {
                    stale.push(entry.path());
                }
            } else if valid_name(&name) {
                ids.push(name);
            }
        }
        ids.sort();
        Ok((ids, stale))
    }
}

/// Writes `dir/name` via a temp file `dir/.name.<pid>-<time>-<n>.tmp` created exclusively, so
/// concurrent writers never share a temp file; the temp file is removed on failure.
fn write_atomic(
    dir: &Path,
    name: &str,
    data: &[u8],
) -> Result<(), (&'static str, PathBuf, io::Error)> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(
        ".{name}.{}-{nanos}-{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let create = || {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)
    };
    // The directory normally exists: try first and create it only when that fails (one stat
    // fewer per ADD than checking first, same errors).
    let file = match create() {
        Err(_) if !dir.is_dir() => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(|e| ("mkdir", dir.to_path_buf(), e))?;
            create()
        }
        r => r,
    };
    let result = file
        .map_err(|e| ("create", tmp.clone(), e))
        .and_then(|mut f| f.write_all(data).map_err(|e| ("write", tmp.clone(), e)))
        .and_then(|()| {
            let target = dir.join(name);
            fs::rename(&tmp, &target).map_err(|e| ("rename", target, e))
        });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{CniError, assert_error};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn save_load_remove_round_trip_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cni/flannel");
        let store = Store::new(&dir);
        assert_eq!(store.load("c1").unwrap(), None);
        store.save("c1", b"{\"a\":1}").unwrap();
        assert_eq!(store.load("c1").unwrap().unwrap(), b"{\"a\":1}");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join("c1")), 0o600);
        assert_eq!(mode(&dir), 0o700);
        store.save("c1", b"{}").unwrap();
        assert_eq!(store.load("c1").unwrap().unwrap(), b"{}");
        let (ids, stale) = store.scan().unwrap();
        assert_eq!(ids, vec!["c1".to_string()]);
        assert!(stale.is_empty());
        store.remove("c1").unwrap();
        store.remove("c1").unwrap();
        assert_eq!(store.load("c1").unwrap(), None);
    }

    #[test]
    fn scan_skips_foreign_entries_and_reports_old_temp_files() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        fs::write(tmp.path().join("abc"), "{}").unwrap();
        fs::create_dir(tmp.path().join("subdir")).unwrap();
        fs::write(tmp.path().join(".abcXYZ.tmp"), "{").unwrap();
        let old = tmp.path().join(".defXYZ.tmp");
        fs::write(&old, "{").unwrap();
        let f = fs::File::options().write(true).open(&old).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        let (ids, stale) = store.scan().unwrap();
        assert_eq!(ids, vec!["abc".to_string()]);
        assert_eq!(stale, vec![old]);
        assert_eq!(
            Store::new(&tmp.path().join("missing"))
                .scan()
                .unwrap()
                .0
                .len(),
            0
        );
    }

    #[test]
    fn failed_save_names_the_path_and_leaves_no_temp_file() {
        let tmp = tempfile::tempdir().unwrap();
        // The target is a non-empty directory: the rename must fail.
        fs::create_dir_all(tmp.path().join("c1/x")).unwrap();
        let e = CniError::from(Store::new(tmp.path()).save("c1", b"{}").unwrap_err());
        assert_error(
            &e,
            IO_FAILURE,
            "failed to save the delegate config for c1: rename ",
        );
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("c1")]);
    }
}

//! `install-conf SRC DEST`: installs a file atomically, for the DaemonSet's `install-cni` init
//! container (upstream's `/opt/bin/install-conf`, `cmd/install_conf`).
//!
//! A container runtime may read `/etc/cni/net.d` at any moment; a plain `cp` can leave it a
//! half-written conflist. So the content goes to a temporary file `.<name>.tmp<random>` in the
//! destination directory, is flushed to disk, gets the source file's permissions, and is then
//! renamed over the destination, which is atomic within one filesystem. The directory is synced
//! so the rename survives a crash. On failure the temporary file is removed.
//!
//! Kept to the standard library so the binary stays small and starts instantly.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

/// Creates `.<name>.tmp<suffix>` exclusively in `dir`, retrying on a name clash.
fn create_temp(dir: &Path, name: &str) -> io::Result<(File, PathBuf)> {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        ^ (u128::from(std::process::id()) << 64);
    for attempt in 0u128..100 {
        let path = dir.join(format!(
            ".{name}.tmp{:x}",
            (seed + attempt) & 0xffff_ffff_ffff
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "could not create a unique temporary file",
    ))
}

/// Copies `src` to `dest` atomically (see the module docs).
fn install(src: &Path, dest: &Path) -> io::Result<()> {
    let content = fs::read(src)?;
    let perms = fs::metadata(src)?.permissions();
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dest
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "destination has no file name"))?
        .to_string_lossy()
        .into_owned();
    let (mut file, tmp) = create_temp(&dir, &name)?;
    let result = (|| {
        file.write_all(&content)?;
        file.sync_all()?;
        fs::set_permissions(&tmp, perms)?;
        drop(file);
        fs::rename(&tmp, dest)?;
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!(
            "usage: {} <src> <dest>",
            args.first().map(String::as_str).unwrap_or("install-conf")
        );
        return ExitCode::FAILURE;
    }
    match install(Path::new(&args[1]), Path::new(&args[2])) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error installing {:?}: {e}", args[1]);
            ExitCode::FAILURE
        }
    }
}

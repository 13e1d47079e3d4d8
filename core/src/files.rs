//! Writing files so that a reader never sees half of one.

use std::path::Path;

use anyhow::{Context, Result};

/// Write to a temporary file beside `path`, then rename: no half-written file is ever left behind,
/// on any error path. Only regular files are written: an existing directory, device or other
/// special file is refused; a symbolic link to a regular file is followed (the link stays).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let path = &regular_target(path)?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, bytes).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    // A failed rename hands the temporary back inside the error: drop it here, so that it is
    // deleted even when the process exits right after reporting.
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `path`, or the file a symbolic link at `path` points to, if that is (or will be) a regular file.
fn regular_target(path: &Path) -> Result<std::path::PathBuf> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(if path.is_symlink() { std::fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))? } else { path.to_path_buf() }),
        Ok(m) => {
            let what = if m.is_dir() { "a directory" } else { "not a regular file (a device, pipe or socket)" };
            anyhow::bail!("refusing to write {}: it is {what}; give a file name", path.display())
        }
        Err(_) if path.is_symlink() => anyhow::bail!("refusing to write {}: it is a symbolic link to nothing", path.display()),
        Err(_) => Ok(path.to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn directories_and_devices_are_refused_and_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let e = write_atomically(&dir.path().join("sub"), b"x").unwrap_err();
        assert!(e.to_string().contains("it is a directory"), "{e}");
        #[cfg(unix)]
        {
            let e = write_atomically(Path::new("/dev/null"), b"x").unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{e}");
            std::os::unix::fs::symlink("/dev/null", dir.path().join("link")).unwrap();
            let e = write_atomically(&dir.path().join("link"), b"x").unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
        assert_eq!(entries(dir.path()), if cfg!(unix) { vec!["link", "sub"] } else { vec!["sub"] });
        assert!(entries(&dir.path().join("sub")).is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn a_link_to_a_file_is_followed_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("real"), b"old").unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        write_atomically(&dir.path().join("link"), b"new").unwrap();
        assert!(dir.path().join("link").is_symlink());
        assert_eq!(std::fs::read(dir.path().join("real")).unwrap(), b"new");
        assert_eq!(entries(dir.path()), ["link", "real"]);
    }
}

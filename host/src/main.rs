use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use lepton::data::{self, Part};
use lepton::eval;

/// Lepton: train, quantize, export and judge int8 CNNs for Cortex-M.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make the MNIST IDX files available (fetch and verify if needed) and print where they are.
    Data {
        /// A directory holding the IDX files (raw or .gz), or where to fetch them.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Convert a TFLite full-integer (int8) model into a Lepton model (.lpk).
    Import {
        /// The .tflite file.
        model: PathBuf,
        /// Where to write the Lepton model.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run a Lepton model over the test set on the host and report its accuracy.
    Eval {
        #[arg(long)]
        model: PathBuf,
        /// Data directory (default: the cache used by `lepton data`).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// Write every image's int8 logits as a JSON array of arrays, in test-set order.
        #[arg(long)]
        logits: Option<PathBuf>,
        /// Only the first N test images.
        #[arg(long)]
        images: Option<usize>,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Data { dir } => {
            let dir = data::ensure(dir.as_deref())?;
            println!("{}", dir.display());
            Ok(())
        }
        Command::Import { model, out } => import(&model, &out),
        Command::Eval { model, data, json, logits, images } => {
            evaluate(&model, data.as_deref(), json, logits.as_deref(), images)
        }
    }
}

fn import(model: &Path, out: &Path) -> Result<()> {
    let bytes = fs::read(model).with_context(|| format!("reading {}", model.display()))?;
    let qmodel = match model.extension().and_then(|e| e.to_str()) {
        Some("tflite") => lepton::import_tflite::import_tflite(&bytes),
        _ => bail!("{}: unknown model type (expected a .tflite file)", model.display()),
    }
    .with_context(|| format!("importing {}", model.display()))?;
    let blob = qmodel.to_lpk()?;
    write_atomically(out, &blob)?;
    eprintln!("wrote {} ({} layers, {} bytes)", out.display(), qmodel.layers.len(), blob.len());
    Ok(())
}

fn evaluate(model: &Path, data_dir: Option<&Path>, json: bool, logits_out: Option<&Path>, images: Option<usize>) -> Result<()> {
    let blob = fs::read(model).with_context(|| format!("reading {}", model.display()))?;
    eval::parse_model(&blob, &model.display().to_string())?;
    let mut test = data::load_part(data_dir, Part::Test)?;
    if let Some(n) = images {
        test = test.truncated(n);
    }
    let run = eval::run_int8(&blob, &test)?;
    let accuracy = run.accuracy(&test.labels);
    if let Some(path) = logits_out {
        write_atomically(path, serde_json::to_string(&run.logits)?.as_bytes())?;
    }
    if json {
        let report = serde_json::json!({
            "model": model.display().to_string(),
            "images": test.len(),
            "int8_accuracy": accuracy,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("model          {}", model.display());
        println!("images         {}", test.len());
        println!("int8 accuracy  {:.4}", accuracy);
    }
    Ok(())
}

/// Write to a temporary file beside `path`, then rename: no half-written file is ever left behind.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

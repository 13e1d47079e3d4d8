//! `cargo xtask bench-train`: seconds per epoch of `lepton train` and, side by side in the same
//! run, of the seed's own Keras script when TensorFlow is installed. A benchmark, not a test.

use std::process::Command;

use anyhow::{Context, Result};

use crate::root;

pub fn bench_train(epochs: usize) -> Result<()> {
    let data = lepton_core::data::ensure(None)?;
    let out = tempfile_dir()?;
    let epochs_arg = epochs.to_string();
    crate::cli::lepton(&["train", "--epochs", &epochs_arg, "--out", out.to_str().context("non-UTF-8 path")?])?;
    let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json"))?)?;
    let burn: Vec<(f64, f64)> = metrics["epochs"]
        .as_array()
        .context("metrics.json without epochs")?
        .iter()
        .map(|e| (e["seconds"].as_f64().unwrap_or(f64::NAN), e["test_accuracy"].as_f64().unwrap_or(f64::NAN)))
        .collect();

    let keras = Command::new("python3").args(["-c", "import tensorflow"]).output();
    let keras: Option<Vec<(f64, f64)>> = match keras {
        Ok(o) if o.status.success() => {
            eprintln!("xtask: timing the seed's Keras script ({epochs} epochs) ...");
            let out = Command::new("python3").arg(root().join("xtask/keras/seed_cnn.py")).arg(&data).arg(&epochs_arg).output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            Some(
                text.lines()
                    .filter_map(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        Some((f.get(3)?.parse().ok()?, f.get(5)?.parse().ok()?))
                    })
                    .collect(),
            )
        }
        _ => {
            eprintln!("xtask: TensorFlow is not installed: skipping the Keras half (pip install tensorflow-cpu to compare)");
            None
        }
    };
    println!("{:>5}  {:>16} {:>10}  {:>16} {:>10}", "epoch", "lepton s/epoch", "accuracy", "keras s/epoch", "accuracy");
    for (i, (s, a)) in burn.iter().enumerate() {
        let k = keras.as_ref().and_then(|k| k.get(i));
        println!(
            "{:>5}  {:>16.1} {:>10.4}  {:>16} {:>10}",
            i + 1,
            s,
            a,
            k.map_or("-".into(), |k| format!("{:.1}", k.0)),
            k.map_or("-".into(), |k| format!("{:.4}", k.1))
        );
    }
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = root().join("target/bench-train");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

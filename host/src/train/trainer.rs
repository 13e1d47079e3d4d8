//! `lepton train`: the seed recipe (Adam lr 1e-3, batch 64, 5 epochs, inputs in [0, 1]) with a
//! progress bar, a checkpoint after every epoch, `--resume`, per-epoch metrics (JSON) and a plot.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::arch::Arch;
use super::batch::{batch, shifted_batch};
use super::model::Cnn;
use super::seq::SeqNet;
use super::Net;
use crate::data::Split;

pub const MODEL_FILE: &str = "model.bpk";
pub const METRICS_FILE: &str = "metrics.json";
const CHECKPOINTS: &str = "checkpoints";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub seed: u64,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Training images used (all of them unless limited, e.g. for a quick CI run).
    pub train_images: usize,
    /// The learning-rate schedule over all steps (the seed recipe: constant).
    #[serde(default)]
    pub schedule: Schedule,
    /// Random shifts of every training image by up to this many pixels each way, new each
    /// epoch (the seed recipe: 0, none).
    #[serde(default)]
    pub shift: usize,
    /// Quantization-aware training with weights of this many bits (8 or 4), or none.
    #[serde(default)]
    pub qat: Option<u32>,
}

/// How the learning rate moves over training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// The seed recipe's fixed rate.
    #[default]
    Constant,
    /// Cosine decay from the rate to 0 over all steps of all epochs.
    Cosine,
}

impl TrainConfig {
    /// The learning rate of step `step` (0-based) of `steps` in all.
    pub fn rate(&self, step: usize, steps: usize) -> f64 {
        match self.schedule {
            Schedule::Constant => self.learning_rate,
            Schedule::Cosine => self.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / steps.max(1) as f64).cos()),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub test_loss: f64,
    pub test_accuracy: f64,
    pub seconds: f64,
}

/// What a checkpoint and `metrics.json` hold.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    pub config: TrainConfig,
    pub backend: String,
    pub epochs: Vec<EpochMetrics>,
}

fn epoch_dir(out: &Path, epoch: usize) -> PathBuf {
    out.join(CHECKPOINTS).join(format!("epoch-{epoch:03}"))
}

/// The files of a checkpoint whose SHA-256 `checksums.json` records (written before
/// `state.json`, which marks the checkpoint complete).
const CHECKSUMMED: [&str; 2] = [MODEL_FILE, "optimizer.bpk"];

/// The newest intact checkpoint, if any. A damaged one (a file that does not match its checksum,
/// a missing file, an unreadable state) is reported and skipped for the one before it.
fn last_checkpoint(out: &Path) -> Result<Option<(PathBuf, TrainState)>> {
    let Ok(entries) = fs::read_dir(out.join(CHECKPOINTS)) else { return Ok(None) };
    let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.join("state.json").is_file()).collect();
    dirs.sort();
    let mut damaged = Vec::new();
    while let Some(dir) = dirs.pop() {
        match check_checkpoint(&dir) {
            Ok(state) => return Ok(Some((dir, state))),
            Err(e) => {
                eprintln!("warning: checkpoint {} is damaged ({e:#}); trying the one before it", dir.display());
                damaged.push(dir.display().to_string());
            }
        }
    }
    if damaged.is_empty() {
        return Ok(None);
    }
    bail!("no intact checkpoint in {}: {} damaged; delete that directory to train from scratch", out.join(CHECKPOINTS).display(), damaged.join(", "))
}

/// The state of the checkpoint in `dir`, after checking every file against `checksums.json`.
fn check_checkpoint(dir: &Path) -> Result<TrainState> {
    let sums: std::collections::BTreeMap<String, String> = serde_json::from_slice(&fs::read(dir.join("checksums.json")).context("no checksums.json")?).context("checksums.json is corrupt")?;
    for name in CHECKSUMMED {
        let bytes = fs::read(dir.join(name)).with_context(|| format!("{name} is missing"))?;
        let expected = sums.get(name).with_context(|| format!("checksums.json lists no {name}"))?;
        if lepton_core::data::sha256_hex(&bytes) != *expected {
            bail!("{} does not match its checksum", dir.join(name).display());
        }
    }
    let text = fs::read_to_string(dir.join("state.json"))?;
    serde_json::from_str(&text).context("state.json is corrupt")
}

/// Train (or resume) the network `arch` describes into `out` (`arch.json` goes beside the
/// model). Returns the final state.
pub fn train(train: &Split, test: &Split, config: TrainConfig, arch: &Arch, out: &Path, resume: bool, device: &Device) -> Result<TrainState> {
    if train.is_empty() {
        bail!("the training set is empty");
    }
    let input = (train.rows, train.cols, 1);
    let arch = Arch { input: Some([input.0, input.1, input.2]), ..arch.clone() };
    // Check the architecture against the data before touching `out`.
    arch.resolve(input, crate::data::CLASSES).with_context(|| format!("architecture {:?} on {}x{} images", arch.name, train.rows, train.cols))?;
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let saved = out.join(super::arch::ARCH_FILE);
    if resume && saved.is_file() {
        let before = Arch::load(&saved)?;
        if before.layers != arch.layers || before.input != arch.input {
            bail!("the checkpoints in {} were made with the architecture in {}; resume with that one (--arch {})", out.display(), saved.display(), saved.display());
        }
    }
    let device = device.clone().autodiff();
    device.seed(config.seed);
    if let Some(bits) = config.qat {
        // Resume with the ranges tracked so far.
        let ranges = if resume { Arch::load(&saved).ok().and_then(|a| a.qat).map(|q| q.ranges) } else { None };
        let model = SeqNet::new(&arch, input, crate::data::CLASSES, &device)?.with_qat(bits, ranges);
        eprintln!("quantization-aware training: {bits}-bit weights, int8 activations");
        train_net(train, test, config, (model, &arch), out, resume, &device)
    } else if arch.is_seed() {
        train_net(train, test, config, (Cnn::new(&device), &arch), out, resume, &device)
    } else {
        let model = SeqNet::new(&arch, input, crate::data::CLASSES, &device)?;
        eprintln!("architecture {:?}: {} layers, {} parameters", arch.name, arch.layers.len(), arch.params(input, crate::data::CLASSES)?);
        train_net(train, test, config, (model, &arch), out, resume, &device)
    }
}

/// `lepton finetune --qat`: the float model in `float_dir` trained on with quantization-aware
/// training of `bits`-bit weights into `out` (`config.epochs` epochs).
pub fn finetune(train: &Split, test: &Split, config: TrainConfig, float_dir: &Path, out: &Path, device: &Device) -> Result<TrainState> {
    let bits = config.qat.context("fine-tuning needs --qat")?;
    let device = device.clone().autodiff();
    device.seed(config.seed);
    let (arch, net) = match super::infer::load(float_dir, &device)? {
        super::FloatModel::Seed(cnn) => (Arch::seed(), SeqNet::from_seed(&cnn, &device)?),
        super::FloatModel::Seq(net) => (Arch::of_model(float_dir)?, net),
    };
    ensure!(arch.qat.is_none(), "{} already holds a quantization-aware model", float_dir.display());
    let input = (train.rows, train.cols, 1);
    ensure!(arch.input_shape().is_none_or(|i| i == input), "{} was trained on {:?} inputs; the data set has {input:?}", float_dir.display(), arch.input_shape());
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    eprintln!("fine-tuning {} with quantization-aware training: {bits}-bit weights, int8 activations, {} epochs", float_dir.display(), config.epochs);
    train_net(train, test, config, (net.with_qat(bits, None), &arch), out, false, &device)
}

fn train_net<N: Net>(train: &Split, test: &Split, config: TrainConfig, (model, arch): (N, &Arch), out: &Path, resume: bool, device: &Device) -> Result<TrainState> {
    let mut arch = arch.clone();
    let mut model = model;
    let mut optim: ModuleOptimizer = AdamConfig::new().with_epsilon(1e-7).init();
    let mut state = TrainState { config: config.clone(), backend: format!("{device:?}"), epochs: Vec::new() };

    match (resume, last_checkpoint(out)?) {
        (true, Some((dir, saved))) => {
            if (TrainConfig { epochs: config.epochs, ..saved.config.clone() }) != config {
                bail!(
                    "checkpoint in {} was made with {:?}; resuming needs the same settings but --epochs (got {:?})",
                    dir.display(), saved.config, config
                );
            }
            model = model.try_load_file(dir.join(MODEL_FILE)).map_err(|e| anyhow::anyhow!("{e:?}")).with_context(|| format!("loading {}", dir.display()))?;
            optim = optim.load(dir.join("optimizer.bpk")).map_err(|e| anyhow::anyhow!("{e:?}")).with_context(|| format!("loading optimizer state from {}", dir.display()))?;
            eprintln!("resuming after epoch {} from {}", saved.epochs.len(), dir.display());
            state = TrainState { config: config.clone(), ..saved };
        }
        (true, None) => eprintln!("no checkpoint in {}: starting from scratch", out.display()),
        (false, Some(_)) => bail!(
            "{} already holds training checkpoints: pass --resume to continue them, or choose another --out",
            out.join(CHECKPOINTS).display()
        ),
        (false, None) => {}
    }
    arch.save(out)?;

    let loss_fn = CrossEntropyLossConfig::new().init(device);
    for epoch in state.epochs.len() + 1..=config.epochs {
        let started = Instant::now();
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(config.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        let bar = crate::progress::bar(order.len() as u64, &format!("epoch {epoch}/{}", config.epochs));
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        let plain_every = (order.len() / config.batch_size / 10).max(1);
        let steps_per_epoch = order.len().div_ceil(config.batch_size);
        let mut shifts = rand_chacha::ChaCha8Rng::seed_from_u64(config.seed ^ 0x5348_4946_54 ^ epoch as u64);
        model.track_ranges(true);
        for (step, chunk) in order.chunks(config.batch_size).enumerate() {
            let (x, y) = if config.shift > 0 { shifted_batch(train, chunk, config.shift, &mut shifts, device) } else { batch(train, chunk, device) };
            let logits = model.logits(x);
            let loss = loss_fn.forward(logits.clone(), y.clone());
            let hits: i64 = logits.argmax(1).squeeze_dim::<1>(1).equal(y).int().sum().into_scalar();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let rate = config.rate((epoch - 1) * steps_per_epoch + step, config.epochs * steps_per_epoch);
            model = optim.step(rate, model, grads);
            loss_sum += loss.into_scalar::<f32>() as f64 * chunk.len() as f64;
            correct += hits as usize;
            seen += chunk.len();
            bar.inc(chunk.len() as u64);
            bar.set_message(format!("epoch {epoch}/{} loss {:.4} acc {:.4}", config.epochs, loss_sum / seen as f64, correct as f64 / seen as f64));
            if bar.is_hidden() && step % plain_every == 0 {
                eprintln!("epoch {epoch}/{}: {seen}/{} images, loss {:.4}, accuracy {:.4}", config.epochs, order.len(), loss_sum / seen as f64, correct as f64 / seen as f64);
            }
        }
        bar.finish_and_clear();
        let train_seconds = started.elapsed().as_secs_f64();
        let (test_loss, test_accuracy) = evaluate(&model, test, device);
        if let Some(qat) = model.qat() {
            arch.qat = Some(qat);
            arch.save(out)?;
        }
        let metrics = EpochMetrics {
            epoch,
            train_loss: loss_sum / seen as f64,
            train_accuracy: correct as f64 / seen as f64,
            test_loss,
            test_accuracy,
            seconds: train_seconds,
        };
        eprintln!(
            "epoch {epoch}/{}: loss {:.4}, accuracy {:.4}, test accuracy {:.4} ({:.1} s)",
            config.epochs, metrics.train_loss, metrics.train_accuracy, metrics.test_accuracy, train_seconds
        );
        state.epochs.push(metrics);
        save_checkpoint(out, epoch, &model, &optim, &state)?;
        write_outputs(out, &model, &state)?;
    }
    Ok(state)
}

/// Mean cross-entropy and accuracy on `split` (no gradients kept).
fn evaluate<N: Net>(model: &N, split: &Split, device: &Device) -> (f64, f64) {
    model.track_ranges(false);
    if split.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let indices: Vec<usize> = (0..split.len()).collect();
    let (mut loss_sum, mut correct) = (0.0f64, 0i64);
    for chunk in indices.chunks(500) {
        let (x, y) = batch(split, chunk, device);
        let logits = model.logits(x).detach();
        let loss: f32 = loss_fn.forward(logits.clone(), y.clone()).into_scalar();
        loss_sum += loss as f64 * chunk.len() as f64;
        correct += logits.argmax(1).squeeze_dim::<1>(1).equal(y).int().sum().into_scalar::<i64>();
    }
    (loss_sum / split.len() as f64, correct as f64 / split.len() as f64)
}

fn save_checkpoint<N: Net>(out: &Path, epoch: usize, model: &N, optim: &ModuleOptimizer, state: &TrainState) -> Result<()> {
    let dir = epoch_dir(out, epoch);
    fs::create_dir_all(&dir)?;
    model.clone().save_file(dir.join(MODEL_FILE)).map_err(|e| anyhow::anyhow!("{e:?}")).context("saving the model checkpoint")?;
    optim.save(dir.join("optimizer.bpk")).map_err(|e| anyhow::anyhow!("{e:?}")).context("saving the optimizer checkpoint")?;
    let mut sums = std::collections::BTreeMap::new();
    for name in CHECKSUMMED {
        let bytes = fs::read(dir.join(name)).with_context(|| format!("reading back {}", dir.join(name).display()))?;
        sums.insert(name, lepton_core::data::sha256_hex(&bytes));
    }
    crate::write_atomically(&dir.join("checksums.json"), serde_json::to_string_pretty(&sums)?.as_bytes())?;
    // state.json last: its presence marks the checkpoint complete.
    crate::write_atomically(&dir.join("state.json"), serde_json::to_string_pretty(state)?.as_bytes())?;
    // Keep the two newest checkpoints.
    if epoch > 2 {
        let _ = fs::remove_dir_all(epoch_dir(out, epoch - 2));
    }
    Ok(())
}

fn write_outputs<N: Net>(out: &Path, model: &N, state: &TrainState) -> Result<()> {
    let tmp = out.join(".model.bpk.tmp");
    model.clone().save_file(&tmp).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    fs::rename(&tmp, out.join(MODEL_FILE))?;
    crate::write_atomically(&out.join(METRICS_FILE), serde_json::to_string_pretty(state)?.as_bytes())?;
    super::plot::training_curves(&state.epochs, &out.join("training.svg"), &out.join("training.png"))?;
    Ok(())
}

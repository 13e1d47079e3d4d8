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
    /// Convert a TFLite full-integer model, or a float ONNX CNN (calibrated and quantized), into a
    /// Lepton model (.lpk).
    Import {
        /// The .tflite or .onnx file.
        model: PathBuf,
        /// Data directory for ONNX calibration (default: the cache used by `lepton data`).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Training images (or inputs) used to calibrate an ONNX model's activation ranges.
        #[arg(long, value_parser = positive, default_value_t = 1000)]
        calibration: usize,
        /// float32 .npy of inputs in the ONNX model's input layout, to calibrate a model that
        /// does not take MNIST images.
        #[arg(long)]
        calibration_inputs: Option<PathBuf>,
        /// Where to write the Lepton model.
        #[arg(long)]
        out: PathBuf,
        /// Weight storage: i16 (the default: every layer pre-widened for SMLAD, 2x weight flash), fast (the per-layer choice), int8 or compact (no flash cost), canonical (TFLite order).
        #[arg(long, value_enum, default_value_t)]
        weights: lepton::lpk::Packing,
    },
    /// Train the seed CNN, or the network --arch describes (burn; CPU backend `flex` unless
    /// LEPTON_DEVICE says otherwise).
    Train {
        /// Data directory (default: the cache used by `lepton data`).
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, value_parser = positive, default_value_t = 5)]
        epochs: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output directory: model.bpk, metrics.json, training.svg/png, checkpoints/.
        #[arg(long, default_value = "models/mnist-cnn")]
        out: PathBuf,
        /// Continue from the last checkpoint in --out.
        #[arg(long)]
        resume: bool,
        /// Train on the first N training images only (quick runs).
        #[arg(long, value_parser = positive)]
        train_images: Option<usize>,
        /// Evaluate on the first N test images only.
        #[arg(long, value_parser = positive)]
        test_images: Option<usize>,
        #[arg(long, value_parser = positive, default_value_t = 64)]
        batch_size: usize,
        /// Architecture file (JSON, or TOML by extension): a sequential CNN of conv, depthwise,
        /// max_pool/avg_pool, global_avg_pool, flatten, dense, relu/relu6 layers (README,
        /// "Architectures"). Default: the seed CNN. Saved beside the model as arch.json.
        #[arg(long)]
        arch: Option<PathBuf>,
        /// Learning-rate schedule (the seed recipe: constant 1e-3).
        #[arg(long, value_enum, default_value = "constant")]
        schedule: lepton::train::trainer::Schedule,
        /// Light augmentation: shift each training image by up to N pixels (the seed recipe: 0).
        #[arg(long, default_value_t = 0)]
        shift: usize,
        /// Adam's learning rate.
        #[arg(long, default_value_t = 1e-3)]
        learning_rate: f64,
        /// Quantization-aware training: fake-quantized weights and activations in the forward
        /// pass, straight-through gradients; `lepton quantize` then uses the ranges it tracked.
        #[arg(long)]
        qat: bool,
        /// Weight bits quantization-aware training simulates (4: for `--weights int4`).
        #[arg(long, default_value_t = 8, value_parser = weight_bits)]
        qat_bits: u32,
    },
    /// Fine-tune a trained float model with quantization-aware training into a new directory.
    Finetune {
        /// The float model directory written by `lepton train`.
        #[arg(long = "float")]
        float_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Required: the fine-tuning is quantization-aware.
        #[arg(long)]
        qat: bool,
        #[arg(long, default_value_t = 8, value_parser = weight_bits)]
        qat_bits: u32,
        #[arg(long, value_parser = positive, default_value_t = 2)]
        epochs: usize,
        #[arg(long, default_value_t = 1e-4)]
        learning_rate: f64,
        #[arg(long, value_enum, default_value = "cosine")]
        schedule: lepton::train::trainer::Schedule,
        #[arg(long, default_value_t = 0)]
        shift: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, value_parser = positive, default_value_t = 64)]
        batch_size: usize,
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, value_parser = positive)]
        train_images: Option<usize>,
        #[arg(long, value_parser = positive)]
        test_images: Option<usize>,
    },
    /// Post-training int8 quantization of a trained float model into a Lepton model (.lpk).
    Quantize {
        /// The float model directory written by `lepton train`.
        #[arg(long = "float")]
        float_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Training images used to calibrate activation ranges.
        #[arg(long, value_parser = positive, default_value_t = 1000)]
        calibration: usize,
        /// Weight storage: fast (fewest instructions: Winograd where a 3x3 conv feeds a 2x2 max-pool, int8 for large FC layers, i16 elsewhere), compact or int8 (no flash cost), i16 (every layer pre-widened), canonical (TFLite order), int4 (4-bit weights, two a byte, for convs and fully connected layers).
        #[arg(long, value_enum, default_value = "fast")]
        weights: lepton::lpk::Packing,
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// The cost table of a Lepton model: per layer op, shapes, parameters, MACs, bytes, arena,
    /// and device instructions when `cargo xtask bench` has measured them.
    Report {
        #[arg(long)]
        model: PathBuf,
        /// Bench results (default: MODEL.bench.json beside the model, written by `cargo xtask bench`).
        #[arg(long)]
        bench: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Plot the cost-accuracy frontier that `cargo xtask pareto` wrote (pareto.json) as
    /// pareto.svg and pareto.png.
    PlotPareto {
        #[arg(long, default_value = "models/pareto/pareto.json")]
        json: PathBuf,
        /// Output directory (default: beside the JSON).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Export the trained float model as ONNX (opset 13).
    ExportOnnx {
        /// The float model directory written by `lepton train`.
        #[arg(long = "float")]
        float_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a model into a board's model partition with a debug probe (probe-rs).
    Flash {
        /// probe-rs target name.
        #[arg(long, default_value = lepton::flash::DEFAULT_CHIP)]
        chip: String,
        #[arg(long)]
        model: PathBuf,
        /// Flash address of the model partition (default: the firmware's, 0x08040000).
        #[arg(long)]
        address: Option<String>,
        /// Allow an address outside the model partition (still only the main flash).
        #[arg(long)]
        force_address: bool,
    },
    /// Int8 inference of any Lepton model on the host: inputs from a .npy file, outputs to one.
    Run {
        #[arg(long)]
        model: PathBuf,
        /// int8 array `N x <model input shape>` (a leading batch of 1 in the model's shape is dropped).
        #[arg(long)]
        inputs: PathBuf,
        /// Where to write the int8 outputs, `N x K`.
        #[arg(long)]
        out: PathBuf,
        /// Write the logits (the input of a final softmax) instead of the model's output.
        #[arg(long)]
        logits: bool,
        /// Use the reference kernels (the oracle) instead of the optimized ones (the same bits).
        #[arg(long)]
        reference: bool,
        /// Run on a board over its UART link instead: a serial port (`/dev/ttyUSB0`, `COM3`) or
        /// `HOST:PORT` for QEMU (`-serial tcp::PORT,server=on`). The board must run the Lepton
        /// board firmware with this model flashed; every output is checked against the host's.
        #[arg(long)]
        port: Option<String>,
        /// Serial baud rate (the board firmware's USART1 runs at 115200 8N1).
        #[arg(long, default_value_t = 115_200)]
        baud: u32,
    },
    /// Run a Lepton model over the test set on the host and report its accuracy.
    Eval {
        #[arg(long)]
        model: PathBuf,
        /// The float model to compare with: a `lepton train` directory (burn) or an .onnx file (tract).
        #[arg(long = "float")]
        float_model: Option<PathBuf>,
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
        #[arg(long, value_parser = positive)]
        images: Option<usize>,
        /// Run the optimized kernels (bit-exact with the reference ones, which are the default
        /// and the oracle; several times faster on the host).
        #[arg(long)]
        optimized: bool,
    },
}

/// Weight bits of quantization-aware training: 8 or 4.
fn weight_bits(s: &str) -> Result<u32, String> {
    match s {
        "8" => Ok(8),
        "4" => Ok(4),
        _ => Err(format!("{s}: weight bits are 8 or 4")),
    }
}

/// A count that must be at least 1 (`--epochs 0` would do nothing and say nothing).
fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn main() {
    // `lepton report | head` ends quietly, as other command-line tools do, instead of panicking
    // on a closed pipe.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Data { dir } => {
            let dir = data::ensure(dir.as_deref())?;
            // The same checks as every loader: both parts, in full.
            for part in [Part::Train, Part::Test] {
                let split = data::load(&dir, part)?;
                eprintln!("{part:?}: {} images of {}, {} classes", split.len(), split.shape_name(), data::CLASSES);
            }
            println!("{}", dir.display());
            Ok(())
        }
        Command::Import { model, out, weights, data, calibration, calibration_inputs } => {
            import(&model, &out, weights, &lepton::import::Calibration { data_dir: data, count: calibration, inputs: calibration_inputs })
        }
        Command::Train { data, epochs, seed, out, resume, train_images, test_images, batch_size, arch, schedule, shift, learning_rate, qat, qat_bits } => {
            let arch = match &arch {
                Some(path) => lepton::train::arch::Arch::load(path)?,
                None => lepton::train::arch::Arch::seed(),
            };
            let (train, test) = training_splits(data.as_deref(), train_images, test_images)?;
            if batch_size == 0 {
                bail!("--batch-size must be at least 1");
            }
            let config = lepton::train::trainer::TrainConfig { epochs, seed, batch_size, learning_rate, train_images: train.len(), schedule, shift, qat: qat.then_some(qat_bits) };
            let device = lepton::train::device()?;
            let state = lepton::train::trainer::train(&train, &test, config, &arch, &out, resume, &device)?;
            if let Some(last) = state.epochs.last() {
                println!("float test accuracy {:.4} after {} epochs; model in {}", last.test_accuracy, last.epoch, out.display());
            }
            Ok(())
        }
        Command::Finetune { float_dir, out, qat, qat_bits, epochs, learning_rate, schedule, shift, seed, batch_size, data, train_images, test_images } => {
            if !qat {
                bail!("lepton finetune fine-tunes with quantization-aware training: pass --qat");
            }
            let (train, test) = training_splits(data.as_deref(), train_images, test_images)?;
            let config = lepton::train::trainer::TrainConfig { epochs, seed, batch_size, learning_rate, train_images: train.len(), schedule, shift, qat: Some(qat_bits) };
            let device = lepton::train::device()?;
            let state = lepton::train::trainer::finetune(&train, &test, config, &float_dir, &out, &device)?;
            if let Some(last) = state.epochs.last() {
                println!("quantization-aware test accuracy {:.4} after {} epochs; model in {}", last.test_accuracy, last.epoch, out.display());
            }
            Ok(())
        }
        Command::Quantize { float_dir, out, calibration, data, weights } => {
            let bits = if weights == lepton::lpk::Packing::Int4 { lepton::quantize::ptq::WeightBits::Four } else { lepton::quantize::ptq::WeightBits::Eight };
            let blob = lepton::quantize::quantize(&float_dir, data.as_deref(), calibration, bits)?.to_lpk_with(weights)?;
            write_atomically(&out, &blob)?;
            eprintln!("wrote {} ({} bytes)", out.display(), blob.len());
            Ok(())
        }
        Command::ExportOnnx { float_dir, out } => {
            let bytes = lepton::float_reference::export_onnx(&float_dir)?;
            write_atomically(&out, &bytes)?;
            eprintln!("wrote {} ({} bytes, ONNX opset {})", out.display(), bytes.len(), lepton::onnx::OPSET);
            Ok(())
        }
        Command::Flash { chip, model, address, force_address } => {
            let bytes = fs::read(&model).with_context(|| format!("reading {}", model.display()))?;
            let address = match address {
                Some(a) => lepton::flash::parse_address(&a)?,
                None => lepton::flash::DEFAULT_ADDRESS,
            };
            lepton::flash::flash(&chip, address, &bytes, force_address)
        }
        Command::PlotPareto { json, out } => {
            let dir = out.unwrap_or_else(|| json.parent().map(Path::to_path_buf).unwrap_or_default());
            lepton::pareto_plot::plot(&json, &dir)?;
            eprintln!("wrote {} and {}", dir.join("pareto.svg").display(), dir.join("pareto.png").display());
            Ok(())
        }
        Command::Report { model, json, bench } => {
            let blob = fs::read(&model).with_context(|| format!("reading {}", model.display()))?;
            let mut report = lepton::report::report(&blob).with_context(|| model.display().to_string())?;
            let bench_path = bench.unwrap_or_else(|| model.with_extension("lpk.bench.json"));
            if let Ok(text) = fs::read_to_string(&bench_path) {
                let bench: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", bench_path.display()))?;
                report = report.with_bench(&bench);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                lepton::report::print_table(&report);
            }
            Ok(())
        }
        Command::Run { model, inputs, out, logits, reference, port, baud } => {
            run_model(&model, &inputs, &out, logits, !reference, port.as_deref().map(|p| (p, baud)))
        }
        Command::Eval { model, float_model, data, json, logits, images, optimized } => {
            evaluate(&model, float_model.as_deref(), data.as_deref(), json, logits.as_deref(), images, optimized)
        }
    }
}

/// The training and test splits of the data set in `data` (or the default cache), each limited
/// to its first images where asked.
fn training_splits(data: Option<&Path>, train_images: Option<usize>, test_images: Option<usize>) -> Result<(data::Split, data::Split)> {
    let dir = data::ensure(data)?;
    let (mut train, mut test) = (data::load(&dir, Part::Train)?, data::load(&dir, Part::Test)?);
    if let Some(n) = train_images {
        train = train.truncated(n);
    }
    if let Some(n) = test_images {
        test = test.truncated(n);
    }
    Ok((train, test))
}

fn import(model: &Path, out: &Path, weights: lepton::lpk::Packing, calibration: &lepton::import::Calibration) -> Result<()> {
    let qmodel = lepton::import::import(model, calibration)?;
    let blob = qmodel.to_lpk_with(weights)?;
    write_atomically(out, &blob)?;
    eprintln!("wrote {} ({} ops, {} bytes)", out.display(), qmodel.nodes.len(), blob.len());
    Ok(())
}

/// The device's outputs for `inputs` over the UART link at `port`, and how many differ from
/// the host's (`host`) in any bit.
fn run_on_board(port: &str, baud: u32, inputs: &[i8], host: &eval::Outputs) -> Result<(eval::Outputs, usize)> {
    let count = host.logits.len();
    let input_len = inputs.len() / count.max(1);
    let mut link = lepton::board_link::open(port, baud)?;
    eprintln!("lepton: {count} inputs to the device at {port} (waiting for its hello frame)");
    let progress = lepton::progress::Progress::new(count as u64, "device inputs");
    let bytes: Vec<u8> = inputs.iter().map(|&v| v as u8).collect();
    let run = lepton::uart::run_session(&mut *link, &bytes, input_len, || progress.inc(1)).with_context(|| format!("device at {port}"))?;
    progress.finish();
    let mismatches = lepton::device::mismatches(host, &run.results);
    let device = eval::Outputs { logits: run.results.iter().map(|r| r.logits.clone()).collect(), outputs: run.results.iter().map(|r| r.outputs.clone()).collect() };
    let ticks = run.results.iter().map(|r| r.instructions as f64).sum::<f64>() / count.max(1) as f64;
    eprintln!(
        "device: {count} inputs, {mismatches} differ from the host; {ticks:.0} TIM2 ticks per inference (instructions under QEMU -icount, timer clocks on a board); stack peak {} B, arena {} B, model {} B",
        run.stack_peak_bytes, run.arena_bytes, run.model_bytes
    );
    Ok((device, mismatches))
}

/// `port`: run on the board at that port (and baud rate) instead, checked against the host.
fn run_model(model: &Path, inputs: &Path, out: &Path, logits: bool, optimized: bool, port: Option<(&str, u32)>) -> Result<()> {
    let blob = fs::read(model).with_context(|| format!("reading {}", model.display()))?;
    let parsed = eval::parse_model(&blob, &model.display().to_string())?;
    let x = lepton::npy::read_i8(inputs)?;
    let s = parsed.input_shape();
    let n = lepton::npy::check_batch(inputs, &x.shape, [s.h as usize, s.w as usize, s.c as usize])?;
    let mut result = eval::run_inputs(&blob, &x.values, optimized)?;
    let mut mismatches = 0;
    if let Some((port, baud)) = port {
        (result, mismatches) = run_on_board(port, baud, &x.values, &result)?;
    }
    let rows = if logits { &result.logits } else { &result.outputs };
    let k = rows.first().map_or(0, Vec::len);
    let flat: Vec<i8> = rows.concat();
    lepton::npy::write_i8(out, &[n, k], &flat)?;
    eprintln!("wrote {} ({n} x {k} int8 {})", out.display(), if logits { "logits" } else { "outputs" });
    if mismatches > 0 {
        bail!("{mismatches} of {n} inputs differ between the device and the host in some bit (does the board run this model? `lepton flash --model M.lpk`)");
    }
    Ok(())
}

fn evaluate(
    model: &Path,
    float_model: Option<&Path>,
    data_dir: Option<&Path>,
    json: bool,
    logits_out: Option<&Path>,
    images: Option<usize>,
    optimized: bool,
) -> Result<()> {
    let blob = fs::read(model).with_context(|| format!("reading {}", model.display()))?;
    eval::parse_model(&blob, &model.display().to_string())?;
    let mut test = data::load_part(data_dir, Part::Test)?;
    if let Some(n) = images {
        test = test.truncated(n);
    }
    let run = eval::run_int8_with(&blob, &test, optimized)?;
    if let Some(path) = logits_out {
        write_atomically(path, serde_json::to_string(&run.logits)?.as_bytes())?;
    }
    let mut report = serde_json::json!({
        "model": model.display().to_string(),
        "images": test.len(),
        "int8_accuracy": run.accuracy(&test.labels),
    });
    if let Some(float_model) = float_model {
        let float_logits = lepton::float_reference::float_logits(float_model, &test)?;
        let cmp = eval::compare(&blob, &run, &float_logits, &test.labels)?;
        let fields = serde_json::to_value(&cmp)?;
        report.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
        report["float_model"] = float_model.display().to_string().into();
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for (k, v) in report.as_object().unwrap() {
            match v.as_f64() {
                Some(x) if v.is_f64() => println!("{k:<18} {x:.6}"),
                _ => println!("{k:<18} {}", v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())),
            }
        }
    }
    Ok(())
}

use lepton::write_atomically;

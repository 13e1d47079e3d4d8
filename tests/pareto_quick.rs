//! One grid point of `cargo xtask pareto` end to end, quickly (CI): train the two-conv network
//! one epoch on 2,000 images, quantize it with both weight layouts, judge it on the host, run it
//! on the QEMU board, and check the records `pareto.json` holds.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[test]
fn a_quick_grid_point_runs_end_to_end() {
    let out = tempfile::tempdir().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let run = Command::new(cargo)
        .current_dir(root())
        .args(["xtask", "pareto", "--quick", "--only", "two-conv", "--json", "--out"])
        .arg(out.path())
        .output()
        .expect("cargo xtask runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "cargo xtask pareto failed:\n{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    let printed: serde_json::Value = serde_json::from_str(&stdout).expect("--json prints the records");
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(out.path().join("pareto.json")).unwrap()).unwrap();
    assert_eq!(printed, written);
    let points = written.as_array().unwrap();
    let names: Vec<&str> = points.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["two-conv/compact", "two-conv/fast", "two-conv/int4"]);
    for p in points {
        for key in ["name", "arch", "weight_bits", "qat", "params", "model_bytes", "instructions_per_inference", "peak_ram_bytes", "float_accuracy", "int8_accuracy"] {
            assert!(!p[key].is_null(), "{key} missing in {p}");
        }
        assert_eq!(p["params"], 8 * 9 + 8 + 16 * 8 * 9 + 16 + 400 * 10 + 10, "{p}");
        assert_eq!(p["device_check"]["mismatches"], 0, "{p}");
        // One epoch on 2,000 images learns something (chance is 10%), and the integer model follows the float one.
        let (float, int) = (p["float_accuracy"].as_f64().unwrap(), p["int8_accuracy"].as_f64().unwrap());
        assert!(float > 0.15 && (float - int).abs() < 0.08, "{p}");
        assert!(p["instructions_per_inference"].as_u64().unwrap() > 192_064, "at least one instruction per MAC: {p}");
    }
    let (compact, fast, int4) = (&points[0], &points[1], &points[2]);
    assert_eq!((compact["weight_bits"].as_u64(), int4["weight_bits"].as_u64()), (Some(8), Some(4)));
    assert!(int4["model_bytes"].as_u64() < compact["model_bytes"].as_u64(), "int4 is the smallest layout");
    assert!(compact["model_bytes"].as_u64() < fast["model_bytes"].as_u64(), "compact is smaller than fast");
    assert!(compact["instructions_per_inference"].as_u64() > fast["instructions_per_inference"].as_u64(), "fast is the faster layout");
    // The fastest is on the instructions front, the smallest on the bytes front.
    assert_eq!((int4["front_bytes"].as_bool(), fast["front_instructions"].as_bool()), (Some(true), Some(true)));
    assert!(out.path().join("pareto.svg").is_file() && out.path().join("pareto.png").is_file());
}

//! Puts memory.x on the linker path and, with `embedded-model`, copies the model named by
//! LEPTON_MODEL into OUT_DIR so the firmware can include it.

use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    fs::copy("memory.x", out.join("memory.x")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-env-changed=LEPTON_MODEL");
    if env::var_os("CARGO_FEATURE_EMBEDDED_MODEL").is_some() {
        let model = env::var("LEPTON_MODEL").expect("the embedded-model feature needs LEPTON_MODEL=path/to/model.lpk");
        fs::copy(&model, out.join("model.lpk")).unwrap_or_else(|e| panic!("LEPTON_MODEL={model}: {e}"));
        println!("cargo:rerun-if-changed={model}");
    }
}

//! Generates the C header `callplus.h` into `OUT_DIR` with cbindgen (pinned in the workspace's
//! `Cargo.toml`, configured by `cbindgen.toml`). The checked-in copy, `include/callplus.h`, is
//! compared with it by `tests/header.rs`; `cargo xtask codegen` refreshes the copy.

use std::error::Error;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo::rerun-if-changed=src");
    println!("cargo::rerun-if-changed=cbindgen.toml");
    let crate_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR is not set")?);
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))?;
    // Parsing the crate's own sources (following `mod` declarations) needs no `cargo
    // metadata` run, so the build script stays fast and works offline.
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src").join("lib.rs"))
        .generate()?;
    bindings.write_to_file(out_dir.join("callplus.h"));
    Ok(())
}

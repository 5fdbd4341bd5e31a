//! The checked-in C header must be what cbindgen generates from the current sources (the
//! "tidy" pattern: `cargo test` alone catches a stale header).
//!
//! `build.rs` writes the generated header to `OUT_DIR`; this test compares it with
//! `include/callplus.h`. With `CALLPLUS_UPDATE_HEADER=1` in the environment it rewrites the
//! checked-in file instead of failing (that is what `cargo xtask codegen` runs).

use std::path::Path;

const GENERATED: &str = include_str!(concat!(env!("OUT_DIR"), "/callplus.h"));

#[test]
fn checked_in_header_is_fresh() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include").join("callplus.h");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    if checked_in == GENERATED {
        return;
    }
    if std::env::var_os("CALLPLUS_UPDATE_HEADER").is_some() {
        if let Err(e) = std::fs::write(&path, GENERATED) {
            panic!("cannot write {}: {e}", path.display());
        }
        eprintln!("updated {}", path.display());
        return;
    }
    let first_difference = checked_in
        .lines()
        .zip(GENERATED.lines())
        .position(|(a, b)| a != b)
        .map_or(checked_in.lines().count().min(GENERATED.lines().count()), |i| i)
        + 1;
    panic!(
        "{} is stale: it differs from what cbindgen generates from callplus-ffi/src (first \
         difference at line {first_difference}).\nRun `cargo xtask codegen` and commit the result.",
        path.display()
    );
}

#[test]
fn header_result_codes_are_the_protocol_table() {
    // cbindgen reads `callplus_result` from the source (it does not expand macros), so the C
    // enum is checked against the one table of result codes here and in `result.rs`.
    for &code in callplus_session::Code::ALL {
        let line = format!("CALLPLUS_RESULT_{} = {},", code.name(), code.number());
        assert!(GENERATED.contains(&line), "the header lacks `{line}`");
    }
}

//! Replays the committed fuzz corpora and every input that once crashed a target
//! (`fuzz/corpus/<target>/`, `fuzz/regressions/<target>/`) through the fuzz targets' own
//! code (`fuzz/src/lib.rs`, included below: it calls only this crate's public API), on
//! stable: the coverage the fuzzer reached stays tested in every `cargo test`, and the fixed
//! overflows stay fixed. Every input must pass its target: a typed error or success, never
//! a panic.
use std::path::Path;

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod targets;

#[test]
fn every_corpus_and_regression_input_passes_its_target() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut total = 0;
    for (name, target) in targets::TARGETS {
        let mut n = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(name)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "{name}: {} fails", path.display());
                n += 1;
            }
        }
        assert!(n > 0, "no corpus for {name}");
        total += n;
    }
    eprintln!("{total} fuzz inputs replayed");
}

//! The repository README's code, compiled as doctests (`cargo test --doc`): every Rust snippet
//! there is a real program. The crates' own READMEs are compiled by their crates.

#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

//! The built kernels hold machine code for exactly the architectures the features asked for,
//! as the toolchain's own cuobjdump reads the archive.
#![cfg(all(flashinfer_kernels, not(flashinfer_prebuilt)))]

use std::process::Command;

fn elf_archs() -> String {
    let out = Command::new(env!("FLASHINFER_RS_CUOBJDUMP"))
        .arg("--list-elf")
        .arg(env!("FLASHINFER_RS_KERNEL_ARCHIVE"))
        .output()
        .expect("run cuobjdump");
    assert!(
        out.status.success(),
        "cuobjdump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kernels_hold_machine_code_for_the_enabled_archs() {
    let listing = elf_archs();
    let count = |arch: &str| {
        listing
            .lines()
            .filter(|l| l.contains(&format!(".{arch}.")))
            .count()
    };
    // cuobjdump names the sm_100 family target's machine code `sm_100`. Blackwell has no
    // per-chip (`sm_100a`, `sm_103a`) machine code: the family target covers both chips.
    for (feature, arch) in [
        (cfg!(feature = "sm90"), "sm_90a"),
        (cfg!(feature = "sm100"), "sm_100"),
        (false, "sm_100a"),
        (false, "sm_103a"),
    ] {
        if feature {
            assert!(
                count(arch) > 0,
                "no {arch} machine code in the kernels:\n{listing}"
            );
        } else {
            assert_eq!(count(arch), 0, "{arch} machine code without its feature");
        }
    }
    eprintln!(
        "cubins: sm_90a {}, sm_100 (family) {} ({})",
        count("sm_90a"),
        count("sm_100"),
        env!("FLASHINFER_RS_KERNEL_ARCHIVE")
    );
}

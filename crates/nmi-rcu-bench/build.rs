//! Builds the C shim over liburcu when its headers and libraries are found.
//!
//! The shim lets the benchmarks run liburcu's read side with the lock and
//! unlock inlined, as a C program using liburcu would. When the memb and bp
//! flavors are both present, the script compiles `csrc/*.c`, links
//! `liburcu-memb`, `liburcu-bp` and `liburcu-common`, and sets
//! `cfg(has_liburcu)`. Otherwise it prints a cargo warning with the reason,
//! and the liburcu contenders are skipped at run time with the same reason.
//! Setting `NMI_RCU_BENCH_NO_LIBURCU=1` skips the shim on purpose, which
//! exercises the skip path on a machine that has liburcu.

use std::env;
use std::path::{Path, PathBuf};

/// Header and library names that the shim needs, one pair per flavor.
const FLAVORS: [(&str, &str); 2] = [
    ("urcu/urcu-memb.h", "liburcu-memb.so"),
    ("urcu/urcu-bp.h", "liburcu-bp.so"),
];

fn main() {
    println!("cargo:rerun-if-changed=csrc/urcu_memb_shim.c");
    println!("cargo:rerun-if-changed=csrc/urcu_bp_shim.c");
    println!("cargo:rerun-if-env-changed=NMI_RCU_BENCH_NO_LIBURCU");
    println!("cargo:rustc-check-cfg=cfg(has_liburcu)");

    match find_liburcu() {
        Ok((include_dir, lib_dir)) => build_shim(&include_dir, &lib_dir),
        Err(reason) => {
            println!("cargo:warning=liburcu contenders disabled: {reason}");
            println!("cargo:rustc-env=NMI_RCU_BENCH_LIBURCU_MISSING={reason}");
        }
    }
}

/// Returns the include and library directories that hold every flavor, or
/// the reason the shim cannot be built.
fn find_liburcu() -> Result<(PathBuf, PathBuf), String> {
    if env::var_os("NMI_RCU_BENCH_NO_LIBURCU").is_some_and(|v| v == "1") {
        return Err("NMI_RCU_BENCH_NO_LIBURCU=1 was set at build time".to_owned());
    }
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return Err("liburcu is only probed for on Linux".to_owned());
    }

    let multiarch = multiarch_triple();
    let include_dirs = candidate_dirs(&["/usr/include", "/usr/local/include"], &multiarch);
    let lib_dirs = candidate_dirs(&["/usr/lib", "/usr/local/lib", "/usr/lib64"], &multiarch);

    let include_dir =
        find_dir_with(&include_dirs, FLAVORS.map(|(header, _)| header)).ok_or_else(|| {
            "headers urcu/urcu-memb.h and urcu/urcu-bp.h not found; install liburcu-dev and rebuild"
                .to_owned()
        })?;
    let lib_dir = find_dir_with(&lib_dirs, FLAVORS.map(|(_, lib)| lib)).ok_or_else(|| {
        "liburcu-memb.so and liburcu-bp.so not found; install liburcu-dev and rebuild".to_owned()
    })?;
    Ok((include_dir, lib_dir))
}

/// Returns the Debian multiarch directory name for the target, such as
/// `x86_64-linux-gnu`.
fn multiarch_triple() -> String {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let env_name = env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    format!("{arch}-linux-{env_name}")
}

/// Lists each base directory after its multiarch subdirectory, which is
/// where Debian installs liburcu.
fn candidate_dirs(bases: &[&str], multiarch: &str) -> Vec<PathBuf> {
    bases
        .iter()
        .flat_map(|base| [Path::new(base).join(multiarch), PathBuf::from(base)])
        .collect()
}

/// Returns the first directory that contains every one of `files`.
fn find_dir_with<const N: usize>(dirs: &[PathBuf], files: [&str; N]) -> Option<PathBuf> {
    dirs.iter()
        .find(|dir| files.iter().all(|file| dir.join(file).is_file()))
        .cloned()
}

/// Compiles the shim, links the liburcu libraries and sets `cfg(has_liburcu)`.
fn build_shim(include_dir: &Path, lib_dir: &Path) {
    // Each flavor goes into its own translation unit, because liburcu's
    // headers map the generic names (`rcu_read_lock`, ...) onto one flavor
    // per unit.
    cc::Build::new()
        .file("csrc/urcu_memb_shim.c")
        .file("csrc/urcu_bp_shim.c")
        .include(include_dir)
        .opt_level(2)
        .warnings(true)
        .extra_warnings(true)
        .compile("nmi_rcu_bench_urcu_shim");

    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=dylib=urcu-memb");
    println!("cargo:rustc-link-lib=dylib=urcu-bp");
    println!("cargo:rustc-link-lib=dylib=urcu-common");
    println!("cargo:rustc-cfg=has_liburcu");
}

//! Compiles the kernel fast path (bpf/relay.c) to BPF with clang, for
//! `fast_path` to load at run time.

use std::path::PathBuf;
use std::process::Command;

fn main() -> Result<(), String> {
    let source = "bpf/relay.c";
    println!("cargo:rerun-if-changed={source}");
    let out = std::env::var_os("OUT_DIR").ok_or("cargo sets OUT_DIR")?;
    let object = PathBuf::from(out).join("relay.o");
    // linux/bpf.h includes asm/types.h, which Debian keeps under the
    // multiarch directory of the machine building.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").map_err(|error| error.to_string())?;
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    let status = Command::new("clang")
        .args([
            "-O2", "-target", "bpf", "-Wall", "-Werror", "-I", &multiarch, "-c", source, "-o",
        ])
        .arg(&object)
        .status()
        .map_err(|error| {
            format!("clang compiles the BPF program (apt-get install clang): {error}")
        })?;
    if !status.success() {
        return Err(format!("clang could not compile {source}"));
    }
    Ok(())
}

//! Lays out the edge daemon's code (`outpost-edged`): the functions a running edge device executes come first, packed
//! together, in the order `edged.order` lists them (mangled names, made by `scripts/edge-order.sh`).
//!
//! Why: the daemon's resident set is mostly its executable's own pages, and the kernel maps code in blocks around
//! each page a process touches (fault-around, 64 KiB). Left where the compiler puts them, the ~4 MB of functions
//! that startup, idle and routing run are spread over nearly all of the 12 MB of code, so 9 MB of it stayed mapped;
//! packed, they map little more than themselves (idle RSS with the sample modules 15.5 -> 9.9 MiB; 8.1 MiB with
//! `scripts/build-edge.sh`'s static link; docs/benchmarks.md, "The edge daemon's layout").
//!
//! The linker (lld, rustc's own on this target since Rust 1.90) skips names it does not find, so a file made with
//! another toolchain, dependency version or build profile costs memory, never a build. GNU ld has no such option,
//! so other targets and older toolchains link as before.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=edged.order");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-linux-gnu")
        && rustc_links_with_lld()
    {
        let order = concat!(env!("CARGO_MANIFEST_DIR"), "/edged.order");
        println!("cargo:rustc-link-arg-bin=outpost-edged=-Wl,--symbol-ordering-file={order}");
        println!("cargo:rustc-link-arg-bin=outpost-edged=-Wl,--no-warn-symbol-ordering");
        // Relative relocations packed (DT_RELR): the 548 KB table the loader reads at every start, and keeps
        // resident, becomes 11 KB. glibc 2.36 onwards applies them; an older one refuses such an executable.
        if glibc_at_least(2, 36) {
            println!("cargo:rustc-link-arg-bin=outpost-edged=-Wl,-z,pack-relative-relocs");
        }
    }
}

/// Whether this machine's glibc (the one linked against in a native build) is at least `major.minor`.
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(output) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    // "glibc 2.36"
    version(&String::from_utf8_lossy(&output.stdout)) >= (major, minor)
}

/// Whether rustc links through its own lld by default (x86_64 Linux, Rust 1.90 onwards).
fn rustc_links_with_lld() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(output) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    version(&String::from_utf8_lossy(&output.stdout)) >= (1, 90)
}

/// The (major, minor) of the version a tool prints second: "rustc 1.95.0 (...)", "glibc 2.36".
fn version(text: &str) -> (u32, u32) {
    let mut numbers = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .split('.')
        .map(|n| n.parse::<u32>().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
}

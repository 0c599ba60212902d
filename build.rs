//! With the `cuda` feature: compiles every `kernels/*.cu` to PTX with nvcc, once per
//! target architecture, and writes `$OUT_DIR/kernels_ptx.rs` for `src/ops/cuda.rs` to
//! embed. The default (CPU) build does nothing here and needs nothing from CUDA.
//!
//! Architectures: `SURGE_CUDA_ARCHS` (comma-separated compute capabilities, e.g.
//! `80,86,90`), else `CUDA_COMPUTE_CAP` (the one candle's own kernels are built for).
//! nvcc: `$CUDA_ROOT/bin/nvcc`, else `nvcc` on PATH.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=kernels");
    println!("cargo::rerun-if-env-changed=SURGE_CUDA_ARCHS");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo::rerun-if-env-changed=CUDA_ROOT");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let archs = target_archs();
    let sources = kernel_sources(Path::new("kernels"));
    let nvcc = match std::env::var_os("CUDA_ROOT") {
        Some(root) => Path::new(&root).join("bin/nvcc"),
        None => PathBuf::from("nvcc"),
    };
    let mut table = String::from(
        "/// (module, compute capability, PTX) for every kernels/*.cu and target arch.\n\
         pub const KERNELS_PTX: &[(&str, u32, &str)] = &[\n",
    );
    for source in &sources {
        let module = source.file_stem().unwrap().to_string_lossy().into_owned();
        for &arch in &archs {
            let ptx = out_dir.join(format!("{module}.sm{arch}.ptx"));
            let status = Command::new(&nvcc)
                .args(["--ptx", "-O3", "-std=c++17", "--use_fast_math"])
                .arg(format!("-arch=compute_{arch}"))
                .args(["-I", "kernels"])
                .arg("-o")
                .arg(&ptx)
                .arg(source)
                .status()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run {} ({e}); install it with tests/support/install-cuda-toolchain.sh",
                        nvcc.display()
                    )
                });
            assert!(
                status.success(),
                "nvcc failed on {} for compute_{arch}",
                source.display()
            );
            table.push_str(&format!(
                "    ({module:?}, {arch}, include_str!({:?})),\n",
                ptx.display().to_string()
            ));
        }
    }
    table.push_str("];\n");
    std::fs::write(out_dir.join("kernels_ptx.rs"), table).expect("write kernels_ptx.rs");
}

/// Compute capabilities to build for, e.g. `[80, 86, 90]`.
fn target_archs() -> Vec<u32> {
    let list = std::env::var("SURGE_CUDA_ARCHS")
        .or_else(|_| std::env::var("CUDA_COMPUTE_CAP"))
        .expect(
            "set CUDA_COMPUTE_CAP (e.g. 90 for H100/H200, 86 for A10G, 80 for A100) or \
             SURGE_CUDA_ARCHS=80,86,90 for the cuda feature",
        );
    let archs: Vec<u32> = list
        .split([',', ';', ' '])
        .filter(|s| !s.is_empty())
        .map(|s| {
            let arch: u32 = s
                .trim()
                .trim_start_matches("sm_")
                .parse()
                .unwrap_or_else(|_| panic!("bad CUDA architecture {s:?} in {list:?}"));
            assert!(
                arch >= 80,
                "surge's kernels need bf16: compute capability 80 or newer, not {arch}"
            );
            arch
        })
        .collect();
    assert!(!archs.is_empty(), "no CUDA architecture in {list:?}");
    archs
}

/// `kernels/*.cu`, sorted; headers (`*.cuh`) are only tracked through rerun-if-changed.
fn kernel_sources(dir: &Path) -> Vec<PathBuf> {
    let mut sources: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("kernels/ exists")
        .map(|e| e.expect("read kernels/").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    sources
}

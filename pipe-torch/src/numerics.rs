//! Run-to-run reproducible CPU maths. libtorch's CPU BLAS is MKL, which picks its kernels
//! at run time, per process. With its default dispatch one fresh run in about 20 of the
//! default pipeline wrote captions whose log-probs differed from the others' in the sixth
//! significant digit (same inputs, same model bytes), so one fingerprint stored two
//! different artifacts; MKL's strict reproducible mode alone (`AUTO,STRICT`) still gave 2
//! in 58, and `MKL_DYNAMIC=FALSE` did not help either. Pinning the AVX2 code path in strict
//! mode gave 0 in 60, at no cost we could measure (docs/BENCHMARKS.md, "Reliability"),
//! and the same MKL results on AVX2 and AVX-512 machines.

/// Pins MKL to its AVX2 path in strict reproducible mode, unless the user chose a mode.
/// Called first thing in `main`, before any thread starts and before MKL reads its
/// environment.
pub fn reproducible_cpu_maths() {
    if std::env::var_os("MKL_CBWR").is_none() {
        // Safe here: no other thread exists yet to read the environment concurrently.
        std::env::set_var("MKL_CBWR", "AVX2,STRICT");
    }
}

// Bake libtorch's directory into the binary's rpath, so `pipe` runs without LD_LIBRARY_PATH.
// libtorch_cuda is not linked here: loading it costs seconds at every start, so
// `model::backbone` dlopens it only when a stage asks for a GPU.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    }
}

//! The engine stays free of caption and image code: nothing in its dependency tree is a
//! data-frame, image, Arrow or libtorch crate (docs/ARCHITECTURE.md).

use std::process::Command;

#[test]
fn the_engine_depends_on_no_data_image_arrow_or_torch_crate() {
    let output = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "--locked", "-p", "pipe-engine", "-e", "normal", "--prefix", "none"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo tree");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let tree = String::from_utf8(output.stdout).unwrap();
    let crates: Vec<&str> = tree.lines().filter_map(|line| line.split_whitespace().next()).collect();
    assert!(crates.contains(&"serde_yaml"), "the tree was read: {crates:?}");
    let forbidden = ["polars", "image", "arrow", "parquet", "tch", "torch-sys"];
    let found: Vec<&&str> =
        crates.iter().filter(|name| forbidden.iter().any(|bad| name.starts_with(bad))).collect();
    assert!(found.is_empty(), "pipe-engine depends on {found:?}");
}

//! Regenerates the Rust code from `/proto` and fails if the checked-in `src/gen` is stale.
//! To update it: `make proto` (runs this test with `WXHUB_BLESS=1`).

use std::path::{Path, PathBuf};

fn protos(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "proto") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn generate(out_dir: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = protos(&root);
    assert!(
        !files.is_empty(),
        "no .proto files under {}",
        root.display()
    );
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path().unwrap());
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .client_mod_attribute(".", "#[cfg(feature = \"client\")]")
        .server_mod_attribute(".", "#[cfg(feature = \"server\")]")
        .emit_rerun_if_changed(false)
        .out_dir(out_dir)
        .file_descriptor_set_path(out_dir.join("descriptor.bin"))
        .compile_with_config(config, &files, &[root])
        .unwrap();
}

fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn generated_code_is_up_to_date() {
    let fresh = tempfile::tempdir().unwrap();
    generate(fresh.path());
    let checked_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/gen");
    if std::env::var_os("WXHUB_BLESS").is_some() {
        let _ = std::fs::remove_dir_all(&checked_in);
        std::fs::create_dir_all(&checked_in).unwrap();
        for (name, bytes) in listing(fresh.path()) {
            std::fs::write(checked_in.join(name), bytes).unwrap();
        }
        return;
    }
    let want = listing(fresh.path());
    let have = listing(&checked_in);
    let names = |l: &[(String, Vec<u8>)]| l.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&have),
        names(&want),
        "run `make proto` to regenerate crates/proto/src/gen"
    );
    for ((name, a), (_, b)) in have.iter().zip(&want) {
        assert!(
            a == b,
            "{name} is stale: run `make proto` to regenerate crates/proto/src/gen"
        );
    }
}

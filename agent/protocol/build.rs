//! Generates the protobuf messages and the async ttrpc client/server from `proto/agent.proto`.
//! Pure Rust (ttrpc-codegen), so no `protoc` is needed.
use std::{env, fs, path::PathBuf};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    let protos = ["proto/agent.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    Codegen::new()
        .out_dir(&out)
        .inputs(protos)
        .include("proto")
        .rust_protobuf()
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("ttrpc codegen failed");

    // `include!` rejects inner attributes, which the generated files start with:
    // drop `#!`/`//!` lines (containerd-shim-protos does the same).
    for entry in fs::read_dir(&out).expect("read OUT_DIR") {
        let path = entry.expect("OUT_DIR entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = fs::read_to_string(&path).expect("read generated file");
            let kept: String = text
                .lines()
                .filter(|l| !l.starts_with("#!") && !l.starts_with("//!"))
                .map(|l| format!("{l}\n"))
                .collect();
            fs::write(&path, kept).expect("write generated file");
        }
    }
}

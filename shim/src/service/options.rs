//! The runtime options containerd passes to a non-runc shim: CRI's
//! `runtimeoptions.v1.Options { type_url = 1; config_path = 2; }` inside an `Any`
//! (`ctr run --runtime-config-path` fills the same field).
use protobuf::CodedInputStream;
use protobuf::rt::WireType;

/// The `config_path` of a `runtimeoptions.v1.Options` message, if set.
pub fn config_path(options: &[u8]) -> Result<Option<String>, String> {
    let mut input = CodedInputStream::from_bytes(options);
    let mut path = None;
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(|e| e.to_string())? {
        let (field, wire) = (tag >> 3, tag & 7);
        if field == 2 && wire == WireType::LengthDelimited as u32 {
            path = Some(input.read_string().map_err(|e| e.to_string())?);
        } else {
            let wire = WireType::new(wire).ok_or_else(|| format!("bad wire type {wire}"))?;
            input.skip_field(wire).map_err(|e| e.to_string())?;
        }
    }
    Ok(path.filter(|p| !p.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_config_path_and_skips_type_url() {
        // type_url = "x", config_path = "/tmp/ctd/hyper.toml"
        let mut bytes = vec![0x0a, 1, b'x', 0x12, 19];
        bytes.extend_from_slice(b"/tmp/ctd/hyper.toml");
        assert_eq!(
            config_path(&bytes).unwrap().as_deref(),
            Some("/tmp/ctd/hyper.toml")
        );
        assert_eq!(config_path(&[]).unwrap(), None);
        assert!(config_path(&[0x12, 50, b'a']).is_err(), "truncated message");
    }
}

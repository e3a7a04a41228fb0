//! Object keys from any string: parsed to nothing, or to a key that formats back to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lifeboat_storage::keys::{self, Fence, Key, ManifestKey};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(k) = Key::parse(s) {
        assert_eq!(k.to_string(), s);
    }
    if let Some(f) = Fence::parse(s) {
        assert_eq!(f.to_string(), s);
    }
    if let Some(folder) = keys::folder_of(s) {
        if let Some(m) = ManifestKey::parse(folder, s) {
            assert_eq!(m.key(folder), s);
        }
    }
    if let Some(g) = keys::parse_pruning_marker(s) {
        assert_eq!(keys::pruning_marker(g), s);
    }
    let _ = keys::generation_of(s);
    let _ = keys::parse_blob(s);
});

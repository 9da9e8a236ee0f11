//! Fuzz target: arbitrary bytes as a layer blob (plain, gzip or zstd tar) applied to an
//! in-memory tree with small limits. Any panic, hang or unbounded allocation is a bug; errors
//! are expected.
#![no_main]

use cloister_image_builder::layer::{apply_layer, LayerInput, LayerLimits};
use cloister_image_builder::tree::{Tree, TreeLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = TreeLimits {
        max_entries: 1000,
        max_path_len: 512,
        max_metadata_bytes: 1 << 20,
        max_content_bytes: 4 << 20,
    };
    let Ok(mut tree) = Tree::new(&std::env::temp_dir(), limits) else {
        return;
    };
    let mut budget: u64 = 8 << 20;
    let layer_limits = LayerLimits {
        max_ratio: 100,
        ratio_floor: 1 << 20,
    };
    // Apply the same bytes twice, as two layers, so whiteouts and replacements meet content.
    for index in 0..2 {
        let input = LayerInput {
            name: "fuzz".into(),
            reader: Box::new(data),
            size: Some(data.len() as u64),
            digest: None,
            diff_id: None,
            media_type: None,
        };
        let _ = apply_layer(
            &mut tree,
            index,
            input,
            &mut budget,
            layer_limits,
            Box::new(|_| {}),
        );
    }
    let _ = tree.flush();
    let _ = tree.subdir_counts();
    let _ = tree.link_groups();
});

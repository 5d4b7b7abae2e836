//! A damaged or crafted `.qpw` file must be refused with a clear error, never a panic and
//! never an answer: truncations, bit flips, wrong magic and version, structural lies in
//! the header and tensor table (with checksums recomputed so the structural check is what
//! fires), and metadata that parses but describes an impossible graph (re-serialized with
//! the writer, so `plan::validate` is what rejects it). Also checks that a valid file is
//! mapped and its tensors are read in place, 64-byte aligned.

use std::borrow::Cow;
use std::path::Path;
use std::sync::OnceLock;

use qp::convert::{convert_bytes, ConvertOptions};
use qp::engine::{Engine, EngineError, EngineOptions, Tensor};
use qp::format::layout::{
    checksum, header_checksum, Header, TensorEntry, DATA_ALIGN, ENTRY_SIZE, HEADER_SIZE, TENSOR_ALIGN,
};
use qp::format::meta::ModelMeta;
use qp::format::writer::{self, TensorBytes};
use qp::format::{FormatError, QpwFile};
use qp::graph::op::Op;

fn convert_fixture(case: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(case)
        .join("model.onnx");
    let onnx = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    convert_bytes(&onnx, case, &ConvertOptions::default())
        .and_then(|c| c.to_bytes())
        .unwrap_or_else(|e| panic!("{case}: {e:#}"))
}

/// The convolutional fixture (ResNet-50 topology at small widths).
fn conv_model() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| convert_fixture("tiny_folded"))
}

/// The convolutional fixture as an f16 file (its Winograd layers' weights direct).
fn half_model() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_folded/model.onnx");
        let options = ConvertOptions {
            precision: qp::convert::Precision::Fp16,
            ..Default::default()
        };
        convert_bytes(&std::fs::read(path).unwrap(), "tiny_folded", &options)
            .and_then(|c| c.to_bytes())
            .unwrap()
    })
}

/// The dense-only fixture (Gemm MLP).
fn dense_model() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| convert_fixture("feature_model"))
}

fn models() -> [(&'static str, &'static [u8]); 2] {
    [("tiny_folded", conv_model()), ("feature_model", dense_model())]
}

fn load_err(bytes: &[u8]) -> FormatError {
    match QpwFile::from_bytes(bytes) {
        Ok(_) => panic!("a damaged file ({} bytes) was accepted", bytes.len()),
        Err(e) => e,
    }
}

fn header_of(bytes: &[u8]) -> Header {
    bytemuck::pod_read_unaligned(&bytes[..HEADER_SIZE])
}

/// Writes `h` into `bytes` with a correct header checksum.
fn put_header(bytes: &mut [u8], mut h: Header) {
    h.header_checksum = header_checksum(&h);
    bytes[..HEADER_SIZE].copy_from_slice(bytemuck::bytes_of(&h));
}

/// Applies `edit` to a copy of the file's header, with the checksum recomputed.
fn with_header(bytes: &[u8], edit: impl FnOnce(&mut Header)) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let mut h = header_of(&out);
    edit(&mut h);
    put_header(&mut out, h);
    out
}

fn entries_of(bytes: &[u8]) -> Vec<TensorEntry> {
    let h = header_of(bytes);
    let start = h.table_offset as usize;
    bytes[start..start + h.tensor_count as usize * ENTRY_SIZE]
        .chunks_exact(ENTRY_SIZE)
        .map(bytemuck::pod_read_unaligned)
        .collect()
}

/// Applies `edit` to the tensor table, with the table and header checksums recomputed.
fn with_entries(bytes: &[u8], edit: impl FnOnce(&mut Vec<TensorEntry>)) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let mut entries = entries_of(&out);
    edit(&mut entries);
    let mut h = header_of(&out);
    let table: &[u8] = bytemuck::cast_slice(&entries);
    let start = h.table_offset as usize;
    out[start..start + table.len()].copy_from_slice(table);
    h.table_checksum = checksum(table);
    put_header(&mut out, h);
    out
}

fn assert_gist(e: &FormatError, gist: &str, what: &str) {
    let msg = e.to_string();
    assert!(
        msg.contains(gist),
        "{what}: expected an error about {gist:?}, got {msg:?}"
    );
}

#[test]
fn the_fixtures_load_and_run_undamaged() {
    for (case, bytes) in models() {
        let file = QpwFile::from_bytes(bytes).unwrap_or_else(|e| panic!("{case}: {e}"));
        let mut engine = Engine::from_file(
            file,
            EngineOptions {
                reference: true,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{case}: {e}"));
        let inputs = zero_inputs(engine.meta());
        let named: Vec<(&str, Tensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        let out = engine.run(&named).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert!(out.iter().all(|(_, t)| t.data.iter().all(|v| v.is_finite())), "{case}");
    }
}

fn zero_inputs(meta: &ModelMeta) -> Vec<(String, Tensor)> {
    meta.inputs
        .iter()
        .map(|i| {
            let mut shape = vec![1];
            shape.extend_from_slice(&i.shape);
            let n = shape.iter().product();
            (i.name.clone(), Tensor::new(shape, vec![0.0; n]))
        })
        .collect()
}

#[test]
fn truncation_anywhere_is_an_error() {
    for (case, bytes) in models() {
        let mut cuts: Vec<usize> = (0..=HEADER_SIZE).collect();
        let stride = (bytes.len() / 257).max(1);
        cuts.extend((HEADER_SIZE..bytes.len()).step_by(stride));
        cuts.push(bytes.len() - 1);
        for cut in cuts {
            let e = load_err(&bytes[..cut]);
            assert!(
                matches!(e, FormatError::Truncated(_)),
                "{case} cut at {cut}: expected a truncation error, got {e}"
            );
            assert_gist(&e, "truncated", &format!("{case} cut at {cut}"));
        }
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    let mut bytes = dense_model().to_vec();
    bytes.push(0);
    assert_gist(&load_err(&bytes), "trailing bytes", "one extra byte");
}

#[test]
fn every_header_bit_flip_is_an_error() {
    for (case, bytes) in models() {
        for bit in 0..HEADER_SIZE * 8 {
            let mut damaged = bytes.to_vec();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let e = load_err(&damaged);
            let what = format!("{case}: header bit {bit}");
            match bit / 8 {
                0..=7 => assert!(matches!(e, FormatError::BadMagic(_)), "{what}: {e}"),
                8..=11 => assert!(matches!(e, FormatError::Version { .. }), "{what}: {e}"),
                _ => assert_gist(&e, "header checksum mismatch", &what),
            }
        }
    }
}

#[test]
fn a_flipped_byte_in_any_checksummed_section_is_an_error() {
    for (case, bytes) in models() {
        let h = header_of(bytes);
        let mut probes: Vec<(usize, String)> = Vec::new();
        let meta = h.meta_offset as usize..(h.meta_offset + h.meta_len) as usize;
        for at in [meta.start, meta.start + meta.len() / 2, meta.end - 1] {
            probes.push((at, "metadata checksum mismatch".into()));
        }
        let table = h.table_offset as usize..h.table_offset as usize + h.tensor_count as usize * ENTRY_SIZE;
        for at in [table.start, table.start + table.len() / 2, table.end - 1] {
            probes.push((at, "tensor table checksum mismatch".into()));
        }
        for (i, e) in entries_of(bytes).iter().enumerate() {
            let (start, len) = (e.offset as usize, e.len as usize);
            for at in [start, start + len / 2, start + len - 1] {
                probes.push((at, format!("tensor {i} (")));
            }
        }
        for (at, gist) in probes {
            let mut damaged = bytes.to_vec();
            damaged[at] ^= 0x5a;
            let e = load_err(&damaged);
            assert_gist(&e, &gist, &format!("{case}: byte {at} flipped"));
            if gist.starts_with("tensor ") && !gist.contains("table") {
                assert_gist(&e, "checksum mismatch", &format!("{case}: byte {at} flipped"));
            }
        }
    }
}

#[test]
fn wrong_magic_is_an_error() {
    let mut bytes = dense_model().to_vec();
    bytes[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
    let e = load_err(&bytes);
    assert!(matches!(e, FormatError::BadMagic(_)), "{e}");
    assert_gist(&e, "not a qp model file", "ELF magic");
    assert_gist(&e, "qp-convert", "ELF magic");
}

#[test]
fn other_versions_are_refused_even_with_a_valid_checksum() {
    // 1: before quantization grids wider than u8, which a version-1 reader would misread.
    for version in [0, 1, 3, u32::MAX] {
        let bytes = with_header(dense_model(), |h| h.version = version);
        let e = load_err(&bytes);
        match e {
            FormatError::Version { found, supported } => {
                assert_eq!((found, supported), (version, 2));
                assert_gist(&e, "re-convert", "version");
            }
            other => panic!("version {version}: {other}"),
        }
    }
}

#[test]
fn header_structure_lies_are_caught_by_the_structural_checks() {
    let bytes = conv_model();
    let h = header_of(bytes);
    let file_len = bytes.len() as u64;
    type Edit = Box<dyn Fn(&mut Header)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("header size", Box::new(|h| h.header_size = 64), "header size 64"),
        (
            "file_len larger",
            Box::new(move |h| h.file_len = file_len + 64),
            "truncated",
        ),
        (
            "file_len smaller",
            Box::new(move |h| h.file_len = file_len - 64),
            "trailing bytes",
        ),
        (
            "metadata past the end",
            Box::new(move |h| h.meta_offset = file_len - 10),
            "metadata",
        ),
        (
            "metadata length overflows",
            Box::new(|h| h.meta_len = u64::MAX - 100),
            "metadata",
        ),
        (
            "table past the end",
            Box::new(move |h| h.table_offset = file_len),
            "tensor table",
        ),
        (
            "tensor count overflows",
            Box::new(|h| h.tensor_count = u64::MAX / 16),
            "tensor count overflows",
        ),
        (
            "tensor count too large",
            Box::new(move |h| h.tensor_count = file_len / 32),
            "tensor table",
        ),
        ("data past the end", Box::new(|h| h.data_len += 4096), "data"),
        (
            "data offset overflows",
            Box::new(|h| h.data_offset = u64::MAX - 4095),
            "data",
        ),
        (
            "data not page aligned",
            Box::new(|h| {
                h.data_offset += TENSOR_ALIGN as u64;
                h.data_len -= TENSOR_ALIGN as u64;
            }),
            "not page aligned",
        ),
        ("table misaligned", Box::new(|h| h.table_offset += 4), "misaligned"),
        ("metadata overlaps the table", Box::new(|h| h.meta_len += 64), "overlap"),
        (
            "table overlaps the data",
            Box::new(|h| h.data_offset -= DATA_ALIGN as u64),
            "overlap",
        ),
    ];
    for (what, edit, gist) in cases {
        let damaged = with_header(bytes, |x| edit(x));
        let e = load_err(&damaged);
        assert!(!e.to_string().contains("header checksum"), "{what}: {e}");
        assert_gist(&e, gist, what);
    }
    // Sanity: the recomputed checksum alone leaves the file valid.
    QpwFile::from_bytes(&with_header(bytes, |_| {})).expect("re-checksummed copy loads");
    assert_eq!(h.data_offset % DATA_ALIGN as u64, 0);
}

#[test]
fn tensor_table_lies_are_caught_by_the_structural_checks() {
    let bytes = conv_model();
    let h = header_of(bytes);
    let file_len = bytes.len() as u64;
    type Edit = Box<dyn Fn(&mut Vec<TensorEntry>)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "offset past the end",
            Box::new(move |e| e[1].offset = file_len - 8),
            "lies outside the file",
        ),
        (
            "offset overflows",
            Box::new(|e| e[1].offset = u64::MAX - 3),
            "lies outside the file",
        ),
        (
            "offset in the metadata",
            Box::new(move |e| e[0].offset = h.meta_offset),
            "outside the data section",
        ),
        ("misaligned", Box::new(|e| e[2].offset += 4), "not 64-byte aligned"),
        ("length disagrees with dims", Box::new(|e| e[0].len -= 4), "need"),
        ("unknown dtype code", Box::new(|e| e[0].dtype = 99), "dtype code 99"),
        (
            "f16 code for an f32 tensor",
            Box::new(|e| e[0].dtype = 2),
            "disagrees with the metadata",
        ),
        ("checksum", Box::new(|e| e[3].checksum ^= 1), "tensor 3 ("),
        (
            "one entry missing",
            Box::new(|e| e.truncate(e.len() - 1)),
            "entries, metadata lists",
        ),
    ];
    for (what, edit, gist) in cases {
        let mut damaged = with_entries(bytes, |x| edit(x));
        if what == "one entry missing" {
            damaged = with_header(&damaged, |x| x.tensor_count -= 1);
        }
        let e = load_err(&damaged);
        assert!(!e.to_string().contains("table checksum"), "{what}: {e}");
        assert_gist(&e, gist, what);
    }

    // Tensor 1 moved onto tensor 0's first bytes with its checksum recomputed there: every
    // per-tensor check passes, and only the overlap check can refuse it.
    let first = entries_of(bytes)[0];
    let damaged = with_entries(bytes, |e| {
        e[1].offset = first.offset;
        let start = first.offset as usize;
        e[1].checksum = checksum(&bytes[start..start + e[1].len as usize]);
    });
    assert_gist(&load_err(&damaged), "overlap", "two tensors share bytes");
}

#[test]
fn files_that_are_not_models_are_errors() {
    let e = load_err(&[]);
    assert_gist(&e, "smaller than the 128-byte header", "empty");
    let e = load_err(&vec![0u8; 64 * 1024]);
    assert!(matches!(e, FormatError::BadMagic(_)), "zeros: {e}");
    let e = load_err(b"{\"name\": \"not a model\"}");
    assert_gist(&e, "truncated", "short JSON");
    let onnx =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/feature_model/model.onnx")).unwrap();
    assert!(matches!(load_err(&onnx), FormatError::BadMagic(_)), "an ONNX file");
}

#[test]
fn opening_a_missing_file_an_empty_file_or_a_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.qpw");
    let e = QpwFile::open(&missing).unwrap_err();
    assert!(matches!(e, FormatError::Io { .. }), "{e}");
    assert_gist(&e, "absent.qpw", "missing file");

    let empty = dir.path().join("empty.qpw");
    std::fs::write(&empty, b"").unwrap();
    assert_gist(
        &QpwFile::open(&empty).unwrap_err(),
        "smaller than the 128-byte header",
        "empty file",
    );

    let zeros = dir.path().join("zeros.qpw");
    std::fs::write(&zeros, vec![0u8; 8192]).unwrap();
    assert!(matches!(QpwFile::open(&zeros).unwrap_err(), FormatError::BadMagic(_)));

    let e = QpwFile::open(dir.path()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("directory") || msg.contains(&dir.path().display().to_string()),
        "a directory: the error should name it or say it is a directory, got {msg:?}"
    );

    let e = Engine::load(&missing, EngineOptions::default()).unwrap_err();
    assert!(matches!(e, EngineError::Format(FormatError::Io { .. })), "{e}");
}

#[test]
fn a_valid_file_is_mapped_and_its_tensors_are_read_in_place() {
    let dir = tempfile::tempdir().unwrap();
    for (case, bytes) in models() {
        let path = dir.path().join(format!("{case}.qpw"));
        std::fs::write(&path, bytes).unwrap();
        let file = QpwFile::open(&path).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert!(file.is_mapped(), "{case}");
        let image = file.image_range();
        assert_eq!(image.len(), bytes.len(), "{case}");
        assert_eq!(image.start % DATA_ALIGN, 0, "{case}: a mapping starts on a page");
        let entries = entries_of(bytes);
        assert_eq!(entries.len(), file.meta.tensors.len());
        for (id, entry) in entries.iter().enumerate() {
            let addr = file.tensor_addr(id).expect("tensor exists");
            assert_eq!(
                addr,
                image.start + entry.offset as usize,
                "{case}: tensor {id} is not at its offset"
            );
            assert!(
                addr + entry.len as usize <= image.end,
                "{case}: tensor {id} ends outside the image"
            );
            assert_eq!(addr % TENSOR_ALIGN, 0, "{case}: tensor {id} at {addr:#x}");
            let f = file.tensor_f32(id).expect("f32 tensor");
            assert_eq!(f.as_ptr() as usize, addr, "{case}: tensor {id} f32 view is a copy");
            assert_eq!(std::mem::size_of_val(f), entry.len as usize);
        }
        assert!(file.tensor_addr(entries.len()).is_none());
    }
}

// ---- Metadata that parses and passes every checksum but lies about the graph ----

struct Parts {
    meta: ModelMeta,
    tensors: Vec<Vec<u8>>,
}

fn parts(bytes: &[u8]) -> Parts {
    let file = QpwFile::from_bytes(bytes).expect("fixture loads");
    let tensors = (0..file.meta.tensors.len())
        .map(|i| file.tensor_bytes(i).expect("tensor").to_vec())
        .collect();
    Parts {
        meta: file.meta.clone(),
        tensors,
    }
}

fn rewrite(p: &Parts) -> Vec<u8> {
    let tensors: Vec<TensorBytes<'_>> = p
        .tensors
        .iter()
        .map(|t| TensorBytes {
            bytes: Cow::Borrowed(t.as_slice()),
        })
        .collect();
    writer::to_bytes(&p.meta, &tensors).expect("writer accepts the crafted metadata")
}

/// Loads crafted metadata (checksums valid) and returns the validator's message.
fn invalid_model(p: &Parts, what: &str) -> String {
    let file = QpwFile::from_bytes(&rewrite(p)).unwrap_or_else(|e| panic!("{what}: the frame should be valid: {e}"));
    match Engine::from_file(
        file,
        EngineOptions {
            reference: true,
            ..Default::default()
        },
    ) {
        Ok(_) => panic!("{what}: an impossible graph was accepted"),
        Err(EngineError::InvalidModel(m)) => m,
        Err(e) => panic!("{what}: expected an invalid-model error, got {e}"),
    }
}

fn first_node(meta: &ModelMeta, kind: &str) -> usize {
    meta.nodes
        .iter()
        .position(|n| n.op.kind() == kind)
        .unwrap_or_else(|| panic!("no {kind} node"))
}

fn expect(p: &Parts, what: &str, gists: &[&str]) {
    let msg = invalid_model(p, what);
    for g in gists {
        assert!(msg.contains(g), "{what}: expected {g:?} in {msg:?}");
    }
}

#[test]
fn rewriting_unchanged_metadata_gives_a_valid_model() {
    for (case, bytes) in models() {
        let p = parts(bytes);
        let file = QpwFile::from_bytes(&rewrite(&p)).unwrap_or_else(|e| panic!("{case}: {e}"));
        Engine::from_file(
            file,
            EngineOptions {
                reference: true,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    }
}

#[test]
fn a_node_reading_a_value_never_written_is_refused() {
    let mut p = parts(conv_model());
    let unwritten = p.meta.values.len();
    p.meta.values.push(qp::format::meta::ValueSpec {
        name: "orphan".into(),
        shape: p.meta.values[p.meta.nodes[3].inputs[0]].shape.clone(),
        quant: None,
    });
    p.meta.nodes[3].inputs[0] = unwritten;
    expect(&p, "orphan value", &["node 3", "before anything writes it"]);

    let mut p = parts(conv_model());
    let n = p.meta.values.len();
    p.meta.nodes[2].inputs[0] = n + 7;
    expect(
        &p,
        "value id out of range",
        &["node 2", &format!("reads value {} of {n}", n + 7)],
    );
}

#[test]
fn a_cycle_is_refused() {
    // Node 1 reads node 2's output, node 2 reads node 1's: no order can run them.
    let mut p = parts(dense_model());
    let n2_out = p.meta.nodes[2].outputs[0];
    p.meta.nodes[1].inputs[0] = n2_out;
    let shape = p.meta.values[p.meta.nodes[1].outputs[0]].shape.clone();
    assert!(!shape.is_empty());
    expect(&p, "cycle", &["node 1", "before anything writes it"]);

    let mut p = parts(dense_model());
    let out = p.meta.nodes[1].outputs[0];
    p.meta.nodes[1].inputs[0] = out;
    expect(&p, "self loop", &["node 1"]);
}

#[test]
fn a_value_written_twice_is_refused() {
    let mut p = parts(dense_model());
    p.meta.nodes[1].outputs[0] = p.meta.nodes[0].outputs[0];
    expect(&p, "double write", &["node 1", "already written"]);
    let mut p = parts(dense_model());
    p.meta.nodes[0].outputs[0] = p.meta.inputs[0].value;
    expect(&p, "overwrites an input", &["node 0", "already written"]);
    let mut p = parts(dense_model());
    let second = p.meta.nodes[1].outputs[0];
    p.meta.nodes[0].outputs.push(second);
    expect(&p, "two outputs", &["node 0", "exactly one output"]);
}

#[test]
fn a_tensor_id_out_of_range_is_refused() {
    let mut p = parts(conv_model());
    let nt = p.meta.tensors.len();
    let conv = first_node(&p.meta, "conv");
    p.meta.nodes[conv].params[0] = nt;
    expect(&p, "tensor id", &[&format!("uses tensor {nt} of {nt}")]);
    let mut p = parts(dense_model());
    let dense = first_node(&p.meta, "dense");
    p.meta.nodes[dense].params.truncate(1);
    expect(&p, "missing bias", &["dense", "parameter"]);
}

#[test]
fn conv_weight_dims_that_do_not_match_the_op_are_refused() {
    // Same byte count, so the frame is valid; only the packed-layout check can catch it.
    let mut p = parts(conv_model());
    let conv = first_node(&p.meta, "conv");
    let w = p.meta.nodes[conv].params[0];
    let numel = p.meta.tensors[w].numel();
    p.meta.tensors[w].dims = vec![numel];
    expect(&p, "flat conv weight", &["conv", "weight dims", "packed layout"]);

    // Weights of another conv with a different shape.
    let mut p = parts(conv_model());
    let conv = first_node(&p.meta, "conv");
    let dims = &p.meta.tensors[p.meta.nodes[conv].params[0]].dims;
    let other = p
        .meta
        .nodes
        .iter()
        .position(|n| n.op.kind() == "conv" && p.meta.tensors[n.params[0]].dims != *dims)
        .expect("two convs with different weights");
    p.meta.nodes[conv].params = p.meta.nodes[other].params.clone();
    expect(&p, "swapped conv weight", &["packed layout"]);

    // The op claims more input channels than the weights hold.
    let mut p = parts(conv_model());
    let conv = first_node(&p.meta, "conv");
    if let Op::Conv { cin, .. } = &mut p.meta.nodes[conv].op {
        *cin += 1;
    }
    expect(&p, "cin", &["channels"]);

    let mut p = parts(dense_model());
    let dense = first_node(&p.meta, "dense");
    let b = p.meta.nodes[dense].params[1];
    let numel = p.meta.tensors[b].numel();
    p.meta.tensors[b].dims = vec![1, numel];
    expect(&p, "dense bias dims", &["parameter dims"]);
}

#[test]
fn winograd_convs_that_do_not_match_their_layout_or_window_are_refused() {
    let winograd = |p: &Parts| first_node(&p.meta, "conv_winograd");

    // Direct weights under a Winograd op (and the reverse): same frame, wrong layout.
    let mut p = parts(conv_model());
    let (w, c) = (winograd(&p), first_node(&p.meta, "conv"));
    let direct = p
        .meta
        .nodes
        .iter()
        .position(|n| matches!(n.op, Op::Conv { window, .. } if window.kernel == [3, 3]));
    let direct = direct.expect("a direct 3x3 conv (stride 2) in the fixture");
    p.meta.nodes[w].params = p.meta.nodes[direct].params.clone();
    expect(&p, "direct weights", &["conv_winograd", "Winograd layout"]);
    let mut p = parts(conv_model());
    p.meta.nodes[c].params = p.meta.nodes[winograd(&p)].params.clone();
    expect(&p, "Winograd weights", &["packed layout"]);

    // A window the Winograd kernel does not compute.
    for (stride, dilation) in [([2, 2], [1, 1]), ([1, 1], [2, 2])] {
        let mut p = parts(conv_model());
        let w = winograd(&p);
        if let Op::ConvWinograd { window, .. } = &mut p.meta.nodes[w].op {
            window.stride = stride;
            window.dilation = dilation;
        }
        expect(&p, "window", &["conv_winograd", "3x3 stride 1"]);
    }
}

/// An f16 file's Winograd weights are stored direct and transformed at load: a plain
/// convolution reading the same tensor would get transformed values, so it is refused.
#[test]
fn direct_winograd_weights_read_by_another_node_are_refused() {
    let mut p = parts(half_model());
    let winograd: Vec<usize> = (0..p.meta.nodes.len())
        .filter(|&i| p.meta.nodes[i].op.kind() == "conv_winograd")
        .collect();
    let (w, v) = (winograd[0], winograd[1]);
    assert_eq!(
        p.meta.tensors[p.meta.nodes[w].params[0]].dims.len(),
        5,
        "direct weights"
    );
    let Op::ConvWinograd {
        cin,
        cout,
        window,
        activation,
    } = p.meta.nodes[v].op
    else {
        unreachable!()
    };
    assert!(
        matches!(p.meta.nodes[w].op, Op::ConvWinograd { cin: c, cout: o, .. } if (c, o) == (cin, cout)),
        "two Winograd layers of the same shape"
    );
    // The same layer as a plain convolution on its own direct weights is valid...
    p.meta.nodes[v].op = Op::Conv {
        cin,
        cout,
        window,
        activation,
    };
    let file = QpwFile::from_bytes(&rewrite(&p)).unwrap();
    Engine::from_file(file, EngineOptions::default()).expect("a Winograd layer made direct loads");
    // ...and on the Winograd layer's, refused.
    p.meta.nodes[v].params[0] = p.meta.nodes[w].params[0];
    expect(
        &p,
        "shared direct weights",
        &["transformed at load", "reads them as stored"],
    );
}

#[test]
fn shapes_with_a_zero_or_an_overflow_are_refused() {
    for (what, shape) in [
        ("zero", vec![0, 4]),
        ("overflow", vec![usize::MAX, 2]),
        ("product overflow", vec![1 << 32, 1 << 32]),
        ("too large", vec![1 << 20, 1 << 20]),
    ] {
        let mut p = parts(dense_model());
        let v = p.meta.nodes[1].outputs[0];
        p.meta.values[v].shape = shape;
        expect(&p, what, &[&format!("value {v}"), "invalid shape"]);
    }
    let mut p = parts(dense_model());
    p.meta.inputs[0].shape = vec![7];
    expect(&p, "input shape", &["shape disagrees"]);
}

/// Replaces the metadata of a valid file by hand, moving the table and data and fixing
/// every checksum; unlike the writer it does not check `meta` against the tensors.
fn with_spliced(bytes: &[u8], meta: &ModelMeta) -> Vec<u8> {
    let meta_json = serde_json::to_vec(meta).unwrap();
    let h = header_of(bytes);
    let mut out = bytes[..HEADER_SIZE].to_vec();
    out.extend_from_slice(&meta_json);
    let table_offset = out.len().div_ceil(8) * 8;
    out.resize(table_offset, 0);
    let old_data = h.data_offset;
    let new_data = (table_offset + h.tensor_count as usize * ENTRY_SIZE).div_ceil(DATA_ALIGN) * DATA_ALIGN;
    let moved: Vec<TensorEntry> = entries_of(bytes)
        .iter()
        .map(|e| TensorEntry {
            offset: e.offset - old_data + new_data as u64,
            ..*e
        })
        .collect();
    out.extend_from_slice(bytemuck::cast_slice(&moved));
    out.resize(new_data, 0);
    out.extend_from_slice(&bytes[old_data as usize..]);
    let mut nh = h;
    nh.file_len = out.len() as u64;
    nh.meta_len = meta_json.len() as u64;
    nh.meta_checksum = checksum(&meta_json);
    nh.table_offset = table_offset as u64;
    nh.table_checksum = checksum(bytemuck::cast_slice(&moved));
    nh.data_offset = new_data as u64;
    put_header(&mut out, nh);
    out
}

#[test]
fn tensor_dims_that_disagree_with_the_stored_bytes_are_refused_by_the_loader() {
    let p = parts(dense_model());
    let bytes = rewrite(&p);
    QpwFile::from_bytes(&with_spliced(&bytes, &p.meta)).expect("an unchanged splice loads");
    for (what, dims, gist) in [
        ("byte length overflows", vec![usize::MAX, 2], "need None"),
        ("one element short", vec![p.meta.tensors[0].numel() - 1], "bytes, dims"),
    ] {
        let mut meta = p.meta.clone();
        meta.tensors[0].dims = dims;
        let e = load_err(&with_spliced(&bytes, &meta));
        assert_gist(&e, "tensor 0", what);
        assert_gist(&e, gist, what);
    }
    let mut meta = p.meta.clone();
    meta.tensors.pop();
    assert_gist(
        &load_err(&with_spliced(&bytes, &meta)),
        "entries, metadata lists",
        "tensor missing from the metadata",
    );
}

#[test]
fn an_op_with_the_wrong_input_count_is_refused() {
    let mut p = parts(dense_model());
    let sigmoid = first_node(&p.meta, "sigmoid");
    let x = p.meta.nodes[sigmoid].inputs[0];
    p.meta.nodes[sigmoid].inputs.push(x);
    expect(&p, "sigmoid with two inputs", &["sigmoid", "has 2 inputs"]);

    let mut p = parts(dense_model());
    let dense = first_node(&p.meta, "dense");
    let x = p.meta.nodes[dense].inputs[0];
    p.meta.nodes[dense].inputs.push(x);
    expect(&p, "dense with two inputs", &["dense", "has 2 inputs"]);

    let mut p = parts(conv_model());
    let conv = first_node(&p.meta, "conv");
    let x = p.meta.nodes[conv].inputs[0];
    p.meta.nodes[conv].inputs.extend([x, x]);
    expect(&p, "conv with three inputs", &["conv", "has 3 inputs"]);

    let mut p = parts(conv_model());
    let concat_or_pool = first_node(&p.meta, "max_pool");
    p.meta.nodes[concat_or_pool].inputs.clear();
    expect(&p, "pool with no inputs", &["max_pool", "has 0 inputs"]);
}

#[test]
fn crafted_geometry_and_io_are_refused() {
    let mut p = parts(conv_model());
    let pool = first_node(&p.meta, "max_pool");
    if let Op::MaxPool { window, .. } = &mut p.meta.nodes[pool].op {
        window.stride = [0, 0];
    }
    expect(&p, "zero stride", &["max_pool", "geometry"]);

    let mut p = parts(conv_model());
    let conv = first_node(&p.meta, "conv");
    if let Op::Conv { window, .. } = &mut p.meta.nodes[conv].op {
        window.kernel = [0, 3];
    }
    expect(&p, "zero kernel", &["conv", "geometry"]);

    let mut p = parts(dense_model());
    let n = p.meta.values.len();
    p.meta.outputs[0].value = n;
    expect(&p, "output out of range", &["never written"]);

    let mut p = parts(dense_model());
    p.meta.inputs[0].value = p.meta.values.len() + 1;
    expect(&p, "input out of range", &["refers to value"]);

    let mut p = parts(dense_model());
    let io = p.meta.inputs[0].clone();
    p.meta.inputs.push(io);
    expect(&p, "input named twice", &["used twice"]);
}

/// `bytes` with one element of the first tensor of `dtype` replaced by `value`'s bits
/// (little-endian) and that tensor's checksum recomputed: a file every checksum vouches
/// for. Returns the file, the tensor's index and the element's.
fn with_element(bytes: &[u8], dtype: qp::format::meta::DType, value: &[u8]) -> (Vec<u8>, usize, usize) {
    let meta = QpwFile::from_bytes(bytes).unwrap().meta.clone();
    let id = meta
        .tensors
        .iter()
        .position(|t| t.dtype == dtype && t.dims.iter().product::<usize>() > 2)
        .unwrap();
    let entries = entries_of(bytes);
    let (offset, len) = (entries[id].offset as usize, entries[id].len as usize);
    let at = len / value.len() / 2;
    let mut out = bytes.to_vec();
    out[offset + at * value.len()..offset + (at + 1) * value.len()].copy_from_slice(value);
    let sum = checksum(&out[offset..offset + len]);
    let out = with_entries(&out, |e| e[id].checksum = sum);
    (out, id, at)
}

#[test]
fn a_non_finite_weight_is_refused_even_with_matching_checksums() {
    use qp::format::meta::DType;
    let half = half_model();
    let cases: [(&str, &[u8], DType, Vec<u8>); 5] = [
        ("tiny_folded", conv_model(), DType::F32, f32::NAN.to_le_bytes().to_vec()),
        (
            "tiny_folded",
            conv_model(),
            DType::F32,
            f32::NEG_INFINITY.to_le_bytes().to_vec(),
        ),
        (
            "feature_model",
            dense_model(),
            DType::F32,
            f32::INFINITY.to_le_bytes().to_vec(),
        ),
        ("tiny_folded fp16", half, DType::F16, 0x7e00u16.to_le_bytes().to_vec()),
        ("tiny_folded fp16", half, DType::F16, 0xfc00u16.to_le_bytes().to_vec()),
    ];
    for (case, bytes, dtype, value) in cases {
        let (damaged, id, at) = with_element(bytes, dtype, &value);
        let e = load_err(&damaged);
        assert_gist(&e, &format!("tensor {id} ("), case);
        assert_gist(&e, &format!("element {at} is not finite"), case);
        // The largest finite value in the same place is a valid, if odd, weight.
        let finite = match dtype {
            DType::F16 => 0x7bffu16.to_le_bytes().to_vec(),
            _ => f32::MAX.to_le_bytes().to_vec(),
        };
        let (odd, _, _) = with_element(bytes, dtype, &finite);
        QpwFile::from_bytes(&odd).unwrap_or_else(|e| panic!("{case}: a finite weight was refused: {e}"));
    }
}

#[test]
fn a_quantization_grid_off_its_limits_is_refused() {
    use qp::format::meta::QuantParams;
    let bad = [
        (
            QuantParams {
                scale: 0.1,
                zero: 0,
                bits: 16,
            },
            "16 bits",
        ),
        (
            QuantParams {
                scale: 0.1,
                zero: 0,
                bits: 7,
            },
            "7 bits",
        ),
        (
            QuantParams {
                scale: 0.1,
                zero: 256,
                bits: 8,
            },
            "zero point 256 is off the grid [0, 255]",
        ),
        (
            QuantParams {
                scale: 0.1,
                zero: 2048,
                bits: 11,
            },
            "zero point 2048 is off the grid [0, 2047]",
        ),
        (
            QuantParams {
                scale: -1.0,
                zero: 0,
                bits: 11,
            },
            "scale -1",
        ),
        (
            QuantParams {
                scale: 0.0,
                zero: 0,
                bits: 8,
            },
            "scale 0",
        ),
    ];
    for (grid, gist) in bad {
        let mut p = parts(conv_model());
        let v = p.meta.nodes[1].outputs[0];
        p.meta.values[v].quant = Some(grid);
        expect(&p, gist, &[&format!("value {v}"), "invalid quantization grid", gist]);
    }
}
